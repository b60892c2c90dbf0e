"""A whole Llama-family decoder layer in one Numba call: the fused decode path of the "numba" backend.

One call of :func:`decoder_layer` runs, for a small flat batch of T tokens:

    residual += x (or residual = x at layer 0) → RMSNorm → QKV matmul (+ bias)
    → [q/k RMSNorm, Qwen3] → rotary of q, k → k, v into the paged cache
    → paged attention → O matmul → residual += o → RMSNorm → gate|up matmul
    → SiLU-and-mul → down matmul → x (the next layer's input)

It calls the per-op kernels' own compiled functions (``numba_norm``,
``numba_rotary_kv``, ``numba_attention``, ``numba_quant_matmul``'s tiles), so a
quantized layer computes bit for bit what the per-op path computes; the glue
between them (splits, reshapes, residual adds, argument checks, tensor↔numpy
conversions) is compiled code instead of Python. Float32 weights (an
``nn.Linear`` left unquantized) use a row-by-row dot product here (the per-op
path uses torch's GEMM): results differ only by float32 summation order.

Each linear is handed over as one :data:`LinearArgs` tuple ``(kind, w4, s4, m4,
w8, s8, wf, bias)``: ``kind`` selects int4 tiles (``w4``/``s4``/``m4``), int8
tiles (``w8``/``s8``), scales and mins as float16 bits (uint16), each with
float32 activations or activations quantized to int16 per block
(``numba_q8_matmul``; dtype "auto"), or a float32 ``[N, K]`` weight (``wf``);
the unused arrays are empty, so every layer, whatever its formats, runs the one
compiled signature. Each row is computed in a fixed order that
does not depend on the other rows (batch invariant, as the per-op kernels).

With int16 activations the tiles take a step's rows 4-5 at a time, reading
each weight block once for all of them, so a step's cost grows slowly with its
tokens (SmolLM2 Q4_1 forward, context 128, AVX-512 EPYC, 1 thread: 1 token
6.7 ms, 5 tokens of one sequence 12.8 ms — ×1.9 where the one-row loop cost
~×3.8; 2 threads 4.4 and 8.5 ms). Larger products spread their tiles over
Numba's threads (``FUSED_PARALLEL_MIN_MACS``), and from ``PARALLEL_MIN_ROWS``
tokens so does the attention (its parallel driver: the same work items, the
same bits); norms, rotary, the cache store and SiLU run in the calling thread.
Batch steps run faster here than through the per-op path: 64 single-token
sequences after 128-token prompts, SmolLM2 Q4_1, 2 threads
(``benches/batch_step.py``), 110 ms against 138 per step (before the attention
ran in parallel here: 114 against 106).

The compiled layer holds its callees' code (Numba caches it under this file's
contents only): after changing a kernel it calls (``numba_q8_matmul``,
``numba_pair_dot``, ``numba_quant_matmul``, the norm, rotary and attention
kernels), delete the cached ``numba_decoder.*`` entries in
``kernels/__pycache__``, or it keeps running the former code.

Limits (checked by the caller, :mod:`rusteeze.models.llama`): float32, CPU,
contiguous caches, at most ``TORCH_PREFILL_MIN_Q - 1`` query tokens per
sequence (so the attention never hands a sequence to torch's SDPA), every
position inside the rotary table and every slot inside the cache
(:func:`bad_step` checks that once per step, before anything is written).
"""

import numba
import numpy as np
import torch

from rusteeze.kernels.numba_activation import _silu_and_mul_rows
from rusteeze.kernels.numba_attention import (
    _OK,
    PARALLEL_MIN_ROWS,
    TORCH_PREFILL_MIN_Q,
    _attention_parallel,
    _attention_serial,
)
from rusteeze.kernels.numba_checks import JIT, array, index_array, is_f32
from rusteeze.kernels.numba_half import half_bits
from rusteeze.kernels.numba_norm import _add_rms_norm_rows, _rms_norm_rows
from rusteeze.kernels.numba_q8_matmul import (
    act_block,
    int4_q8_parallel,
    int4_q8_serial,
    int8_q8_parallel,
    int8_q8_serial,
    quantize_rows,
)
from rusteeze.kernels.numba_quant_matmul import TILE, _int4_parallel, _int4_serial, _int8_parallel, _int8_serial
from rusteeze.kernels.numba_rotary_kv import _bad_positions, _bad_slots, _rotate_token, _store_token

KIND_INT4 = 0
KIND_INT8 = 1
KIND_F32 = 2
KIND_INT4_Q16 = 3  # int4 tiles, activations quantized to int16 (numba_q8_matmul; dtype "auto")
KIND_INT8_Q16 = 4  # int8 tiles, activations quantized to int16
_NO_TORCH = 1 << 30  # the attention's torch_min_q: never hand a sequence to torch (callers keep q_len small)

MAX_QUERY_TOKENS = TORCH_PREFILL_MIN_Q - 1  # per sequence: the attention stays in Numba
add_rms_norm_rows = _add_rms_norm_rows  # the final norm
__all__ = [
    "add_rms_norm_rows",
    "array",
    "index_array",
    "is_f32",
]  # re-exported for the model, which must not import numba itself

_EMPTY_U8 = np.empty((0, 0, 0), np.uint8)
_EMPTY_I8 = np.empty((0, 0, 0), np.int8)
_EMPTY_U16 = np.empty((0, 0, 0), np.uint16)  # no scales (float16 bits)
# Products from this size spread their tiles over Numba's threads (the same tile code:
# bit-identical results). A compile-time constant of the fused layer.
FUSED_PARALLEL_MIN_MACS = 1 << 18
_EMPTY_F2 = np.empty((0, 0), np.float32)
_EMPTY_F1 = np.empty(0, np.float32)


@numba.njit(**JIT)
def _f32_rows(x, w, out):
    """out[m, n] = Σ_k x[m, k] · w[n, k]; x [M, K], w [N, K] float32, out [M, >= N]."""
    n_out, k = w.shape
    for m in range(x.shape[0]):
        xr = x[m]
        for n in range(n_out):
            wr = w[n]
            acc = np.float32(0.0)
            for c in range(k):
                acc += xr[c] * wr[c]
            out[m, n] = acc


@numba.njit(**JIT)
def _quantized_linear(x, int4, lin, threaded):
    """x [T, K] float32 → [T, N/R · R] float32 through int4 (``int4``) or int8 tiles, x quantized to int16 per block."""
    _, w4, s4, m4, w8, s8, _, _ = lin
    t_count, k = x.shape
    block = act_block(k // (s4.shape[1] if int4 else s8.shape[1]))
    xq = np.empty((t_count, k), np.int16)  # x quantized per block: values xq, scale d, d · Σ q
    xd = np.empty((t_count, k // block), np.float32)
    xs = np.empty((t_count, k // block), np.float32)
    quantize_rows(x, block, np.float32(32767), xq, xd, xs)
    if int4:
        pad = np.empty((t_count, w4.shape[0] * TILE), np.float32)
        if threaded:
            int4_q8_parallel(xq, xd, xs, w4, s4, m4, pad)
        else:
            int4_q8_serial(xq, xd, xs, w4, s4, m4, pad)
    else:
        pad = np.empty((t_count, w8.shape[0] * TILE), np.float32)
        if threaded:
            int8_q8_parallel(xq, xd, w8, s8, pad)
        else:
            int8_q8_serial(xq, xd, w8, s8, pad)
    return pad


@numba.njit(**JIT)
def _linear(x, lin, n):
    """x [T, K] float32 contiguous → [T, n] float32 contiguous, through the weight ``lin`` (see LinearArgs)."""
    kind, w4, s4, m4, w8, s8, wf, bias = lin
    t_count = x.shape[0]
    threaded = t_count * n * x.shape[1] >= FUSED_PARALLEL_MIN_MACS
    if kind == KIND_INT4:
        pad = np.empty((t_count, w4.shape[0] * TILE), np.float32)
        if threaded:
            _int4_parallel(x, w4, s4, m4, pad)
        else:
            _int4_serial(x, w4, s4, m4, pad)
    elif kind == KIND_INT8:
        pad = np.empty((t_count, w8.shape[0] * TILE), np.float32)
        if threaded:
            _int8_parallel(x, w8, s8, pad)
        else:
            _int8_serial(x, w8, s8, pad)
    elif kind in (KIND_INT4_Q16, KIND_INT8_Q16):
        pad = _quantized_linear(x, kind == KIND_INT4_Q16, lin, threaded)
    else:
        pad = np.empty((t_count, n), np.float32)
        _f32_rows(x, wf, pad)
    if pad.shape[1] == n and bias.shape[0] == 0:
        return pad
    out = np.empty((t_count, n), np.float32)
    for m in range(t_count):
        for i in range(n):
            out[m, i] = pad[m, i]
        if bias.shape[0]:
            for i in range(n):
                out[m, i] = out[m, i] + bias[i]
    return out


@numba.njit(**JIT)
def decoder_layer(
    x,
    residual,
    first,
    positions,
    slots,
    cu,
    seq_lens,
    tables,
    rope,
    k_cache,
    v_cache,
    ln1,
    ln2,
    qn,
    kn,
    eps,
    dims,
    scale,
    window,
    qkv,
    o,
    gate_up,
    down,
):
    """One decoder layer over T tokens; returns the attention status (_OK, or the attention's error status).

    x: [T, H] float32, the previous layer's output (layer 0: the embeddings),
    overwritten with this layer's output; residual: [T, H], the residual stream
    (layer 0: written, = x; later: += x), updated in place; first: layer 0.
    positions, slots: [T] int64; cu: [B + 1], seq_lens: [B], tables: [B, W] int32;
    rope: [P, R] cos|sin; k_cache, v_cache: [N, S, Hk, D]; ln1, ln2: [H] norm
    weights; qn, kn: [D] per-head q/k norm weights (Qwen3) or empty; eps: RMSNorm
    epsilon; dims: int64 (Hq, Hk, D, I); scale: softmax scale; window: sliding
    window or 0; qkv, o, gate_up, down: LinearArgs.
    """
    t_count, hidden = x.shape
    hq, hk, hd, inter = dims[0], dims[1], dims[2], dims[3]
    qs, ks = hq * hd, hk * hd
    h = np.empty((t_count, hidden), np.float32)
    if first:
        for m in range(t_count):
            for i in range(hidden):
                residual[m, i] = x[m, i]
        _rms_norm_rows(residual, ln1, eps, h)
    else:
        _add_rms_norm_rows(x, residual, ln1, eps, h)
    y = _linear(h, qkv, qs + 2 * ks)  # [T, q | k | v]
    q = np.empty((t_count, hq, hd), np.float32)
    k = np.empty((t_count, hk, hd), np.float32)
    v = np.empty((t_count, hk, hd), np.float32)
    for m in range(t_count):
        for a in range(hq):
            for d in range(hd):
                q[m, a, d] = y[m, a * hd + d]
        for a in range(hk):
            for d in range(hd):
                k[m, a, d] = y[m, qs + a * hd + d]
                v[m, a, d] = y[m, qs + ks + a * hd + d]
    if qn.shape[0]:
        q2 = q.reshape(t_count * hq, hd)
        k2 = k.reshape(t_count * hk, hd)
        qo = np.empty_like(q2)
        ko = np.empty_like(k2)
        _rms_norm_rows(q2, qn, eps, qo)
        _rms_norm_rows(k2, kn, eps, ko)
        q = qo.reshape(t_count, hq, hd)
        k = ko.reshape(t_count, hk, hd)
    for m in range(t_count):
        _rotate_token(q[m], rope, positions[m], True)
        _rotate_token(k[m], rope, positions[m], True)
        if slots[m] >= 0:
            _store_token(k[m], v[m], k_cache, v_cache, slots[m])
    att = np.empty((t_count, hq, hd), np.float32)
    if t_count >= PARALLEL_MIN_ROWS:  # the same work items spread over Numba's threads: the same bits
        status = _attention_parallel(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, _NO_TORCH, att)
    else:
        status = _attention_serial(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, _NO_TORCH, att)
    if status < 0:
        return status
    ao = _linear(att.reshape(t_count, qs), o, hidden)
    _add_rms_norm_rows(ao, residual, ln2, eps, h)
    gu = _linear(h, gate_up, 2 * inter)
    act = np.empty((t_count, inter), np.float32)
    _silu_and_mul_rows(gu, act)
    out = _linear(act, down, hidden)
    for m in range(t_count):
        for i in range(hidden):
            x[m, i] = out[m, i]
    return _OK


@numba.njit(**JIT)
def bad_step(positions, rope_rows, slots, num_slots):
    """0 when every position is inside the rotary table and every slot inside the cache; else 1."""
    if _bad_positions(positions, rope_rows) >= 0 or _bad_slots(slots, num_slots) >= 0:
        return 1
    return 0


def linear_args(module: torch.nn.Module) -> tuple | None:
    """The :data:`LinearArgs` tuple of an ``nn.Linear`` (float32) or a Numba-tiled ``QuantLinear``; None otherwise.

    The arrays are zero-copy numpy views of the module's tensors, made once.
    """
    bias = getattr(module, "bias", None)
    b = _EMPTY_F1 if bias is None else bias.detach().float().contiguous().numpy()
    tiled = getattr(module, "tiled", None)
    if tiled is not None:
        w = tiled.weight.numpy()
        int4 = w.dtype == np.uint8
        if tiled.activation_bits not in (0, 16):
            return None  # the fused layer takes float32 or int16 activations
        q16 = tiled.activation_bits == 16
        kind = (KIND_INT4_Q16 if q16 else KIND_INT4) if int4 else (KIND_INT8_Q16 if q16 else KIND_INT8)
        if int4:
            return (kind, w, half_bits(tiled.scales), half_bits(tiled.mins), _EMPTY_I8, _EMPTY_U16, _EMPTY_F2, b)
        return (kind, _EMPTY_U8, _EMPTY_U16, _EMPTY_U16, w, half_bits(tiled.scales), _EMPTY_F2, b)
    weight = getattr(module, "weight", None)
    if (
        isinstance(module, torch.nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.dtype is torch.float32
        and weight.is_cpu
        and weight.is_contiguous()
    ):
        return (KIND_F32, _EMPTY_U8, _EMPTY_U16, _EMPTY_U16, _EMPTY_I8, _EMPTY_U16, weight.detach().numpy(), b)
    return None


def warm_up() -> None:
    """Compile (or load from the cache) :func:`decoder_layer` and :func:`bad_step` on a tiny layer of each format."""
    from rusteeze.kernels import numba_quant_matmul as nq

    hidden, hq, hk, hd, inter = 8, 2, 1, 4, 8
    g = torch.Generator().manual_seed(0)

    def int4(n: int, k: int) -> tuple:
        w, s, mn = nq.repack_int4(torch.zeros(n, k // 2, dtype=torch.uint8), torch.ones(n, 1), torch.zeros(n, 1))
        return (KIND_INT4, w.numpy(), half_bits(s), half_bits(mn), _EMPTY_I8, _EMPTY_U16, _EMPTY_F2, _EMPTY_F1)

    def int8(n: int, k: int) -> tuple:
        w, s = nq.repack_int8(torch.zeros(n, k, dtype=torch.int8), torch.ones(n))
        return (KIND_INT8, _EMPTY_U8, _EMPTY_U16, _EMPTY_U16, w.numpy(), half_bits(s), _EMPTY_F2, _EMPTY_F1)

    def f32(n: int, k: int) -> tuple:
        w = torch.randn(n, k, generator=g).numpy()
        return (KIND_F32, _EMPTY_U8, _EMPTY_U16, _EMPTY_U16, _EMPTY_I8, _EMPTY_U16, w, np.zeros(n, np.float32))

    x = np.ones((1, hidden), np.float32)
    res = np.empty_like(x)
    caches = np.zeros((2, 2, hk, hd), np.float32), np.zeros((2, 2, hk, hd), np.float32)
    idx = np.zeros(1, np.int64)
    cu, lens, tables = np.array([0, 1], np.int32), np.ones(1, np.int32), np.zeros((1, 1), np.int32)
    rope = np.ones((4, hd), np.float32)
    ones_h, dims = np.ones(hidden, np.float32), np.array([hq, hk, hd, inter], np.int64)
    bad_step(idx, rope.shape[0], idx, 4)
    qkv_n = (hq + 2 * hk) * hd
    for make in (int4, int8, f32):
        decoder_layer(
            x, res, True, idx, idx, cu, lens, tables, rope, *caches, ones_h, ones_h,
            _EMPTY_F1, _EMPTY_F1, 1e-6, dims, 0.5, 0,
            make(qkv_n, hidden), make(hidden, hq * hd), make(2 * inter, hidden), make(hidden, inter),
        )  # fmt: skip
