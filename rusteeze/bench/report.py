"""The benchmark tables, in the spirit of llama-bench and vllm bench: throughput, then latency percentiles."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from rusteeze.bench.metrics import LATENCIES, LATENCY_NAMES, BenchResult
from rusteeze.loader.model_info import human_size


def render(result: BenchResult) -> Group:
    """Two rich tables: the throughput figures, and TTFT / TPOT / ITL / E2E latency mean, median and p99."""
    f = result.figures()
    s = result.settings
    title = f"rusteeze bench · {result.mode} · {result.model}"
    caption = f"{s['num_prompts']} prompts × {s['input_len']} in / {s['output_len']} out, seed {s['seed']}"
    if result.mode == "online":
        limit = s.get("concurrency") or "no limit"
        rate = s.get("request_rate") or "inf"
        caption += f" · {s['url']} · concurrency {limit}, request rate {rate}/s"
    throughput = Table(show_header=True)
    throughput.add_column("Metric")
    throughput.add_column("Value", justify="right")
    rows = [
        ("Requests completed / failed", f"{f['completed']} / {f['failed']}"),
        ("Duration", f"{f['duration']:.2f} s"),
        ("Input / output tokens", f"{f['total_input_tokens']} / {f['total_output_tokens']}"),
        ("Request throughput", _rate(f["request_throughput"], "req/s", 2)),
        ("Output token throughput", _rate(f["output_throughput"], "tok/s")),
        ("Total token throughput", _rate(f["total_token_throughput"], "tok/s")),
        ("Prefill throughput", _rate(f["prefill_throughput"], "tok/s")),
        (f"Peak memory ({result.memory_kind or 'server side'})", _memory(f["peak_memory_bytes"])),
    ]
    if "spec_decode_num_draft_tokens" in f:
        rate, length = f["spec_decode_acceptance_rate"], f["spec_decode_mean_accepted_length"]
        rows += [
            ("Draft tokens (speculative)", f"{f['spec_decode_num_draft_tokens']:,.0f}"),
            ("Draft acceptance rate", "n/a" if rate is None else f"{rate:.1%}"),
            ("Mean accepted length", "n/a" if length is None else f"{length:.2f} tok/step"),
        ]
    for name, value in rows:
        throughput.add_row(name, value)
    latency = Table(show_header=True)
    latency.add_column("Latency (ms)")
    for stat in ("Mean", "Median", "P99"):
        latency.add_column(stat, justify="right")
    for name in LATENCIES:
        latency.add_row(LATENCY_NAMES[name], *(_ms(f[f"{stat}_{name}_ms"]) for stat in ("mean", "median", "p99")))
    # Title and workload as lines of their own: a table's title wraps at the table's width.
    return Group(Text(title, style="bold"), Text(caption, style="dim"), throughput, latency)


def _rate(value: Any, unit: str, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f} {unit}"


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def _memory(value: Any) -> str:
    return "n/a" if value is None else human_size(value)
