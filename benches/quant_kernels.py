"""The CPU quantized matmul at SmolLM2-135M's shapes: the integer-activation kernel against dequantize + GEMM.

Run: ``python benches/quant_kernels.py [--threads 1] [--baseline 3e64cec]``. Prints the
CPU's model and flags, then two tables of best-of-rounds µs per call:

* ``rows``: the integer kernel (int16 activations, ``numba_q8_matmul``; what decode runs
  under dtype "auto") for M = 1 .. 64 rows, and µs per row; with ``--baseline REV`` the
  same kernel as of git revision REV beside it (its source loaded with ``git show``;
  3e64cec is the last one-row-at-a-time loop), and the ratio;
* ``crossover``: for M = 8 .. 128, that kernel against what larger calls run instead,
  dequantize + torch GEMM in bfloat16 and in float32 (``cpu_matmul``'s chunked path):
  where the kernel stops winning sets ``NUMBA_MAX_TOKENS`` (decoder layers: bf16 GEMM
  on CPUs with native bf16, float32 elsewhere) and ``LOGITS_MAX_TOKENS`` (the logits
  layer keeps float32 GEMMs).

Compare ratios measured in one run, not figures from different machines.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numba
import numpy as np
import torch

from rusteeze.bench.machine import cpu_line
from rusteeze.kernels import numba_q8_matmul as q8
from rusteeze.quant import cpu_matmul

SHAPES = [(3072, 576, "int4"), (576, 1536, "int4"), (960, 576, "int4"), (49152, 576, "int8")]  # (N, K, weight)
ROWS = (1, 2, 4, 5, 8, 16, 32, 64)
CROSSOVER = (8, 16, 32, 48, 64, 96, 128)


def best_us(fn, budget: float = 0.3) -> float:
    """Best µs per call over rounds of a few calls (after a warm-up call), about ``budget`` seconds in all."""
    t = time.perf_counter()
    fn()
    once = time.perf_counter() - t
    calls = max(1, min(20, int(0.05 / max(once, 1e-6))))
    rounds = max(3, min(15, int(budget / max(once * calls, 1e-6))))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls)
    return best * 1e6


def layer(n: int, k: int, kind: str) -> cpu_matmul.TiledInt4 | cpu_matmul.TiledInt8:
    """A random [N, K] weight in the tiles (groups of 32, int16 activations), as the layers hold it."""
    g = torch.Generator().manual_seed(n + k)
    if kind == "int4":
        packed = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
        scales, mins = torch.rand(n, k // 32, generator=g) * 0.01, torch.randn(n, k // 32, generator=g) * 0.01
        return cpu_matmul.TiledInt4.from_packed(packed, scales, mins, activation_bits=16)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    return cpu_matmul.TiledInt8.from_int8(q, torch.rand(n, k // 32, generator=g) * 0.01, activation_bits=16)


def load_baseline(rev: str) -> ModuleType:
    """``kernels/numba_q8_matmul.py`` as of git revision ``rev``, imported as its own module (own Numba cache)."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{rev}:kernels/numba_q8_matmul.py"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.gettempdir()) / f"rusteeze_q8_baseline_{rev}.py"
    if not path.exists() or path.read_text() != source:
        path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # importable by name: Numba's cached code refers to its module so
    spec.loader.exec_module(module)
    return module


def kernel_call(module: ModuleType, tiled, x: torch.Tensor):
    """A call of ``module``'s integer kernel on the layer's tiles (the wrappers' own quantization included).

    Kernels from before the float16 tiles (git c68a9f2 and older: no ``half_bits``) get the same values as float32.
    """
    float32 = not hasattr(module, "half_bits")
    scales = tiled.scales.float() if float32 else tiled.scales  # converted once, outside the timed call
    if isinstance(tiled, cpu_matmul.TiledInt4):
        mins = tiled.mins.float() if float32 else tiled.mins
        return lambda: module.int4_matmul_q8(x, tiled.weight, scales, mins, tiled.out_features)
    return lambda: module.int8_matmul_q8(x, tiled.weight, scales, tiled.out_features)


def rows_table(baseline: ModuleType | None) -> None:
    """The integer kernel for M = 1 .. 64 rows (and the baseline's, with the ratio)."""
    print("\n## rows: integer kernel (int16 activations), µs per call (µs per row)")
    for n, k, kind in SHAPES:
        tiled = layer(n, k, kind)
        cells = []
        for m in ROWS:
            x = torch.randn(m, k)
            new = best_us(kernel_call(q8, tiled, x))
            cell = f"M={m} {new:.0f} ({new / m:.0f})"
            if baseline is not None:
                old = best_us(kernel_call(baseline, tiled, x))
                cell += f" vs {old:.0f} x{old / new:.2f}"
            cells.append(cell)
        print(f"{n}x{k} {kind}: " + "  ".join(cells), flush=True)


def crossover_table() -> None:
    """The integer kernel against dequantize + GEMM (bf16, float32) for M = 8 .. 128."""
    print("\n## crossover: µs per call, integer kernel | dequantize + bf16 GEMM | dequantize + float32 GEMM")
    for n, k, kind in SHAPES:
        tiled = layer(n, k, kind)
        cells = []
        for m in CROSSOVER:
            x = torch.randn(m, k)
            call = tiled.matmul
            tiled.kernel_max_tokens = m
            times = [best_us(lambda call=call, x=x: call(x))]
            tiled.kernel_max_tokens = 0
            for bf16 in (True, False):
                tiled.bf16_gemm = bf16
                times.append(best_us(lambda call=call, x=x: call(x)))
            cells.append(f"M={m} " + "|".join(f"{t:.0f}" for t in times))
        print(f"{n}x{k} {kind}: " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline", default="", help="git revision of the kernel to compare with (e.g. 3e64cec)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(
        f"# {cpu_line()}; {args.threads} threads (torch and Numba); torch {torch.__version__}, numpy {np.__version__}"
    )
    rows_table(load_baseline(args.baseline) if args.baseline else None)
    crossover_table()


if __name__ == "__main__":
    sys.exit(main())
