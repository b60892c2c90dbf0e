"""The CPU quantized matmul at SmolLM2-135M shapes: Numba tiles against float32 GEMM and torch's int4pack.

Run: ``python benches/quant_kernels.py [--threads 2]``. Prints, per (N, K, tokens),
the best-of-rounds time in µs of:

* ``numba_int4`` / ``numba_int8``: ``rusteeze.quant.cpu_matmul`` as the layers call it
  (the Numba kernel up to ``NUMBA_MAX_TOKENS`` rows, dequantize + torch GEMM above);
* ``f32``: ``F.linear`` on the float32 weight (what the float path does);
* ``i4pack_bf16``: torch's ``_weight_int4pack_mm_for_cpu`` with bf16 activations (the
  kernel rusteeze used before; its packing depends on the CPU, so it is a peer only).

GMAC/s of the int4 path is printed beside it. The CPU's model and flags head the table;
compare ratios measured in one run, not figures from different machines.
"""

import argparse
import time

import numba
import torch
import torch.nn.functional as F

from rusteeze.bench.machine import cpu_line
from rusteeze.quant import cpu_matmul
from rusteeze.quant.tensors import quantize_int8

SHAPES = [(576, 576), (3072, 576), (576, 1536), (49152, 576)]
TOKENS = (1, 4, 8, 64, 256)


def best_us(fn, rounds: int = 7, calls: int = 5) -> float:
    """Best mean µs per call over ``rounds`` rounds (after a warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e6


def measure(n: int, k: int, m: int) -> dict[str, float]:
    """Time every candidate for an [N, K] weight and [M, K] activations."""
    x = torch.randn(m, k)
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    scales, mins = torch.rand(n, k // 32) * 0.01, torch.randn(n, k // 32) * 0.01
    int4 = cpu_matmul.TiledInt4.from_packed(packed, scales, mins)
    int8 = cpu_matmul.TiledInt8.from_int8(*quantize_int8(torch.randn(n, k)))
    w = torch.randn(n, k)
    row = {"numba_int4": best_us(lambda: int4.matmul(x)), "numba_int8": best_us(lambda: int8.matmul(x))}
    row["f32"] = best_us(lambda: F.linear(x, w))
    if hasattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"):
        w4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
        sz, xb = torch.rand(k // 32, n, 2).bfloat16(), x.bfloat16()
        row["i4pack_bf16"] = best_us(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, w4, 32, sz))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(f"# {cpu_line()}; {args.threads} threads (torch and Numba)")
    for n, k in SHAPES:
        for m in TOKENS:
            row = measure(n, k, m)
            gmacs = n * k * m / row["numba_int4"] / 1e3
            cells = "  ".join(f"{name} {us:.0f}" for name, us in row.items())
            print(f"{n}x{k} M={m}: {cells}  (int4 {gmacs:.1f} GMAC/s)", flush=True)


if __name__ == "__main__":
    main()
