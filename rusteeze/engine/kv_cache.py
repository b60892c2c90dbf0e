"""The paged KV cache: one preallocated key and value tensor per layer.

Layout ``[num_blocks, block_size, kv_heads, head_dim]`` (nano-vllm's and the
kernels'): one block of one layer is a contiguous ``block_size × Hk × D`` slab,
so the attention kernel reads a block with one strided load per head, and the
store kernel writes a token with one contiguous ``Hk × D`` copy at
``slot = block * block_size + offset``. The tensors are zero-filled, never
left uninitialised: attention masks unused slots, but masked NaNs from garbage
memory would still poison ``0 * NaN`` in the weighted sum.
"""

from __future__ import annotations

import torch

from rusteeze.errors import ConfigError
from rusteeze.models.config import ModelConfig

KVCache = tuple[torch.Tensor, torch.Tensor]  # (k_cache, v_cache), each [num_blocks, block_size, Hk, D]


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
    cfg: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[KVCache]:
    """Uninitialized (k_cache, v_cache) per layer, each [num_blocks, block_size, Hk, D].

    Not zero-filled: the attention kernels never let a slot that was not written
    reach the output (they mask and zero keys/values past each context, which
    the kernel tests check with NaN-filled caches). Skipping the fill saves
    seconds at start-up for a GiB-sized cache and leaves untouched pages unmapped.
    """
    shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
    return [
        (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
        for _ in range(cfg.num_hidden_layers)
    ]
