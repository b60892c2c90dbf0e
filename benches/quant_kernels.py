"""Candidate CPU kernels for quantized matmuls at SmolLM2-135M shapes, batch 1 and 32.

Run: ``python benches/quant_kernels.py [--threads 1]``. Prints the 25th-percentile
time (µs) of each candidate per (N, K, batch). The machine is shared (2 cores,
load 4-6 while this was measured), so figures are noisy: repeat and compare
ratios, not absolute values.

Recorded (1 thread, load ≈ 4, µs; f32 = F.linear on float32 weights):

    N×K         M   f32     i8pack_bf16  i4pack_bf16  i8pack_f32  i4pack_f32  i8_dequant
    960×576     1   77      80           123          948         1354        174
    960×576     32  676     1124         1397         61920       60412       689
    3072×576    1   431     219          305          2751        4349        578
    3072×576    32  5484    8149         8810         228155      264564      11157
    576×1536    1   104     134          168          1575        2359        268
    576×1536    32  1241    1809         2425         130610      132604      1772
    49152×576   1   35061   17722        9414         86076       132913      259190
    49152×576   32  173058  171099       142216       2482675     3158670     308122

fp16 activations were as slow as fp32 (i4pack_f16 at 3072×576, M=1: 9.8 ms).
int4 dequantize-then-F.linear (float32): 16.5 ms / 7.8 ms at 960×576 M=1 / 32.
Choice (rusteeze/quant/cpu_matmul.py): bf16 activations through the packed
kernels at every batch size: fastest at batch 1, within 1.6× of float32 at 32.
torch.compile'd dequant-matmul was not measured (inductor compile times on
this loaded 2-core machine did not fit the session) — see docs/quantization.md.
"""

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(960, 576), (3072, 576), (576, 1536), (49152, 576)]


def bench(fn, reps: int = 30) -> float:
    """25th-percentile wall time of ``fn`` in µs (after two warm-up calls)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 4] * 1e6


def measure(n: int, k: int, m: int) -> dict[str, float]:
    """Time every candidate for an [N, K] weight and [M, K] activations."""
    aten = torch.ops.aten
    x = torch.randn(m, k)
    xb = x.bfloat16()
    w = torch.randn(n, k)
    w8 = torch.randint(-127, 127, (n, k), dtype=torch.int8)
    s = torch.rand(n)
    g = 64
    w4 = aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
    sz = torch.rand(k // g, n, 2).bfloat16()
    return {
        "f32": bench(lambda: F.linear(x, w)),
        "i8pack_bf16": bench(lambda: aten._weight_int8pack_mm(xb, w8, s.bfloat16())),
        "i4pack_bf16": bench(lambda: aten._weight_int4pack_mm_for_cpu(xb, w4, g, sz)),
        "i8_dequant": bench(lambda: F.linear(x, w8.float()) * s, reps=5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for n, k in SHAPES:
        for m in (1, 32):
            row = measure(n, k, m)
            print(f"{n}x{k} M={m}: " + "  ".join(f"{name} {us:.0f}" for name, us in row.items()), flush=True)


if __name__ == "__main__":
    main()
