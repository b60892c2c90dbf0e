"""Perplexity of a model over a text: how quantization is judged."""

import math

import torch
from torch import nn

from rusteeze.models.attention import AttentionMetadata


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: list[int], window: int = 512, block_size: int = 16) -> float:
    """exp(mean negative log-likelihood) of ``token_ids[1:]``, in independent windows of ``window`` tokens.

    Each window is one prefill through the paged forward (a fresh cache), so
    this measures exactly the path generation uses.
    """
    cfg = model.config
    dtype = model.norm.weight.dtype
    nll, count = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        ids = torch.tensor(token_ids[start : start + window + 1])  # [W + 1]
        inputs, targets = ids[:-1], ids[1:]
        t = inputs.numel()
        nblocks = (t + block_size - 1) // block_size
        shape = (nblocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        caches = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in model.layers]
        meta = AttentionMetadata(
            torch.tensor([0, t], dtype=torch.int32),
            torch.tensor([t], dtype=torch.int32),
            torch.arange(t),
            torch.arange(nblocks, dtype=torch.int32)[None],
        )
        hidden = model(inputs, torch.arange(t), caches, meta)  # [W, H]
        logits = model.compute_logits(hidden)  # [W, V]
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += t
    return math.exp(nll / count)
