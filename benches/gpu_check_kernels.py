"""gpu_check (d): each hot Triton kernel's achieved bandwidth (and FLOP rate) beside the H200's limits.

Timed with CUDA events around ``REPS`` launches after a warm-up (the median of three such
batches); in a dry run, one call under the Triton interpreter timed with ``perf_counter`` (the
figures then only show that the code runs). Bytes are what each kernel must move at least:

* paged decode attention: every K and V element of every context once (``2·B·ctx·Hk·D·e``),
  plus q and the output;
* prefill attention: the same bytes, and ``4·Hq·D`` FLOPs per visible (query, key) pair;
* RMSNorm: read x, write out (fused: plus read and write the residual);
* rotary: read and write q and k, read the cos/sin rows; SiLU-and-mul: read 2I, write I per token;
* store_kv: read K and V, write them to the cache;
* quantized matmuls: the packed weights and their scales, plus activations in and out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

H200_HBM_GBS = 4300.0  # the issue's figure for the H200's HBM3e
H200_BF16_TFLOPS = 790.0  # dense bf16, as the issue states it
REPS = 20


def kernel_figures(dry_run: bool, deadline: float) -> dict:
    """Time every hot kernel; rows with GB/s, TFLOP/s and their share of the H200's limits."""
    import torch

    from rusteeze.kernels import triton_ops

    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.bfloat16
    timer = Timer(torch, device, dry_run)
    rows: list[dict] = []
    result = {"peak_gbs": H200_HBM_GBS, "peak_tflops": H200_BF16_TFLOPS, "dtype": str(dtype), "rows": rows}
    if not dry_run:
        src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        result["copy_gbs"] = round(2 * src.numel() / timer.seconds(lambda: dst.copy_(src)) / 1e9, 1)
        del src, dst
    for name, fn, nbytes, flops in cases(torch, triton_ops, device, dtype, dry_run):
        if time.perf_counter() > deadline:
            result["cut_short"] = f"out of time before {name}"
            break
        seconds = timer.seconds(fn)
        gbs = nbytes / seconds / 1e9
        row = {"kernel": name, "us": round(seconds * 1e6, 2), "gbs": round(gbs, 1)}
        row["pct_hbm"] = round(100 * gbs / H200_HBM_GBS, 1)
        if flops:
            tflops = flops / seconds / 1e12
            row |= {"tflops": round(tflops, 2), "pct_bf16_peak": round(100 * tflops / H200_BF16_TFLOPS, 1)}
        rows.append(row)
        print(f"   {name:<52} {row['us']:>10.1f} us {gbs:>8.0f} GB/s {row['pct_hbm']:>5.1f}%", flush=True)
    decode = [r for r in rows if r["kernel"].startswith("paged_attention decode B=64 ctx=2048")]
    result["decode_attention_pct_hbm"] = max((r["pct_hbm"] for r in decode), default=None)
    result["target_decode_attention_pct_hbm"] = 70.0
    return result


class Timer:
    """Seconds per call of a callable: CUDA events on a GPU, one perf_counter call in a dry run."""

    def __init__(self, torch, device, dry_run: bool) -> None:
        self.torch, self.device, self.dry_run = torch, device, dry_run

    def seconds(self, fn: Callable[[], object]) -> float:
        if self.dry_run:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        cuda = self.torch.cuda
        for _ in range(3):  # compile and warm up
            fn()
        batches = []
        for _ in range(3):
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            start.record()
            for _ in range(REPS):
                fn()
            end.record()
            end.synchronize()
            batches.append(start.elapsed_time(end) / 1e3 / REPS)
        return statistics.median(batches)


def cases(torch, ops, device, dtype, dry_run: bool):
    """(name, callable, bytes, flops) per kernel at the ~1B model's shapes (tiny ones in a dry run)."""
    e = torch.finfo(dtype).bits // 8
    tokens = 8 if dry_run else 4096
    hidden, inter = (64, 96) if dry_run else (2048, 8192)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=torch.float32).to(dt)

    x, w, res = rand(tokens, hidden), rand(hidden), rand(tokens, hidden)
    yield f"rms_norm [{tokens}, {hidden}]", lambda: ops.rms_norm(x, w, 1e-6), 2 * x.numel() * e, 0
    yield (
        f"fused_add_rms_norm [{tokens}, {hidden}]",
        lambda: ops.fused_add_rms_norm(x, res, w, 1e-6),
        4 * x.numel() * e,
        0,
    )
    gate_up = rand(tokens, 2 * inter)
    yield f"silu_and_mul [{tokens}, {2 * inter}]", lambda: ops.silu_and_mul(gate_up), 3 * tokens * inter * e, 0
    for hq, hk, hd in ((4, 2, 16),) if dry_run else ((32, 8, 64), (32, 8, 128)):
        yield from attention_cases(torch, ops, device, dtype, dry_run, hq, hk, hd)
    hq, hk, hd = (4, 2, 16) if dry_run else (32, 8, 64)
    pos = torch.arange(tokens, device=device)
    q, k = rand(tokens, hq, hd), rand(tokens, hk, hd)
    angles = pos[:, None].float() * torch.rand(hd // 2, device=device)[None, :]
    table = torch.cat((angles.cos(), angles.sin()), dim=-1)  # [P, D] float32
    rot_bytes = 2 * tokens * (hq + hk) * hd * e + tokens * hd * 4
    yield f"rotary T={tokens} {hq}/{hk}x{hd}", lambda: ops.rotary_embedding(pos, q, k, table), rot_bytes, 0
    block = 16
    kc = torch.zeros(tokens // block + 1, block, hk, hd, device=device, dtype=dtype)
    vc = torch.zeros_like(kc)
    slots = torch.randperm(kc.shape[0] * block, device=device)[:tokens]
    store_bytes = 4 * tokens * hk * hd * e
    yield f"store_kv T={tokens} {hk}x{hd}", lambda: ops.store_kv(k, k, kc, vc, slots), store_bytes, 0
    n, k_dim = (96, 128) if dry_run else (hidden, hidden)
    for m in (1, 4) if dry_run else (1, 64):
        yield from quant_cases(torch, ops, device, dtype, m, n, k_dim, e)


def attention_cases(torch, ops, device, dtype, dry_run, hq, hk, hd):
    """Decode at 64 × 2,048 (the issue's target) and 256 × 2,048; prefill 1 × 8,192; chunked 4 × 2,048/512."""
    e = torch.finfo(dtype).bits // 8
    shapes = [(4, 64, 1), (2, 48, 48)] if dry_run else [(64, 2048, 1), (256, 2048, 1), (1, 8192, 8192), (4, 2048, 512)]
    for batch, ctx, q_len in shapes:
        block = 16
        per_seq = -(-ctx // block)
        kc = torch.randn(batch * per_seq, block, hk, hd, device=device).to(dtype)  # [blocks, bs, Hk, D]
        vc = torch.randn_like(kc)
        tables = torch.randperm(batch * per_seq, device=device, dtype=torch.int32).view(batch, per_seq)
        q = torch.randn(batch * q_len, hq, hd, device=device).to(dtype)  # [T, Hq, D]
        cu = torch.arange(batch + 1, device=device, dtype=torch.int32) * q_len
        lens = torch.full((batch,), ctx, device=device, dtype=torch.int32)
        nbytes = 2 * batch * ctx * hk * hd * e + 2 * q.numel() * e
        visible = batch * sum(ctx - q_len + i + 1 for i in range(q_len))
        kind = "decode" if q_len == 1 else "prefill" if q_len == ctx else "chunked prefill"
        name = f"paged_attention {kind} B={batch} ctx={ctx} q={q_len} {hq}/{hk}x{hd}"

        def run(q=q, kc=kc, vc=vc, cu=cu, lens=lens, tables=tables):
            return ops.paged_attention(q, kc, vc, cu, lens, tables, hd**-0.5)

        yield name, run, nbytes, 4 * visible * hq * hd


def quant_cases(torch, ops, device, dtype, m, n, k_dim, e):
    """int8 (per-row scale) and int4 (group 128, or 32 for tiny K) weight-only matmuls, and bf16 F.linear."""
    import torch.nn.functional as F

    x = torch.randn(m, k_dim, device=device).to(dtype)
    dense = torch.randn(n, k_dim, device=device).to(dtype)
    w8 = torch.randint(-127, 128, (n, k_dim), device=device, dtype=torch.int8)
    s8 = torch.rand(n, device=device) * 0.01
    group = 128 if k_dim % 128 == 0 and k_dim > 128 else 32
    packed = torch.randint(0, 256, (n, k_dim // 2), device=device, dtype=torch.uint8)
    scales = (torch.rand(n, k_dim // group, device=device) * 0.01).to(dtype)
    mins = (torch.randn(n, k_dim // group, device=device) * 0.01).to(dtype)
    act = (m * k_dim + m * n) * e
    flops = 2 * m * n * k_dim
    yield f"F.linear M={m} N={n} K={k_dim}", lambda: F.linear(x, dense), n * k_dim * e + act, flops
    yield f"int8_matmul M={m} N={n} K={k_dim}", lambda: ops.int8_matmul(x, w8, s8), n * k_dim + 4 * n + act, flops
    int4_bytes = n * k_dim // 2 + 2 * n * (k_dim // group) * e + act
    yield (
        f"int4_matmul g{group} M={m} N={n} K={k_dim}",
        lambda: ops.int4_matmul(x, packed, scales, mins, group),
        int4_bytes,
        flops,
    )
