"""Offline benchmark: the engine in this process, random token prompts, every request submitted at once.

A run has three parts, as llama-bench separates prompt processing from generation:

1. a warm-up request (kernels compile, caches fill; not measured);
2. the prefill run: ``num_prompts`` fresh random prompts with one output token each,
   giving ``prefill_throughput`` (prompt tokens per second of that run);
3. the timed run: ``num_prompts`` random prompts of ``input_len`` tokens, each generating
   exactly ``output_len`` tokens (``ignore_eos``), all submitted at t=0 so the scheduler
   batches as many as ``max_num_seqs`` and the KV cache allow; TTFT therefore includes
   the time a request waits for a place in the batch, as in ``vllm bench throughput``.

The prompts never share a prefix (random ids), so prefix caching does not flatter the figures.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rusteeze.bench.metrics import BenchResult, RequestRecord
from rusteeze.errors import ConfigError
from rusteeze.sampling import SamplingParams

# on_progress(phase, done, total): phase is "prefill" or "generate".
Progress = Callable[[str, int, int], None]


def random_prompts(engine: Any, num_prompts: int, length: int, seed: int) -> list[list[int]]:
    """``num_prompts`` lists of ``length`` token ids drawn uniformly from the vocabulary, specials excluded."""
    vocab = min(engine.model_config.vocab_size, engine.tokenizer.backend.get_vocab_size())
    allowed = np.setdiff1d(np.arange(vocab), np.fromiter(engine.tokenizer.special_token_ids(), dtype=np.int64))
    rng = np.random.default_rng(seed)
    return [rng.choice(allowed, size=length).tolist() for _ in range(num_prompts)]


def run_offline(
    engine: Any,
    model_name: str,
    num_prompts: int,
    input_len: int,
    output_len: int,
    seed: int = 0,
    on_progress: Progress | None = None,
) -> BenchResult:
    """Benchmark ``engine`` (which nobody else steps) on random prompts.

    Args:
        engine: a ``rusteeze.engine.engine.Engine``.
        model_name: the name to report.
        num_prompts: requests in the prefill run and in the timed run.
        input_len: prompt tokens per request.
        output_len: tokens each request generates.
        seed: seed of the prompts and of sampling (temperature 1, no truncation).
        on_progress: called after each finished request.

    Raises:
        ConfigError: a length or count below 1, or ``input_len + output_len`` beyond ``max_model_len``.
    """
    check_sizes(num_prompts, input_len, output_len)
    if input_len + output_len > engine.max_model_len:
        raise ConfigError(
            f"--input-len {input_len} + --output-len {output_len} exceeds the context of {engine.max_model_len} "
            "tokens (max_model_len)"
        )
    report = on_progress or (lambda phase, done, total: None)
    sampling = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0, ignore_eos=True, seed=None)
    warm = SamplingParams(max_tokens=min(4, output_len), **sampling)
    _run(engine, random_prompts(engine, 1, min(16, input_len), seed + 2), warm, lambda done: None)
    prefill_prompts = random_prompts(engine, num_prompts, input_len, seed + 1)
    _, prefill_seconds = _run(
        engine, prefill_prompts, SamplingParams(max_tokens=1, **sampling), lambda d: report("prefill", d, num_prompts)
    )
    spec_before = _spec_counters(engine)
    records, duration = _run(
        engine,
        random_prompts(engine, num_prompts, input_len, seed),
        SamplingParams(max_tokens=output_len, **sampling),
        lambda d: report("generate", d, num_prompts),
    )
    peak, kind = peak_memory(engine.loaded.device)
    return BenchResult(
        mode="offline",
        model=model_name,
        settings={"num_prompts": num_prompts, "input_len": input_len, "output_len": output_len, "seed": seed},
        records=records,
        duration=duration,
        prefill_tokens=num_prompts * input_len,
        prefill_seconds=prefill_seconds,
        peak_memory_bytes=peak,
        memory_kind=kind,
        speculation=_spec_delta(spec_before, _spec_counters(engine)),
    )


def _spec_counters(engine: Any) -> dict[str, float] | None:
    """The engine's speculative-decoding counters (None when speculation is off)."""
    stats = engine.stats()
    keys = ("spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens", "spec_decode_num_verify_steps")
    return {k: stats[k] for k in keys} if keys[0] in stats else None


def _spec_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    """The counters of the timed run alone."""
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in after}


def check_sizes(num_prompts: int, input_len: int, output_len: int) -> None:
    """Raise ConfigError (naming the flag) for a count or length below 1."""
    for flag, value in (("--num-prompts", num_prompts), ("--input-len", input_len), ("--output-len", output_len)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be at least 1")


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory so far: allocated GPU memory on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "GPU allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process RSS"


def _run(
    engine: Any, prompts: list[list[int]], params: SamplingParams, on_done: Callable[[int], None]
) -> tuple[list[RequestRecord], float]:
    """Submit every prompt, step until all finish; returns the records and the wall time."""
    start = time.perf_counter()
    records: dict[str, RequestRecord] = {}
    for ids in prompts:
        records[engine.add_request(ids, params)] = RequestRecord(prompt_tokens=len(ids), start=start)
    finished = 0
    try:
        while finished < len(records) and engine.has_unfinished_requests():
            outputs = engine.step()
            now = time.perf_counter()
            for out in outputs:
                record = records.get(out.request_id)
                if record is None:
                    continue
                record.token_times += [now] * len(out.outputs[0].delta_token_ids)
                if out.finished:
                    record.output_tokens = out.usage.completion_tokens
                    finished += 1
                    on_done(finished)
    finally:  # Ctrl-C: leave the engine empty
        for rid in records:
            engine.abort(rid)
    return list(records.values()), time.perf_counter() - start
