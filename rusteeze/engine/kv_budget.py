"""The KV-cache budget checked against the model's context and the memory there is, before allocating.

`plan_kv_cache` decides the engine's context length and block count, and turns every way a
``kv_cache_memory`` / ``max_model_len`` pair can fail into one ConfigError that names the
key, the value and a value that works:

* ``max_model_len`` beyond the model's context (its ``max_position_embeddings``);
* a budget too small for one ``max_model_len`` sequence (or, with ``max_model_len`` unset, for
  even one block: then the context would be zero tokens);
* a budget larger than the memory of the device (physical memory, or the cgroup limit, on CPU;
  free memory on CUDA).

``kv_cache_memory`` unset is resolved first (`resolve_kv_cache_memory`): 1 GiB on the CPU; on
CUDA, vLLM's rule: the engine may use ``gpu_memory_utilization`` of the GPU's memory, and the KV
cache gets what is left of that after what the device already holds (the weights, the CUDA
context, other processes) and the activation peak of a profiled ``max_num_batched_tokens`` step.

With ``max_model_len`` unset the context is the model's, shortened to what the budget holds
(``KVPlan.shortened`` says so). Front ends call `check_usable`, which refuses a context shortened
below 512 tokens (a budget of a few KiB would leave a 16-token "context") and otherwise returns a
line for the user. Messages use config keys
(``kv_cache_memory = 1MiB``); the CLI writes them as flags.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rusteeze.config import EngineConfig
from rusteeze.engine.kv_cache import bytes_per_block
from rusteeze.engine.model_runner import PROMPT_LOGPROBS_ROWS
from rusteeze.errors import ConfigError
from rusteeze.models.attention import AttentionMetadata
from rusteeze.models.config import ModelConfig

CPU_KV_CACHE_MEMORY = 1024**3  # kv_cache_memory unset on the CPU
MIN_CONTEXT = 512  # the shortest context check_usable accepts when the budget picks it
_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))


@dataclass(frozen=True)
class KVPlan:
    """What the budget gives.

    Attributes:
        max_model_len: the engine's context, prompt plus output.
        num_blocks: KV blocks to allocate.
        bytes_per_token: KV bytes of one token, all layers, keys and values.
        model_context: the model's own context (``max_position_embeddings``).
        shortened: True when ``max_model_len`` was unset and the budget holds less than the model's context.
        budget: the KV-cache bytes planned for (``kv_cache_memory``, resolved when it was unset).
    """

    max_model_len: int
    num_blocks: int
    bytes_per_token: int
    model_context: int
    shortened: bool
    budget: int

    def bytes_for(self, tokens: int, block_size: int) -> int:
        """The budget that holds ``tokens`` tokens (whole blocks)."""
        return math.ceil(tokens / block_size) * block_size * self.bytes_per_token


def plan_kv_cache(model: ModelConfig, config: EngineConfig, dtype: torch.dtype, device: torch.device) -> KVPlan:
    """The context and block count for ``config``'s budget.

    Raises:
        ConfigError: see the module doc; the message names ``max_model_len`` or ``kv_cache_memory``.
    """
    budget = config.kv_cache_memory
    if budget is None:  # unset: the CPU default; CUDA's is profiled with the model (resolve_kv_cache_memory)
        assert device.type != "cuda", "resolve_kv_cache_memory() first"
        budget = CPU_KV_CACHE_MEMORY
    bs, context = config.block_size, model.max_position_embeddings
    per_block = bytes_per_block(model, bs, dtype)
    per_token = per_block // bs
    num_blocks = budget // per_block
    holds = num_blocks * bs
    whole = f"{size_up(math.ceil(context / bs) * per_block)} holds the model's whole {context}-token context"
    asked = config.max_model_len
    if asked is not None and asked > context:
        raise ConfigError(
            f"max_model_len = {asked} exceeds the model's context of {context} tokens; "
            f"use at most {context}, or leave max_model_len unset"
        )
    if asked is not None and holds < asked:
        need = size_up(math.ceil(asked / bs) * per_block)
        lower = f"a max_model_len of at most {holds}" if holds else "a larger kv_cache_memory"
        raise ConfigError(
            f"kv_cache_memory = {size(budget)} holds {holds} tokens of this model ({size(per_token)} per token), "
            f"fewer than max_model_len = {asked}; use kv_cache_memory = {need} or more, or {lower}"
        )
    if num_blocks == 0:
        raise ConfigError(
            f"kv_cache_memory = {size(budget)} holds no block of {bs} tokens of this model "
            f"({size(per_token)} per token); use kv_cache_memory = {size_up(per_block * math.ceil(MIN_CONTEXT / bs))} "
            f"for {MIN_CONTEXT} tokens, or more ({whole})"
        )
    limit, where = memory_limit(device)
    if limit is not None and num_blocks * per_block > limit:
        raise ConfigError(
            f"kv_cache_memory = {size(budget)} is more than the {size(limit)} of {where}; use less: {whole}"
        )
    max_model_len = asked if asked is not None else min(context, holds)
    return KVPlan(max_model_len, num_blocks, per_token, context, asked is None and holds < context, budget)


def resolve_kv_cache_memory(config: EngineConfig, model: nn.Module, device: torch.device) -> EngineConfig:
    """``config`` with ``kv_cache_memory`` set: unchanged when given; else the default for ``device``.

    On CUDA this runs one profiling forward of ``max_num_batched_tokens`` tokens (see
    :func:`profile_activation_peak`), so call it after the weights are loaded and before the cache
    is allocated.

    Raises:
        ConfigError: on CUDA, nothing is left for the KV cache (see :func:`cuda_kv_budget`).
    """
    if config.kv_cache_memory is not None:
        return config
    if device.type != "cuda":
        return config.replace(kv_cache_memory=CPU_KV_CACHE_MEMORY)
    peak = profile_activation_peak(model, config, device)
    torch.cuda.empty_cache()  # the profile's activations go back to the device's free memory
    free, total = torch.cuda.mem_get_info(device)
    return config.replace(kv_cache_memory=cuda_kv_budget(total, free, peak, config.gpu_memory_utilization))


def cuda_kv_budget(total: int, free: int, activation_peak: int, utilization: float) -> int:
    """The KV-cache bytes on a GPU of ``total`` bytes with ``free`` bytes free after the weights loaded.

    The engine may use ``utilization × total``; what the device already holds (``total - free``:
    the weights, the CUDA context, other processes) and the activation peak of the largest step
    come out of that, and the KV cache gets the rest.

    Raises:
        ConfigError: nothing is left; the message gives the figures and both ways out.
    """
    allowed = int(total * utilization)
    used = total - free
    budget = allowed - used - activation_peak
    if budget <= 0:
        raise ConfigError(
            f"gpu_memory_utilization = {utilization} allows {size(allowed)} of the GPU's {size(total)}, but "
            f"{size(used)} is in use (weights, CUDA context, other processes) and a step's activations take "
            f"{size(activation_peak)}, leaving nothing for the KV cache; raise gpu_memory_utilization, "
            "lower max_num_batched_tokens, or set kv_cache_memory"
        )
    return budget


def profile_batch(
    config: EngineConfig, model_context: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, int]:
    """The largest step ``config`` schedules: ``max_num_batched_tokens`` tokens over up to ``max_num_seqs`` prompts.

    Every token's slot is -1 (nothing is written) and every block-table entry is block 0, so the
    step runs over a one-block cache.

    Returns:
        input_ids [T] int64 (zeros), positions [T] int64, the metadata, and the rows whose logits
        a step computes at most (sampled rows, or one slice of prompt-logprob rows).
    """
    tokens = config.max_num_batched_tokens
    seqs = min(config.max_num_seqs, tokens)
    q_lens = [tokens // seqs + (b < tokens % seqs) for b in range(seqs)]  # [B], summing to T
    positions = torch.cat([torch.arange(n) for n in q_lens]).clamp_(max=model_context - 1)  # [T]
    cu = torch.zeros(seqs + 1, dtype=torch.int32)  # [B + 1]
    cu[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    blocks = math.ceil(max(q_lens) / config.block_size)
    meta = AttentionMetadata(
        cu_seqlens_q=cu.to(device),
        seq_lens=torch.tensor(q_lens, dtype=torch.int32, device=device),
        slot_mapping=torch.full((tokens,), -1, dtype=torch.long, device=device),
        block_tables=torch.zeros(seqs, blocks, dtype=torch.int32, device=device),
    )
    ids = torch.zeros(tokens, dtype=torch.long, device=device)
    return ids, positions.to(device), meta, min(tokens, max(seqs, PROMPT_LOGPROBS_ROWS))


@torch.inference_mode()
def run_profile_step(model: nn.Module, config: EngineConfig, device: torch.device) -> torch.Tensor:
    """One forward of :func:`profile_batch` over a zeroed one-block cache, plus its logits; returns [R, V] log-probs."""
    cfg = model.config
    ids, positions, meta, rows = profile_batch(config, cfg.max_position_embeddings, device)
    dtype = model.norm.weight.dtype
    shape = (1, config.block_size, cfg.num_key_value_heads, cfg.head_dim)  # [1, block_size, Hk, D]
    caches = [(torch.zeros(shape, dtype=dtype, device=device),) * 2 for _ in range(cfg.num_hidden_layers)]
    hidden = model(ids, positions, caches, meta)  # [T, H]
    return torch.log_softmax(model.compute_logits(hidden[:rows]), dim=-1)  # [R, V] float32, as the sampler makes


def profile_activation_peak(model: nn.Module, config: EngineConfig, device: torch.device) -> int:
    """Bytes the largest step allocates on the GPU above the weights (``torch.cuda.max_memory_allocated``)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_profile_step(model, config, device)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def check_usable(plan: KVPlan, config: EngineConfig, minimum: int = MIN_CONTEXT) -> str | None:
    """For front ends: refuse a context the budget shortened below ``minimum`` tokens, else describe it.

    Returns:
        None when the context is the model's own or was set with ``max_model_len``; else one
        line saying the budget shortened it (and what holds the whole context).

    Raises:
        ConfigError: ``max_model_len`` is unset and the budget holds fewer than ``minimum`` tokens
            (or the model's context, when smaller).
    """
    if not plan.shortened:
        return None
    budget, bs = plan.budget, config.block_size
    whole = (
        f"{size_up(plan.bytes_for(plan.model_context, bs))} holds the model's whole {plan.model_context}-token context"
    )
    if plan.max_model_len < min(minimum, plan.model_context):
        raise ConfigError(
            f"kv_cache_memory = {size(budget)} holds only {plan.max_model_len} tokens of this model "
            f"({size(plan.bytes_per_token)} per token); use kv_cache_memory = {size_up(plan.bytes_for(minimum, bs))} "
            f"for {minimum} tokens, or more ({whole})"
        )
    return (
        f"Context shortened to {plan.max_model_len} of the model's {plan.model_context} tokens to fit "
        f"kv_cache_memory = {size(budget)}; {whole}"
    )


def allocation_error(budget: int, device: torch.device, error: BaseException) -> ConfigError:
    """The ConfigError for a KV cache of ``budget`` bytes that failed to allocate (out of memory)."""
    limit, where = memory_limit(device)
    room = f"; {where} has {size(limit)}" if limit is not None else ""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(
        f"kv_cache_memory = {size(budget)} cannot be allocated on {device} ({first[:160]}){room}; "
        "use a smaller kv_cache_memory"
    )


def memory_limit(device: torch.device) -> tuple[int | None, str]:
    """The most memory a KV cache may take on ``device``, and what that limit is, for messages.

    CUDA: the free memory now. CPU: physical memory, or the cgroup's limit when lower (the
    cache is allocated lazily there, so free memory is not a limit yet). None when unknown.
    """
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None, f"{device}"
        return int(free), f"free memory on {device}"
    if device.type != "cpu":
        return None, str(device)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None, "this machine's memory"
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit() and int(text) < total:
            return int(text), "memory this container may use"
    except OSError:
        pass
    return total, "this machine's memory"


def size(n: int) -> str:
    """Bytes as a size the user can type back: "1MiB", "1.5GiB", "512" (whole units when exact)."""
    for unit, factor in _UNITS:
        if n >= factor:
            value = n / factor
            return f"{value:.0f}{unit}" if n % factor == 0 else f"{value:.1f}{unit}"
    return str(n)


def size_up(n: int) -> str:
    """``n`` bytes rounded up to a value worth typing: whole MiB (whole GiB from 10 GiB)."""
    step = 1024**3 if n >= 10 * 1024**3 else 1024**2
    return size(math.ceil(n / step) * step)
