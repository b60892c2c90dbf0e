"""The Numba backend: one CPU kernel wrapper per op, under the names of ``torch_ops``.

Each wrapper has the same signature and semantics as its torch twin (a few take
extra keyword-only tuning arguments) and lives in its own file:
``numba_norm``, ``numba_activation``, ``numba_rotary_kv``, ``numba_attention``.
:func:`rotary_store_kv` has no torch twin: it is rotary + store_kv in one pass.
Importing this module imports numba (no compilation: kernels compile, or load
from numba's cache, on first use; :func:`warm_up` does that for all of them).
"""

import os
import sys
import time
from types import ModuleType

import torch
from numba.core.registry import CPUDispatcher

from rusteeze.kernels import (
    numba_activation,
    numba_attention,
    numba_decoder,
    numba_norm,
    numba_q8_matmul,
    numba_quant_matmul,
    numba_rotary_kv,
)
from rusteeze.kernels.numba_activation import silu_and_mul
from rusteeze.kernels.numba_attention import paged_attention
from rusteeze.kernels.numba_norm import fused_add_rms_norm, rms_norm
from rusteeze.kernels.numba_rotary_kv import rotary_embedding, rotary_store_kv, store_kv

__all__ = [
    "fused_add_rms_norm",
    "kernels_cached",
    "paged_attention",
    "prepare",
    "rms_norm",
    "rotary_embedding",
    "rotary_store_kv",
    "silu_and_mul",
    "store_kv",
    "warm_up",
]

KERNEL_MODULES: tuple[ModuleType, ...] = (
    numba_norm,
    numba_activation,
    numba_rotary_kv,
    numba_attention,
    numba_quant_matmul,
    numba_q8_matmul,
    numba_decoder,
)


def _dispatchers() -> list[CPUDispatcher]:
    """The kernels each module defines (helpers imported from elsewhere, or always inlined, have no cache entry)."""
    return [
        f
        for m in KERNEL_MODULES
        for f in vars(m).values()
        if isinstance(f, CPUDispatcher)
        and f.py_func.__module__ == m.__name__
        and f.targetoptions.get("inline", "never") != "always"
    ]


def kernels_cached() -> bool:
    """Whether every kernel has an entry in Numba's on-disk cache (False when that cannot be told)."""
    try:
        return all(os.path.exists(f._cache._cache_file._index_path) for f in _dispatchers())
    except AttributeError:  # a Numba whose cache internals differ: assume a compile is coming
        return False


def prepare() -> float:
    """Load (or, the first time on this machine, compile) every kernel, saying so when it compiles.

    Returns:
        Seconds it took.
    """
    if not kernels_cached():
        print("compiling CPU kernels for this machine (first run only) …", file=sys.stderr, flush=True)
    return warm_up()


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
    from rusteeze.kernels.numba_attention import PARALLEL_MIN_ROWS as ROWS

    wide = torch.ones(ROWS, 2, 4)  # ROWS single-token sequences: the threaded driver
    cu_wide, lens_wide = torch.arange(ROWS + 1, dtype=torch.int32), torch.ones(ROWS, dtype=torch.int32)
    paged_attention(wide, k_cache, v_cache, cu_wide, lens_wide, tables.expand(ROWS, 1), 0.5)
    packed, scales = torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2, 1)
    int4 = numba_quant_matmul.repack_int4(packed, scales, scales)
    numba_quant_matmul.int4_matmul(x, *int4, 2)
    numba_quant_matmul.int4_matmul(torch.ones(numba_quant_matmul.PARALLEL_MIN_MACS // 16 + 1, 8), *int4, 2)
    numba_quant_matmul.dequantize_int4_t(*int4, 2)
    numba_quant_matmul.dequantize_int4_t(*int4, 2, out=torch.empty(8, 64, dtype=torch.bfloat16))
    int8 = numba_quant_matmul.repack_int8(torch.zeros(2, 8, dtype=torch.int8), scales)
    numba_quant_matmul.int8_matmul(x, *int8, 2)
    numba_quant_matmul.int8_matmul(torch.ones(numba_quant_matmul.PARALLEL_MIN_MACS // 16 + 1, 8), *int8, 2)
    numba_quant_matmul.dequantize_int8_t(*int8, 2)
    numba_quant_matmul.dequantize_int8_t(*int8, 2, out=torch.empty(8, 64, dtype=torch.bfloat16))
    numba_q8_matmul.act_block(32)
    for rows in (x, torch.ones(numba_quant_matmul.PARALLEL_MIN_MACS // 16 + 1, 8)):  # serial, then threaded
        numba_q8_matmul.int4_matmul_q8(rows, *int4, 2)
        numba_q8_matmul.int8_matmul_q8(rows, *int8, 2)
    numba_decoder.warm_up()  # the fused decode layer (rusteeze.models.llama)
    return time.perf_counter() - t0
