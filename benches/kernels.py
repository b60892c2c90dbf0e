"""Kernel benchmarks: time, achieved GB/s or TFLOP/s against the device's peak.

    python benches/kernels.py                 # all kernels, Llama-3-8B-like shapes
    python benches/kernels.py --only attention --json out.json
    python benches/kernels.py --peak-gbs 4800 --peak-tflops 989
    python benches/kernels.py --smoke         # tiny shapes on CPU under the Triton interpreter

Each row times the Triton kernel and its torch twin on the same inputs.
Memory-bound kernels report bandwidth (bytes that must move / time); matmuls
and prefill attention report TFLOP/s too. Quantized matmuls are compared with
a bf16 cuBLAS matmul (``F.linear``) of the same shape: the speedup at small M
is the point of weight-only quantization. Peaks come from a table of known
GPUs (overridable), next to a measured device-to-device copy bandwidth.
Needs CUDA; ``--smoke`` only checks that the script itself runs.
"""

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable

# (name substring, HBM GB/s, dense bf16 TFLOP/s); first match wins.
KNOWN_PEAKS = [
    ("H200", 4800, 989),
    ("H100 PCIe", 2000, 756),
    ("H100", 3350, 989),
    ("A100-SXM4-80GB", 2039, 312),
    ("A100 80GB PCIe", 1935, 312),
    ("A100", 1555, 312),
    ("L40S", 864, 362),
    ("L4", 300, 121),
    ("A10G", 600, 70),
    ("A10", 600, 125),
    ("RTX 4090", 1008, 165),
    ("RTX 3090", 936, 71),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="run only rows whose name contains this")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--peak-gbs", type=float, help="HBM bandwidth peak (GB/s), overrides the table")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak (TFLOP/s), overrides the table")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU under the interpreter")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("benches/kernels.py: skipped: no CUDA device (the kernels' GPU numbers need one; try --smoke)")
        return 0
    from rusteeze.kernels import torch_ops, triton_ops

    device = torch.device("cpu" if args.smoke else "cuda")
    name = "cpu (interpreter smoke run)" if args.smoke else torch.cuda.get_device_name()
    peak_gbs, peak_tflops = next(((g, t) for key, g, t in KNOWN_PEAKS if key in name), (None, None))
    peak_gbs = args.peak_gbs or peak_gbs
    peak_tflops = args.peak_tflops or peak_tflops
    bench = Bench(torch, device, args.smoke, peak_gbs, peak_tflops, args.only)
    print(f"device: {name}; peak {fmt(peak_gbs)} GB/s, {fmt(peak_tflops)} TFLOP/s (bf16 dense)")
    if not args.smoke:
        copy_bytes = 1 << 30
        src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        print(f"measured device copy: {2 * copy_bytes / bench.time(lambda: dst.copy_(src)) / 1e9:.0f} GB/s")
        del src, dst
    bench.header()
    run_all(bench, torch, torch_ops, triton_ops)
    if args.json:
        with open(args.json, "w") as f:
            report = {"device": name, "peak_gbs": peak_gbs, "peak_tflops": peak_tflops, "rows": bench.rows}
            json.dump(report, f, indent=2)
    return 0


def fmt(value: float | None, digits: int = 0) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


class Bench:
    """Times callables and prints one row per measurement."""

    def __init__(self, torch, device, smoke: bool, peak_gbs, peak_tflops, only: str | None) -> None:
        self.torch, self.device, self.smoke = torch, device, smoke
        self.peak_gbs, self.peak_tflops, self.only = peak_gbs, peak_tflops, only
        self.rows: list[dict] = []

    def header(self) -> None:
        """Column titles: the kernel's time, its baseline's (torch twin unless noted), then rates."""
        cols = ("ms", "base ms", "GB/s", "%peak", "TFLOP/s", "%peak")
        print(f"{'kernel':<44} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, (10, 10, 8, 6, 8, 6), strict=True)))

    def wanted(self, name: str) -> bool:
        return self.only is None or self.only in name

    def time(self, fn: Callable[[], object]) -> float:
        """Seconds per call: CUDA events via triton.testing.do_bench, or one timed call in a smoke run."""
        if self.smoke:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100) / 1e3

    def row(self, name: str, triton_fn, torch_fn, nbytes: float, flops: float = 0.0, baseline: str = "torch") -> None:
        """Time both callables and print achieved bandwidth / throughput of the Triton one."""
        t_triton = self.time(triton_fn)
        t_torch = self.time(torch_fn) if torch_fn is not None else math.nan
        gbs = nbytes / t_triton / 1e9
        tflops = flops / t_triton / 1e12 if flops else math.nan
        pct_bw = 100 * gbs / self.peak_gbs if self.peak_gbs else math.nan
        pct_fl = 100 * tflops / self.peak_tflops if self.peak_tflops and flops else math.nan
        print(
            f"{name:<44} {t_triton * 1e3:>10.4f} {t_torch * 1e3:>10.4f} {gbs:>8.0f} {pct_bw:>6.1f} "
            f"{tflops:>8.1f} {pct_fl:>6.1f}" + (f"   ({baseline} = second column)" if baseline != "torch" else "")
        )
        row = {"kernel": name, "triton_ms": t_triton * 1e3, "baseline": baseline, "baseline_ms": t_torch * 1e3}
        row |= {"gbs": gbs, "pct_peak_gbs": pct_bw, "tflops": tflops, "pct_peak_tflops": pct_fl}
        self.rows.append({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()})


def run_all(b: Bench, torch, torch_ops, triton_ops) -> None:
    """Shapes of a Llama-3-8B layer (hidden 4096, 32/8 heads of 128, MLP 14336), bf16."""
    s = b.smoke
    dt = torch.float32 if s else torch.bfloat16
    dev = b.device
    e = torch.finfo(dt).bits // 8
    tokens = 8 if s else 4096
    hidden, inter = (64, 96) if s else (4096, 14336)
    hq, hk, hd = (4, 2, 32) if s else (32, 8, 128)

    def rand(*shape, dtype=dt):
        return torch.randn(*shape, device=dev, dtype=torch.float32).to(dtype)

    if b.wanted("rms_norm"):
        x, w, res = rand(tokens, hidden), rand(hidden), rand(tokens, hidden)
        nb = 2 * tokens * hidden * e
        b.row(f"rms_norm [{tokens}, {hidden}]", lambda: triton_ops.rms_norm(x, w, 1e-6),
              lambda: torch_ops.rms_norm(x, w, 1e-6), nb)  # fmt: skip
        b.row(f"fused_add_rms_norm [{tokens}, {hidden}]", lambda: triton_ops.fused_add_rms_norm(x, res, w, 1e-6),
              lambda: torch_ops.fused_add_rms_norm(x, res, w, 1e-6), 2 * nb)  # fmt: skip
    if b.wanted("rotary"):
        pos = torch.arange(tokens, device=dev)
        q, k = rand(tokens, hq, hd), rand(tokens, hk, hd)
        angles = torch.arange(tokens, device=dev)[:, None] * torch.rand(hd // 2, device=dev)[None, :]
        cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
        nb = 2 * tokens * (hq + hk) * hd * e + tokens * hd * 4
        b.row(f"rotary neox T={tokens} {hq}/{hk}x{hd}", lambda: triton_ops.rotary_embedding(pos, q, k, cache),
              lambda: torch_ops.rotary_embedding(pos, q, k, cache), nb)  # fmt: skip
    if b.wanted("silu"):
        x = rand(tokens, 2 * inter)
        b.row(f"silu_and_mul [{tokens}, {2 * inter}]", lambda: triton_ops.silu_and_mul(x),
              lambda: torch_ops.silu_and_mul(x), 3 * tokens * inter * e)  # fmt: skip
    if b.wanted("store_kv"):
        block = 16
        kc = torch.zeros(tokens // block + 1, block, hk, hd, device=dev, dtype=dt)
        vc = torch.zeros_like(kc)
        key, val = rand(tokens, hk, hd), rand(tokens, hk, hd)
        slots = torch.randperm(kc.shape[0] * block, device=dev)[:tokens]
        b.row(f"store_kv T={tokens} {hk}x{hd}", lambda: triton_ops.store_kv(key, val, kc, vc, slots),
              lambda: torch_ops.store_kv(key, val, kc, vc, slots), 4 * tokens * hk * hd * e)  # fmt: skip
    if b.wanted("attention"):
        cases = [(4, 64, 1), (2, 48, 48)] if s else [(32, 4096, 1), (1, 32768, 1), (4, 2048, 2048), (8, 4096, 512)]
        for batch, ctx, q_len in cases:
            bench_attention(b, torch, torch_ops, triton_ops, batch, ctx, q_len, hq, hk, hd, dt, e)
    if b.wanted("matmul"):
        n, k_dim = (96, 128) if s else (4096, 4096)
        for m in (1, 16) if s else (1, 16, 128, 2048):
            bench_quant(b, torch, torch_ops, triton_ops, m, n, k_dim, dt, e)


def bench_attention(b, torch, torch_ops, triton_ops, batch, ctx, q_len, hq, hk, hd, dt, e) -> None:
    """Paged attention over contiguous-per-sequence random blocks; decode when q_len == 1."""
    block = 16
    per_seq = -(-ctx // block)
    kc = torch.randn(batch * per_seq, block, hk, hd, device=b.device).to(dt)
    vc = torch.randn_like(kc)
    tables = torch.randperm(batch * per_seq, device=b.device, dtype=torch.int32).view(batch, per_seq)
    q = torch.randn(batch * q_len, hq, hd, device=b.device).to(dt)
    cu = torch.arange(batch + 1, device=b.device, dtype=torch.int32) * q_len
    lens = torch.full((batch,), ctx, device=b.device, dtype=torch.int32)
    scale = hd**-0.5
    kv_bytes = 2 * batch * ctx * hk * hd * e
    nbytes = kv_bytes + 2 * q.numel() * e
    visible = batch * sum(ctx - q_len + i + 1 for i in range(q_len))  # (query, key) pairs
    flops = 4 * visible * hq * hd
    kind = "decode" if q_len == 1 else "prefill" if q_len == ctx else "chunked prefill"
    b.row(
        f"paged_attention {kind} B={batch} ctx={ctx} q={q_len}",
        lambda: triton_ops.paged_attention(q, kc, vc, cu, lens, tables, scale),
        lambda: torch_ops.paged_attention(q, kc, vc, cu, lens, tables, scale),
        nbytes,
        flops,
    )


def bench_quant(b, torch, torch_ops, triton_ops, m, n, k_dim, dt, e) -> None:
    """int8 and int4 (group 128) matmuls against a bf16 (here: activation dtype) F.linear."""
    import torch.nn.functional as F

    x = torch.randn(m, k_dim, device=b.device).to(dt)
    w_full = torch.randn(n, k_dim, device=b.device).to(dt)
    w8 = torch.randint(-127, 128, (n, k_dim), device=b.device, dtype=torch.int8)
    s8 = torch.rand(n, device=b.device) * 0.01
    group = 128 if k_dim % 128 == 0 else 32
    packed = torch.randint(0, 256, (n, k_dim // 2), device=b.device, dtype=torch.uint8)
    scales = (torch.rand(n, k_dim // group, device=b.device) * 0.01).to(dt)
    mins = (torch.randn(n, k_dim // group, device=b.device) * 0.01).to(dt)
    flops = 2 * m * n * k_dim
    act_bytes = (m * k_dim + m * n) * e
    b.row(f"bf16 F.linear M={m} N={n} K={k_dim}", lambda: F.linear(x, w_full), None, n * k_dim * e + act_bytes, flops)
    b.row(f"int8_matmul M={m} N={n} K={k_dim}", lambda: triton_ops.int8_matmul(x, w8, s8),
          lambda: F.linear(x, w_full), n * k_dim + n * 4 + act_bytes, flops, baseline="bf16 F.linear")  # fmt: skip
    int4_bytes = n * k_dim // 2 + 2 * n * (k_dim // group) * e + act_bytes
    b.row(f"int4_matmul g{group} M={m} N={n} K={k_dim}", lambda: triton_ops.int4_matmul(x, packed, scales, mins, group),
          lambda: F.linear(x, w_full), int4_bytes, flops, baseline="bf16 F.linear")  # fmt: skip
    if b.smoke:  # the torch twins only need to run, not to be timed against cuBLAS
        torch_ops.int8_matmul(x, w8, s8)
        torch_ops.int4_matmul(x, packed, scales, mins, group)


if __name__ == "__main__":
    sys.exit(main())
