"""Numba CPU kernels against the torch ops, at SmolLM2-135M decode shapes.

    python benches/numba_kernels.py                  # batch 1 and 16, context 512, 1 and 2 threads
    python benches/numba_kernels.py --threads 2 --batch 1 --only attention
    python benches/numba_kernels.py --prefill        # also prefill attention (decides TORCH_PREFILL_MIN_Q)
    python benches/numba_kernels.py --overhead       # µs per Python→Numba call with torch→numpy conversion

Shapes: hidden 576, 9 query heads, 3 KV heads, head_dim 64, intermediate 1536,
block size 16, shuffled block tables. Each figure is the best of several
rounds (the mean of one round's calls), in µs per op call including the Python
wrapper: what a decode step pays. Both libraries get the same thread count
(``torch.set_num_threads`` and ``numba.set_num_threads``). The CPU's model and
flags head the table. Compile time is not in the figures (a warm-up call first).
"""

import argparse
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

HIDDEN, HQ, HK, HEAD_DIM, INTER, BLOCK = 576, 9, 3, 64, 1536, 16
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_line() -> str:
    """'model name; flags ...' from /proc/cpuinfo (empty flags where it cannot be read)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} logical CPUs; flags: {' '.join(f for f in FLAGS if f in flags) or 'none'}"


def best_us(
    fn: Callable[[], object], calls: int, rounds: int = 9, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best mean µs per call over ``rounds`` rounds of ``calls`` calls (a warm-up call first)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - t0) / calls)
    return best * 1e6


def make_cache(batch: int, ctx: int, torch):
    """A paged cache holding ``batch`` sequences of ``ctx`` keys in shuffled blocks, unused slots NaN."""
    per_seq = -(-ctx // BLOCK)
    num_blocks = batch * per_seq + 4
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.full((num_blocks, BLOCK, HK, HEAD_DIM), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    order = torch.randperm(num_blocks, generator=gen)[: batch * per_seq].view(batch, per_seq).to(torch.int32)
    for b in range(batch):
        for j in range(ctx):
            blk, off = int(order[b, j // BLOCK]), j % BLOCK
            k_cache[blk, off] = torch.randn(HK, HEAD_DIM, generator=gen)
            v_cache[blk, off] = torch.randn(HK, HEAD_DIM, generator=gen)
    return k_cache, v_cache, order


def cases(batch: int, ctx: int, prefill: bool, torch):
    """(name, torch callable, numba callable, calls per round) at one batch size."""
    from rusteeze.kernels import numba_ops, torch_ops

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, HIDDEN, generator=gen)
    res_t, res_n = torch.randn(batch, HIDDEN, generator=gen), None
    res_n = res_t.clone()
    w = torch.randn(HIDDEN, generator=gen)
    gu = torch.randn(batch, 2 * INTER, generator=gen)
    q = torch.randn(batch, HQ, HEAD_DIM, generator=gen)
    k = torch.randn(batch, HK, HEAD_DIM, generator=gen)
    v = torch.randn(batch, HK, HEAD_DIM, generator=gen)
    positions = torch.full((batch,), ctx - 1, dtype=torch.int64)
    inv = 1.0 / 10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    angles = torch.arange(2048).float()[:, None] * inv[None, :]
    rope = torch.cat((angles.cos(), angles.sin()), dim=-1)
    k_cache, v_cache, tables = make_cache(batch, ctx, torch)
    slots = (tables[:, (ctx - 1) // BLOCK].long() * BLOCK + (ctx - 1) % BLOCK).contiguous()
    cu = torch.arange(batch + 1, dtype=torch.int32)
    lens = torch.full((batch,), ctx, dtype=torch.int32)
    scale = HEAD_DIM**-0.5
    n = 200 if batch == 1 else 50
    # A model forward runs the torch ops inside its step's plan (index work done once for all
    # layers); time them the same way. Older torch_ops without StepPlan memoize by themselves.
    step_plan = getattr(torch_ops, "StepPlan", None)
    if step_plan is not None:
        plan = step_plan(cu, lens, slots, tables)
        torch_attention = torch_ops.paged_attention

        def in_plan(fn):
            def call(*args):
                with plan.active():
                    return fn(*args)

            return call

        torch_ops = SimpleNamespace(
            rms_norm=torch_ops.rms_norm,
            fused_add_rms_norm=torch_ops.fused_add_rms_norm,
            silu_and_mul=torch_ops.silu_and_mul,
            rotary_embedding=in_plan(torch_ops.rotary_embedding),
            store_kv=in_plan(torch_ops.store_kv),
            paged_attention=in_plan(torch_attention),
        )
    rows = [
        ("rms_norm", lambda: torch_ops.rms_norm(x, w, 1e-5), lambda: numba_ops.rms_norm(x, w, 1e-5), n),
        (
            "fused_add_rms_norm",
            lambda: torch_ops.fused_add_rms_norm(x, res_t, w, 1e-5),
            lambda: numba_ops.fused_add_rms_norm(x, res_n, w, 1e-5),
            n,
        ),
        ("silu_and_mul", lambda: torch_ops.silu_and_mul(gu), lambda: numba_ops.silu_and_mul(gu), n),
        (
            "rotary_embedding",
            lambda: torch_ops.rotary_embedding(positions, q, k, rope),
            lambda: numba_ops.rotary_embedding(positions, q, k, rope),
            n,
        ),
        (
            "store_kv",
            lambda: torch_ops.store_kv(k, v, k_cache, v_cache, slots),
            lambda: numba_ops.store_kv(k, v, k_cache, v_cache, slots),
            n,
        ),
        (
            "rotary + store_kv",
            lambda: (
                torch_ops.rotary_embedding(positions, q, k, rope),
                torch_ops.store_kv(k, v, k_cache, v_cache, slots),
            ),
            lambda: numba_ops.rotary_store_kv(positions, q, k, v, rope, k_cache, v_cache, slots),
            n,
        ),
        (
            f"paged_attention decode ctx {ctx}",
            lambda: torch_ops.paged_attention(q, k_cache, v_cache, cu, lens, tables, scale),
            lambda: numba_ops.paged_attention(q, k_cache, v_cache, cu, lens, tables, scale),
            n // 4,
        ),
    ]
    if prefill and batch == 1:
        for q_len in (16, 64, ctx):
            qp = torch.randn(q_len, HQ, HEAD_DIM, generator=gen)
            cup = torch.tensor([0, q_len], dtype=torch.int32)
            rows.append(
                (
                    f"paged_attention prefill {q_len} of ctx {ctx}",
                    lambda qp=qp, cup=cup: torch_ops.paged_attention(qp, k_cache, v_cache, cup, lens, tables, scale),
                    lambda qp=qp, cup=cup: numba_ops.paged_attention(
                        qp, k_cache, v_cache, cup, lens, tables, scale, torch_prefill_min_q=1 << 62
                    ),
                    max(2, 2048 // q_len),
                )
            )
    return rows


def overhead(torch) -> None:
    """µs per call of an empty Numba function: numpy arguments, and torch tensors converted per call."""
    import numba
    import numpy as np

    @numba.njit(cache=False)
    def empty(a, b):
        return a.shape[0] + b.shape[0]

    a, b = torch.zeros(16, 576), torch.zeros(16, 576)
    an, bn = a.numpy(), b.numpy()
    empty(an, bn)
    print(f"empty njit call, numpy arguments:        {best_us(lambda: empty(an, bn), 2000):6.2f} µs")
    print(f"empty njit call, 2 tensors .numpy() each: {best_us(lambda: empty(a.numpy(), b.numpy()), 2000):6.2f} µs")
    print(f"torch.empty_like([16, 576]):              {best_us(lambda: torch.empty_like(a), 2000):6.2f} µs")
    print(f"np.asarray(tensor):                       {best_us(lambda: np.asarray(a), 2000):6.2f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--only", help="run only rows whose name contains this")
    parser.add_argument("--prefill", action="store_true", help="also time prefill attention (batch 1)")
    parser.add_argument("--overhead", action="store_true", help="time the per-call overhead only")
    parser.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="wall time, or the calling thread's CPU time (robust on a shared machine; 1 thread only)",
    )
    args = parser.parse_args()

    import numba
    import torch

    print(cpu_line())
    if args.overhead:
        overhead(torch)
        return 0
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    if args.clock == "thread" and args.threads != [1]:
        parser.error("--clock thread counts only the calling thread: use it with --threads 1")
    print(f"torch {torch.__version__}, numba {numba.__version__}; µs per call, {args.clock} clock, best of 9 rounds")
    print("| op | batch | threads | torch µs | numba µs | speedup |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch:
        rows = cases(batch, args.context, args.prefill, torch)
        for threads in args.threads:
            torch.set_num_threads(threads)
            numba.set_num_threads(threads)
            for name, torch_fn, numba_fn, calls in rows:
                if args.only and args.only not in name:
                    continue
                t_us, n_us = best_us(torch_fn, calls, clock=clock), best_us(numba_fn, calls, clock=clock)
                print(f"| {name} | {batch} | {threads} | {t_us:.1f} | {n_us:.1f} | {t_us / n_us:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
