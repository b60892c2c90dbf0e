"""CPU float32 linear: ``F.linear`` (MKL ``x @ W.T``) vs rusteeze's sliced ``W @ x.T`` (``rusteeze.models.linear``).

    python benches/linear.py [--threads 2]

For each SmolLM2-135M weight shape and batch size T, both run over enough
distinct weight copies (~400 MB) that every call streams its weights from
memory, as a real decode step does (timing one weight again and again would
measure the cache instead). Prints ms per call and the speed-up.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from rusteeze.models.linear import linear

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
STREAM_BYTES = 400e6


def per_call_ms(fn, weights: list[torch.Tensor]) -> float:
    """Mean ms of ``fn(w)`` over the weights, after one warm pass (best of 3 passes)."""
    for w in weights:
        fn(w)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for w in weights:
            fn(w)
        best = min(best, (time.perf_counter() - start) / len(weights))
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", default="1,4,16,64,256,1024")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    print(f"{'shape':<10}{'T':>6}{'F.linear ms':>14}{'sliced ms':>12}{'speed-up':>10}")
    for name, (n, k) in SHAPES.items():
        copies = max(2, int(STREAM_BYTES // (n * k * 4)))
        weights = [torch.randn(n, k) for _ in range(copies)]
        for t in map(int, args.tokens.split(",")):
            x = torch.randn(t, k)
            torch.testing.assert_close(linear(x, weights[0]), F.linear(x, weights[0]), rtol=1e-4, atol=1e-4)
            base = per_call_ms(lambda w, x=x: F.linear(x, w), weights)
            ours = per_call_ms(lambda w, x=x: linear(x, w), weights)
            print(f"{name:<10}{t:>6}{base:>14.3f}{ours:>12.3f}{base / ours:>9.2f}x")


if __name__ == "__main__":
    main()
