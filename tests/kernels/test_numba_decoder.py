"""``numba_decoder.decoder_layer`` (one whole decoder layer in one call) against the torch reference ops."""

import numpy as np
import pytest
import torch

from rusteeze.kernels import numba_decoder as nd
from rusteeze.kernels import numba_quant_matmul as nq
from rusteeze.kernels import torch_ops
from rusteeze.kernels.numba_half import half_bits
from rusteeze.quant.tensors import dequantize_int4, quantize_int4

EMPTY_U8, EMPTY_I8 = np.empty((0, 0, 0), np.uint8), np.empty((0, 0, 0), np.int8)
EMPTY_U16 = np.empty((0, 0, 0), np.uint16)  # no scales (the tiles' are float16 bits)
EMPTY_F2, EMPTY_F1 = np.empty((0, 0), np.float32), np.empty(0, np.float32)


def _linear(
    fmt: str, n: int, k: int, g: torch.Generator, bias: bool = False
) -> tuple[tuple, torch.Tensor, torch.Tensor]:
    """(LinearArgs, the float32 weight it holds [N, K], bias [N] or zeros)."""
    w = torch.randn(n, k, generator=g) / k**0.5
    b = torch.randn(n, generator=g) if bias else torch.zeros(n)
    bn = b.numpy() if bias else EMPTY_F1
    if fmt == "int4":
        packed, scales, mins = quantize_int4(w, 32)
        scales, mins = scales.half(), mins.half()  # as `rusteeze quantize` writes them and the tiles hold them
        tw, ts, tm = nq.repack_int4(packed, scales, mins)
        args = (nd.KIND_INT4, tw.numpy(), half_bits(ts), half_bits(tm), EMPTY_I8, EMPTY_U16, EMPTY_F2, bn)
        return args, dequantize_int4(packed, scales, mins, 32).float(), b
    if fmt == "int8":
        scale = (w.abs().amax(1) / 127).half().float()
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        tw, ts = nq.repack_int8(q, scale)
        args = (nd.KIND_INT8, EMPTY_U8, EMPTY_U16, EMPTY_U16, tw.numpy(), half_bits(ts), EMPTY_F2, bn)
        return args, q.float() * scale[:, None], b
    return (nd.KIND_F32, EMPTY_U8, EMPTY_U16, EMPTY_U16, EMPTY_I8, EMPTY_U16, w.numpy(), bn), w, b


@pytest.mark.parametrize(
    ("fmt", "hq", "hk", "qk_norm", "window", "first"),
    [("int4", 9, 3, False, 0, False), ("int8", 4, 1, True, 0, True), ("f32", 2, 2, False, 5, False)],
)
def test_decoder_layer_matches_torch_ops(fmt, hq, hk, qk_norm, window, first):
    g = torch.Generator().manual_seed(0)
    hidden, hd, inter, bs, eps = 64, 32, 96, 4, 1e-5
    qkv, w_qkv, b_qkv = _linear(fmt, (hq + 2 * hk) * hd, hidden, g, bias=True)
    o, w_o, _ = _linear(fmt, hidden, hq * hd, g)
    gu, w_gu, _ = _linear(fmt, 2 * inter, hidden, g)
    down, w_down, _ = _linear(fmt, hidden, inter, g)
    ln1, ln2 = torch.rand(hidden, generator=g) + 0.5, torch.rand(hidden, generator=g) + 0.5
    qn, kn = (torch.rand(hd, generator=g) + 0.5, torch.rand(hd, generator=g) + 0.5) if qk_norm else (None, None)
    rope = torch.randn(64, hd, generator=g)
    # three sequences: decode at context 11, a 3-token chunk at context 7, decode at context 1; shuffled blocks
    ctx, q_lens = [11, 7, 1], [1, 3, 1]
    tables = torch.randperm(12, generator=g).to(torch.int32).view(3, 4)
    positions = torch.cat([torch.arange(c - q, c) for c, q in zip(ctx, q_lens, strict=True)])
    seq_of = torch.repeat_interleave(torch.arange(3), torch.tensor(q_lens))
    slots = tables[seq_of, positions // bs].long() * bs + positions % bs
    cu = torch.tensor([0, 1, 4, 5], dtype=torch.int32)
    lens = torch.tensor(ctx, dtype=torch.int32)
    k_cache = torch.randn(12, bs, hk, hd, generator=g)
    v_cache = torch.randn(12, bs, hk, hd, generator=g)
    for b, c in enumerate(ctx):  # slots past each context are NaN: never read
        for p in range(c, 16):
            k_cache[tables[b, p // bs], p % bs] = float("nan")
            v_cache[tables[b, p // bs], p % bs] = float("nan")
    t = len(positions)
    x = torch.randn(t, hidden, generator=g)
    residual = torch.randn(t, hidden, generator=g)

    # reference: the torch ops, as rusteeze.models.llama runs them
    rk, rv, rres = k_cache.clone(), v_cache.clone(), residual.clone()
    if first:
        rres = x.clone()
        h = torch_ops.rms_norm(rres, ln1, eps)
    else:
        h = torch_ops.fused_add_rms_norm(x, rres, ln1, eps)
    y = h @ w_qkv.T + b_qkv
    q, k, v = y.split((hq * hd, hk * hd, hk * hd), dim=-1)
    q, k, v = q.reshape(t, hq, hd), k.reshape(t, hk, hd), v.reshape(t, hk, hd)
    if qk_norm:
        q = torch_ops.rms_norm(q.reshape(-1, hd), qn, eps).view(t, hq, hd)
        k = torch_ops.rms_norm(k.reshape(-1, hd), kn, eps).view(t, hk, hd)
    torch_ops.rotary_embedding(positions, q, k, rope, True)
    torch_ops.store_kv(k, v, rk, rv, slots)
    att = torch_ops.paged_attention(q, rk, rv, cu, lens, tables, hd**-0.5, window or None)
    h = torch_ops.fused_add_rms_norm(att.reshape(t, -1) @ w_o.T, rres, ln2, eps)
    expected = torch_ops.silu_and_mul(h @ w_gu.T) @ w_down.T

    xs, res_n = x.clone().numpy(), residual.clone().numpy()
    kc, vc = k_cache.clone(), v_cache.clone()
    dims = np.array([hq, hk, hd, inter], np.int64)
    empty = np.empty(0, np.float32)
    status = nd.decoder_layer(
        xs, res_n, first, positions.numpy(), slots.numpy(), cu.numpy(), lens.numpy(), tables.numpy(), rope.numpy(),
        kc.numpy(), vc.numpy(), ln1.numpy(), ln2.numpy(), empty if qn is None else qn.numpy(),
        empty if kn is None else kn.numpy(), eps, dims, hd**-0.5, window, qkv, o, gu, down,
    )  # fmt: skip
    assert status == 0
    torch.testing.assert_close(torch.from_numpy(xs), expected, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(torch.from_numpy(res_n), rres, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, rk, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(vc, rv, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_bad_step_flags_positions_and_slots():
    pos, slots = np.array([0, 3], np.int64), np.array([-1, 7], np.int64)
    assert nd.bad_step(pos, 4, slots, 8) == 0
    assert nd.bad_step(pos, 3, slots, 8) == 1
    assert nd.bad_step(pos, 4, slots, 7) == 1
