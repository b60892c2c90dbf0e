"""The Numba backend: one CPU kernel wrapper per op, under the names of ``torch_ops``.

Each wrapper has the same signature and semantics as its torch twin (a few take
extra keyword-only tuning arguments) and lives in its own file:
``numba_norm``, ``numba_activation``, ``numba_rotary_kv``, ``numba_attention``.
:func:`rotary_store_kv` has no torch twin: it is rotary + store_kv in one pass.
Importing this module imports numba (no compilation: kernels compile, or load
from numba's cache, on first use; :func:`warm_up` does that for all of them).
"""

import time

import torch

from rusteeze.kernels.numba_activation import silu_and_mul
from rusteeze.kernels.numba_attention import paged_attention
from rusteeze.kernels.numba_norm import fused_add_rms_norm, rms_norm
from rusteeze.kernels.numba_rotary_kv import rotary_embedding, rotary_store_kv, store_kv

__all__ = [
    "fused_add_rms_norm",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "rotary_store_kv",
    "silu_and_mul",
    "store_kv",
    "warm_up",
]


def warm_up() -> float:
    """Compile (first run on this machine) or load from cache every kernel, on tiny inputs.

    Returns:
        Seconds it took.
    """
    t0 = time.perf_counter()
    x = torch.ones(2, 8)
    w = torch.ones(8)
    rms_norm(x, w, 1e-6)
    fused_add_rms_norm(x, x.clone(), w, 1e-6)
    silu_and_mul(x)
    from rusteeze.kernels.numba_activation import PARALLEL_MIN_ROWS

    silu_and_mul(torch.ones(PARALLEL_MIN_ROWS, 8))
    positions = torch.tensor([0, 1])
    q, k, v = torch.ones(2, 2, 4), torch.ones(2, 1, 4), torch.ones(2, 1, 4)
    rope = torch.ones(4, 4)
    k_cache, v_cache = torch.zeros(2, 2, 1, 4), torch.zeros(2, 2, 1, 4)
    slots = torch.tensor([0, 1])
    rotary_embedding(positions, q, k, rope)
    store_kv(k, v, k_cache, v_cache, slots)
    rotary_store_kv(positions, q, k, v, rope, k_cache, v_cache, slots)
    cu = torch.tensor([0, 2], dtype=torch.int32)
    lens = torch.tensor([2], dtype=torch.int32)
    tables = torch.tensor([[0]], dtype=torch.int32)
    paged_attention(q, k_cache, v_cache, cu, lens, tables, 0.5)
    return time.perf_counter() - t0
