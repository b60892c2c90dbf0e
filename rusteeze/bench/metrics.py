"""What a benchmark measures: per-request timings, and the figures summarised from them.

The figure names follow `vllm bench` (``request_throughput``, ``mean_ttft_ms``,
``p99_itl_ms``, ...) so results can be compared side by side; rusteeze adds
``prefill_throughput`` and ``peak_memory_bytes``.

Definitions (per request; times from ``time.perf_counter``):

- TTFT: from sending (online) or submitting (offline) the request to its first token;
- ITL: the gaps between consecutive tokens (streamed chunks, online);
- TPOT: (latency - TTFT) / (output tokens - 1), requests with one token left out;
- E2EL: from sending to the last token.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rusteeze.file_modes import file_mode

LATENCIES = ("ttft", "tpot", "itl", "e2el")
LATENCY_NAMES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E latency"}


@dataclass
class RequestRecord:
    """The timeline of one request.

    Attributes:
        prompt_tokens: tokens of its prompt.
        start: when it was sent or submitted.
        token_times: when each output token (or streamed chunk) arrived.
        output_tokens: tokens generated (the server's count online, when it gives one).
        error: why it failed, or None.
    """

    prompt_tokens: int
    start: float
    token_times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the request succeeded with at least one token."""
        return self.error is None and bool(self.token_times)

    @property
    def ttft(self) -> float:
        """Seconds to the first token."""
        return self.token_times[0] - self.start

    @property
    def e2el(self) -> float:
        """Seconds to the last token."""
        return self.token_times[-1] - self.start

    @property
    def itls(self) -> list[float]:
        """Seconds between consecutive tokens."""
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]

    @property
    def tpot(self) -> float | None:
        """Seconds per output token after the first (None with fewer than two tokens)."""
        if self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)


@dataclass
class BenchResult:
    """A finished benchmark run.

    Attributes:
        mode: "offline" (engine in this process) or "online" (an HTTP server).
        model: the model's name.
        settings: what was asked (num_prompts, input_len, output_len, seed, url, ...).
        records: one per request of the timed run.
        duration: seconds of the timed run.
        prefill_tokens: prompt tokens of the prefill run (same prompts count, one output token each).
        prefill_seconds: seconds of the prefill run.
        peak_memory_bytes: peak memory, when known (offline only).
        memory_kind: what ``peak_memory_bytes`` measures ("GPU allocated" or "process RSS").
    """

    mode: str
    model: str
    settings: dict[str, Any]
    records: list[RequestRecord]
    duration: float
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    speculation: dict[str, float] | None = None  # the engine's spec_decode_* counters over the run (offline)

    def figures(self) -> dict[str, Any]:
        """Every figure as a flat dict (vllm bench names; times in ms, rates per second)."""
        ok = [r for r in self.records if r.ok]
        inputs = sum(r.prompt_tokens for r in ok)
        outputs = sum(r.output_tokens for r in ok)

        def per_second(amount: float) -> float | None:
            return amount / self.duration if self.duration > 0 else None

        figures: dict[str, Any] = {
            "completed": len(ok),
            "failed": len(self.records) - len(ok),
            "duration": self.duration,
            "total_input_tokens": inputs,
            "total_output_tokens": outputs,
            "request_throughput": per_second(len(ok)),
            "output_throughput": per_second(outputs),
            "total_token_throughput": per_second(inputs + outputs),
            "prefill_throughput": self.prefill_tokens / self.prefill_seconds if self.prefill_seconds > 0 else None,
            "peak_memory_bytes": self.peak_memory_bytes,
        }
        if self.speculation is not None:
            drafted = self.speculation["spec_decode_num_draft_tokens"]
            accepted = self.speculation["spec_decode_num_accepted_tokens"]
            steps = self.speculation["spec_decode_num_verify_steps"]
            figures["spec_decode_num_draft_tokens"] = drafted
            figures["spec_decode_acceptance_rate"] = accepted / drafted if drafted else None
            figures["spec_decode_mean_accepted_length"] = 1 + accepted / steps if steps else None
        samples = {
            "ttft": [r.ttft for r in ok],
            "tpot": [t for r in ok if (t := r.tpot) is not None],
            "itl": [gap for r in ok for gap in r.itls],
            "e2el": [r.e2el for r in ok],
        }
        for name, values in samples.items():
            stats = summarize_ms(values)
            for stat in ("mean", "median", "p99"):
                figures[f"{stat}_{name}_ms"] = stats[stat]
        return figures

    def to_json(self) -> dict[str, Any]:
        """What ``--json`` writes: the mode, model and settings, and every figure."""
        from rusteeze import __version__

        return {
            "rusteeze_version": __version__,
            "mode": self.mode,
            "model": self.model,
            "settings": self.settings,
            "memory_kind": self.memory_kind or None,
            **self.figures(),
        }


def summarize_ms(seconds: list[float]) -> dict[str, float | None]:
    """Mean, median and 99th percentile (linear interpolation, as numpy and vllm) in milliseconds."""
    if not seconds:
        return {"mean": None, "median": None, "p99": None}
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"mean": float(ms.mean()), "median": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


def write_json(path: str | Path, result: BenchResult) -> None:
    """Write ``result.to_json()`` to ``path`` atomically (a temp file in the same folder, then a rename).

    Raises:
        OSError: the folder is missing or not writable, or the disk is full.
    """
    path = Path(path)
    text = json.dumps(result.to_json(), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp made it 0600; the umask decides, as for any new file
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
