"""The paged KV cache: one preallocated key and value tensor per layer.

Layout ``[num_blocks, block_size, kv_heads, head_dim]`` (nano-vllm's and the
kernels'): one block of one layer is a contiguous ``block_size × Hk × D`` slab,
so the attention kernel reads a block with one strided load per head, and the
store kernel writes a token with one contiguous ``Hk × D`` copy at
``slot = block * block_size + offset``. The tensors are left uninitialised:
the attention kernels never let a slot that was not written reach the output.

Poisoned-KV debug mode. With the environment variable
``RUSTEEZE_DEBUG_POISON_KV=1`` (read once, when the engine is built; the test
suite turns it on in ``tests/conftest.py``) a read of a slot that was never
written for the sequence reading it shows at once as NaN logits:

* the whole cache is NaN-filled at allocation, plus one extra block (index
  ``num_blocks``, never handed out, always NaN) that the runner puts in every
  block-table entry that must not be read: blocks released by the sliding
  window and the padding past a sequence's last block;
* every block the BlockManager hands out from its free list (its old contents
  evicted) and every block freed with no prefix-cache hash (a sliding-window
  release, a finished or preempted sequence's uncached blocks) is NaN-filled
  again by the runner before the next forward (``BlockManager.take_poisoned``);
  prefix-cache hits are never touched, they hold valid KV;
* the runner raises when a logits row holds NaN (the step's requests are
  aborted with an ``EngineStepError`` naming the cause).

It costs a few small index fills per step; off, it costs nothing.
"""

from __future__ import annotations

import os

import torch

from rusteeze.errors import ConfigError
from rusteeze.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k_cache, v_cache), each [num_blocks, block_size, Hk, D]
POISON_ENV = "RUSTEEZE_DEBUG_POISON_KV"


def poison_enabled() -> bool:
    """Whether ``RUSTEEZE_DEBUG_POISON_KV`` asks for the poisoned-KV debug mode (1/true/yes/on)."""
    return os.environ.get(POISON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Memory of one block across all layers, keys and values."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * block_size * cfg.num_key_value_heads * cfg.head_dim * elem


def num_blocks_for(cfg: ModelConfig, block_size: int, dtype: torch.dtype, memory: int, max_model_len: int) -> int:
    """How many blocks ``memory`` bytes hold.

    Raises:
        ConfigError: the budget cannot hold one sequence of ``max_model_len``
            tokens (the scheduler needs that much to always make progress).
    """
    num_blocks = memory // bytes_per_block(cfg, block_size, dtype)
    if num_blocks * block_size < max_model_len:
        per_token = bytes_per_block(cfg, block_size, dtype) // block_size
        raise ConfigError(
            f"kv_cache_memory = {memory} bytes holds {num_blocks * block_size} tokens, fewer than "
            f"max_model_len = {max_model_len} ({per_token} bytes per token); "
            f"raise kv_cache_memory to at least {-(-max_model_len // block_size) * block_size * per_token} "
            "or lower max_model_len"
        )
    return num_blocks


def allocate_kv_caches(
    cfg: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    poison: bool | None = None,
) -> list[KVCache]:
    """(k_cache, v_cache) per layer, each [num_blocks, block_size, Hk, D].

    Not zero-filled: the attention kernels never let a slot that was not written
    reach the output (they mask and zero keys/values past each context, which
    the kernel tests check with NaN-filled caches). Skipping the fill saves
    seconds at start-up for a GiB-sized cache and leaves untouched pages unmapped.

    Args:
        poison: the debug mode (None: from ``RUSTEEZE_DEBUG_POISON_KV``): every
            slot NaN, plus one always-NaN block at index ``num_blocks`` for the
            block-table entries that must never be read.
    """
    poison = poison_enabled() if poison is None else poison
    shape = (num_blocks + int(poison), block_size, cfg.num_key_value_heads, cfg.head_dim)

    def make() -> torch.Tensor:
        return (
            torch.full(shape, float("nan"), dtype=dtype, device=device)
            if poison
            else torch.empty(shape, dtype=dtype, device=device)
        )

    return [(make(), make()) for _ in range(cfg.num_hidden_layers)]


def poison_blocks(kv_caches: list[KVCache], block_ids: list[int]) -> None:
    """NaN-fill blocks ``block_ids`` of every layer's keys and values (debug mode)."""
    if not block_ids:
        return
    idx = torch.tensor(block_ids, dtype=torch.long, device=kv_caches[0][0].device)
    for k_cache, v_cache in kv_caches:
        k_cache.index_fill_(0, idx, float("nan"))
        v_cache.index_fill_(0, idx, float("nan"))
