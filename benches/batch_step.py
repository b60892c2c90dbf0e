"""Where the time of one batch decode step goes: SmolLM2 with 64 running sequences, each part timed.

    python benches/batch_step.py --threads 1            # 64 sequences after 128-token prompts
    python benches/batch_step.py --threads 2 --seqs 32 --steps 10

The engine (default path, ``dtype="auto"``) prefills ``--seqs`` random prompts of
``--input-len`` tokens, then runs ``--steps`` decode steps with the parts below
wrapped in timers; each part is charged its own time (time spent in a wrapped
part it calls goes to that part), so the rows add up to the step time:

* dequantize int4 / int8: the large-call weight dequantization (``rusteeze.kernels.numba_quant_matmul``);
* casts (``.bfloat16()``, ``.float()``, ``.to()``), GEMM (``@``, ``torch.mm``): torch's side of
  ``cpu_matmul``'s large calls;
* integer kernels: the kernel-sized quantized matmuls (``numba_q8_matmul``, ``numba_quant_matmul``);
* attention, rotary+store, norms, silu_and_mul: the per-op kernels;
* ``logits:`` parts: those charged inside ``compute_logits`` (the tied Q8_0 lm_head);
* sampler, prepare: the runner's sampling and step tensors; other: Python and torch glue left over.

Decode figures are the per-step mean (ms) over the timed steps, best of
``--repeats`` rounds; the prefill (every prompt, in steps of up to
``max_num_batched_tokens``) is timed once, whole. The CPU's flags head the table.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

from rusteeze.bench.machine import cpu_line


class Timers:
    """Self-time accounting for wrapped callables: a nested wrapped call is charged to its own part."""

    def __init__(self) -> None:
        self.self_s: dict[str, float] = defaultdict(float)
        self.scope = ""  # prefixes the parts charged while a scoped call runs (``scoped``)
        self._stack: list[list[float]] = []  # per open call: [child seconds]

    def wrap(self, name: str, fn: Callable) -> Callable:
        """``fn`` with its self time added to part ``name``."""

        def timed(*args, **kwargs):
            self._stack.append([0.0])
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                children = self._stack.pop()[0]
                self.self_s[self.scope + name] += spent - children
                if self._stack:
                    self._stack[-1][0] += spent

        return timed

    def scoped(self, scope: str, fn: Callable) -> Callable:
        """``fn`` with every part charged during its calls named ``scope`` + part."""

        def call(*args, **kwargs):
            outer, self.scope = self.scope, scope
            try:
                return fn(*args, **kwargs)
            finally:
                self.scope = outer

        return call


def instrument(llm, timers: Timers) -> None:
    """Wrap the parts of a decode step named in the module docstring (module attributes and the ops object)."""
    import torch

    from rusteeze.kernels import numba_q8_matmul as q8
    from rusteeze.kernels import numba_quant_matmul as nq

    for name in ("dequantize_int4_t", "dequantize_int8_t"):
        setattr(nq, name, timers.wrap(name.replace("_t", "").replace("ize_", "ize "), getattr(nq, name)))
    for mod, names in ((q8, ("int4_matmul_q8", "int8_matmul_q8")), (nq, ("int4_matmul", "int8_matmul"))):
        for name in names:
            setattr(mod, name, timers.wrap("integer kernels", getattr(mod, name)))
    for name in ("bfloat16", "float", "to"):
        setattr(torch.Tensor, name, timers.wrap("casts", getattr(torch.Tensor, name)))
    torch.Tensor.__matmul__ = timers.wrap("GEMM", torch.Tensor.__matmul__)
    torch.mm = timers.wrap("GEMM", torch.mm)
    model = llm.engine.loaded.model
    ops = model.ops
    parts = {
        "paged_attention": "attention",
        "rotary_store_kv": "rotary+store",
        "rms_norm": "norms",
        "fused_add_rms_norm": "norms",
        "silu_and_mul": "silu_and_mul",
    }
    for op, part in parts.items():
        object.__setattr__(ops, op, timers.wrap(part, getattr(ops, op)))  # Ops is frozen
    model.compute_logits = timers.scoped("logits: ", timers.wrap("rest", model.compute_logits))
    runner = llm.engine.runner
    runner._sample = timers.wrap("sampler", runner._sample)
    runner.prepare = timers.wrap("prepare", runner.prepare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seqs", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    import numba
    import torch

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    from throughput import default_model, make_prompts

    from rusteeze import LLM, SamplingParams

    llm = LLM(
        default_model(),
        dtype=args.dtype,
        max_model_len=2048,
        max_num_seqs=args.seqs,
        kv_cache_memory="2GiB",
        enable_prefix_caching=False,
    )
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    prompts = make_prompts(args.seqs, args.input_len)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    for p in prompts:
        engine.add_request(p, params)
    timers = Timers()
    instrument(llm, timers)
    step = timers.wrap("other", engine.step)
    sched = engine.scheduler
    start, prefill_steps = time.perf_counter(), 0
    while sched.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in sched.running):
        step()
        prefill_steps += 1
    prefill = dict(timers.self_s)
    prefill_s = time.perf_counter() - start
    for _ in range(2):  # warm-up decode steps (first allocations)
        step()
    best: dict[str, float] | None = None
    for _ in range(args.repeats):
        timers.self_s.clear()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        total = (time.perf_counter() - start) / args.steps
        if best is None or total < best["step"]:
            best = {k: v / args.steps for k, v in timers.self_s.items()}
            best["step"] = total
    assert best is not None
    print(cpu_line())
    print(f"decode step of {args.seqs} sequences, {args.threads} thread(s), dtype {args.dtype}: ms per step")
    report(best, best.pop("step"))
    print(f"  -> {args.seqs / total:.1f} out tok/s")
    tokens = args.seqs * args.input_len
    print(f"prefill of {args.seqs} x {args.input_len} tokens in {prefill_steps} steps: ms in all")
    report(prefill, prefill_s)
    print(f"  -> {tokens / prefill_s:.0f} prompt tok/s")


def report(parts: dict[str, float], total: float) -> None:
    """One line per part (ms, share of ``total`` seconds), largest first, then the total."""
    for name, s in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<24} {s * 1e3:9.2f}  {100 * s / total:5.1f} %")
    print(f"  {'total':<24} {total * 1e3:9.2f}")


if __name__ == "__main__":
    main()
