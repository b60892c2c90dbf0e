"""Prometheus metrics of the server (``GET /metrics``), all named ``rusteeze:...``.

Gauges and the preemption counter are read from the engine when scraped
(:meth:`Engine.stats`); token counters, prefix-cache counters and latency
histograms are recorded by :class:`RequestTimer` as each request's outputs
arrive. Each app has its own registry, so several apps (tests) never clash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rusteeze.engine.outputs import RequestOutput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0)

StatsFn = Callable[[], dict[str, float]]


class _EngineCollector(Collector):
    """Reads the engine's queue lengths, KV usage, preemptions and speculative-decoding counters at scrape time.

    Acceptance rate = accepted / draft tokens; mean accepted length = 1 + accepted / verify steps.
    """

    def __init__(self) -> None:
        self.stats: StatsFn | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.stats() if self.stats is not None else {}
        yield GaugeMetricFamily(
            "rusteeze:num_requests_running", "Sequences in the running batch.", value=s.get("num_running", 0)
        )
        yield GaugeMetricFamily(
            "rusteeze:num_requests_waiting", "Sequences waiting to be scheduled.", value=s.get("num_waiting", 0)
        )
        yield GaugeMetricFamily(
            "rusteeze:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (0-1).",
            value=s.get("kv_cache_usage", 0),
        )
        yield CounterMetricFamily(
            "rusteeze:num_preemptions", "Sequences preempted for lack of KV blocks.", value=s.get("num_preemptions", 0)
        )
        if "spec_decode_num_draft_tokens" in s:  # speculative decoding is on
            for key, what in (
                ("num_draft_tokens", "Draft tokens proposed and verified."),
                ("num_accepted_tokens", "Draft tokens accepted."),
                ("num_verify_steps", "Sequence-steps that verified drafts."),
            ):
                yield CounterMetricFamily(f"rusteeze:spec_decode_{key}", what, value=s[f"spec_decode_{key}"])


class ServerMetrics:
    """The server's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self._engine = _EngineCollector()
        r.register(self._engine)
        self.prompt_tokens = Counter("rusteeze:prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("rusteeze:generation_tokens", "Tokens generated.", registry=r)
        self.prefix_cache_queries = Counter(
            "rusteeze:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", registry=r
        )
        self.prefix_cache_hits = Counter(
            "rusteeze:prefix_cache_hits", "Prompt tokens found in the prefix cache.", registry=r
        )
        self.request_success = Counter(
            "rusteeze:request_success", "Finished requests by finish reason.", ["finished_reason"], registry=r
        )
        self.ttft = Histogram(
            "rusteeze:time_to_first_token_seconds",
            "Request arrival to first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "rusteeze:inter_token_latency_seconds", "Time between token outputs.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "rusteeze:e2e_request_latency_seconds", "Request arrival to finish.", buckets=_E2E_BUCKETS, registry=r
        )

    def attach(self, stats: StatsFn) -> None:
        """Read the engine gauges from ``stats`` (``Engine.stats``) from now on."""
        self._engine.stats = stats

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)

    def timer(self) -> RequestTimer:
        """A timer for one engine request, started now."""
        return RequestTimer(self)


class RequestTimer:
    """Records one engine request's latencies and token counts as its outputs arrive."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.got_token = False
        self.done = False

    def observe(self, out: RequestOutput) -> None:
        """Account for one output of the request (call for every output, in order)."""
        if self.done:
            return
        now = time.perf_counter()
        if any(c.delta_token_ids for c in out.outputs):
            (self.metrics.itl if self.got_token else self.metrics.ttft).observe(now - self.last)
            self.got_token, self.last = True, now
        if out.finished:
            self.finish(out)

    def finish(self, out: RequestOutput | None) -> None:
        """Count the request's tokens and end-to-end latency (once; ``out`` None: it failed early)."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.e2e.observe(time.perf_counter() - self.start)
        if out is None:
            m.request_success.labels("error").inc()
            return
        u = out.usage
        m.prompt_tokens.inc(u.prompt_tokens)
        m.generation_tokens.inc(u.completion_tokens)
        m.prefix_cache_queries.inc(u.prompt_tokens)
        m.prefix_cache_hits.inc(u.cached_tokens)
        reasons = {c.finish_reason for c in out.outputs}
        m.request_success.labels(
            "abort" if "abort" in reasons or not out.finished else out.outputs[0].finish_reason
        ).inc()
