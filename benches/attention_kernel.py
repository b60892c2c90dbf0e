"""The Numba paged attention alone, in ns per (query row, key) pair, against an earlier version of itself.

    python benches/attention_kernel.py                          # decode, 64 sequences, contexts 130 and 256
    python benches/attention_kernel.py --baseline HEAD~3        # also the kernel file as of a git revision
    python benches/attention_kernel.py --q-len 1 4 --threads 1 2 --layers 1

SmolLM2-135M's attention: 9 query heads over 3 KV heads (G = 3), head_dim 64,
the engine's block size 16, shuffled block tables, unused cache slots NaN.
Each sequence has ``--context`` keys and ``--q-len`` new query tokens (1 is a
decode step, more are the small prefill tiles the kernel keeps from SDPA).
Consecutive calls cycle through ``--layers`` layers' caches (30, SmolLM2's
count, by default), so the keys come from memory as in a model's step;
``--layers 1`` keeps them in L2/L3 (the kernel's compute alone).
A figure is the best of ``--rounds`` rounds (the mean of one round's calls) of
``paged_attention`` with its Python wrapper, divided by the (query row, key)
pairs it computes: ``Σ_rows visible keys``. With ``--baseline REV`` the file
``kernels/numba_attention.py`` of that revision is loaded as a second module and
timed in the same run, interleaved (figures from one run compare; figures from
two runs on a shared machine do not). The CPU's flags head the table.
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import torch

from rusteeze.bench.machine import cpu_line
from rusteeze.kernels import numba_attention

HQ, HK, HEAD_DIM, BLOCK = 9, 3, 64, 16
KERNEL_FILE = "kernels/numba_attention.py"


def load_revision(rev: str, workdir: Path):
    """``kernels/numba_attention.py`` as of git revision ``rev``, imported as a module of its own."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:{KERNEL_FILE}"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    path = workdir / "numba_attention_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("numba_attention_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_batch(batch: int, ctx: int, q_len: int, layers: int, seed: int = 0):
    """(q, k_cache, v_cache, cu, lens, tables per layer, pairs per call) for ``batch`` sequences of ``ctx`` keys.

    One cache holds ``layers`` layers' blocks (shuffled, each layer's table its own
    blocks), so consecutive calls over the layers read the keys from memory, as a
    model's step does, not from the cache of the previous call. Slots past a
    sequence's context and spare blocks are NaN.
    """
    gen = torch.Generator().manual_seed(seed)
    per_seq = -(-ctx // BLOCK)
    num_blocks = layers * batch * per_seq + 4
    k_cache = torch.randn(num_blocks, BLOCK, HK, HEAD_DIM, generator=gen)  # [N, S, Hk, D]
    v_cache = torch.randn(num_blocks, BLOCK, HK, HEAD_DIM, generator=gen)
    order = torch.randperm(num_blocks, generator=gen)
    tables = order[: layers * batch * per_seq].view(layers, batch, per_seq).to(torch.int32)  # [L, B, blocks]
    unused = torch.ones(num_blocks, BLOCK, dtype=torch.bool)
    unused[tables[:, :, :-1].flatten()] = False
    unused[tables[:, :, -1].flatten(), : ctx - (per_seq - 1) * BLOCK] = False
    k_cache[unused] = float("nan")
    v_cache[unused] = float("nan")
    q = torch.randn(batch * q_len, HQ, HEAD_DIM, generator=gen)  # [T, Hq, D]
    cu = torch.arange(0, batch * q_len + 1, q_len, dtype=torch.int32)
    lens = torch.full((batch,), ctx, dtype=torch.int32)
    pairs = batch * HQ * sum(ctx - q_len + 1 + i for i in range(q_len))
    return q, k_cache, v_cache, cu, lens, tables, pairs


class Caller:
    """Calls one module's ``paged_attention`` on the next layer's block table each time."""

    def __init__(self, module, q, k_cache, v_cache, cu, lens, tables) -> None:
        self.module, self.args, self.tables, self.layer = module, (q, k_cache, v_cache, cu, lens), tables, 0

    def __call__(self) -> torch.Tensor:
        table = self.tables[self.layer]
        self.layer = (self.layer + 1) % self.tables.shape[0]
        q, k_cache, v_cache, cu, lens = self.args
        return self.module.paged_attention(
            q, k_cache, v_cache, cu, lens, table, HEAD_DIM**-0.5, torch_prefill_min_q=1 << 40
        )


def time_rounds(fns: list, calls: int, rounds: int, clock=time.perf_counter) -> list[float]:
    """Best mean seconds per call of each function, rounds interleaved across the functions."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = clock()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (clock() - t0) / calls)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, nargs="+", default=[130, 256])
    parser.add_argument("--q-len", type=int, nargs="+", default=[1])
    parser.add_argument("--baseline", help="git revision whose kernel file is timed alongside (e.g. HEAD~1)")
    parser.add_argument("--layers", type=int, default=30, help="caches cycled through (1: the keys stay in L2/L3)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: the process's CPU time (all threads summed; on a shared machine, 1 thread without preemption)",
    )
    args = parser.parse_args()

    print(cpu_line())
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        kernels = [("current", numba_attention)]
        if args.baseline:
            kernels.insert(0, (args.baseline, load_revision(args.baseline, Path(tmp))))
        head = "".join(f"{name:>14}" for name, _ in kernels)
        print(f"{'ns per (row, key) pair':<40}{head}" + ("   ratio" if len(kernels) > 1 else ""))
        for threads in args.threads:
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            for q_len in args.q_len:
                for ctx in args.context:
                    q, k_cache, v_cache, cu, lens, tables, pairs = make_batch(args.batch, ctx, q_len, args.layers)
                    fns = [Caller(m, q, k_cache, v_cache, cu, lens, tables) for _, m in kernels]
                    outs = [fn() for fn in fns]
                    assert all(torch.isfinite(o).all() for o in outs)
                    assert all(torch.allclose(o, outs[0], atol=1e-5, rtol=1e-5) for o in outs)
                    calls = max(20, 2 * args.layers)
                    ns = [s * 1e9 / pairs for s in time_rounds(fns, calls, args.rounds, clock)]
                    label = f"B={args.batch} ctx={ctx} q={q_len} threads={threads}"
                    cells = "".join(f"{v:14.2f}" for v in ns)
                    ratio = f"{ns[0] / ns[-1]:7.2f}x" if len(ns) > 1 else ""
                    print(f"{label:<40}{cells}{ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
