"""The differential engine fuzzer's parts: random workloads, a driver, and the oracle.

A workload is a few passes of requests (token-id prompts, greedy, ``ignore_eos``)
run through one engine with prefix caching on, a small KV cache (preemption), a
small ``max_num_batched_tokens`` (chunked prefill mixed with decode), staggered
arrivals and aborts. The oracle is the same prompt run alone, with caching off
and the whole prompt in one step, on the same weights (and, for quantized
formats, on the same weights dequantized to float32). Tokens must be equal; where
they differ the top-2 logprob margin of the reference at the divergence decides:
a margin above ``MARGIN`` is a bug, a smaller one a near-tie (accepted).

``MARGIN`` holds where every path computes in float32 (``dtype="float32"``).
The default ``dtype="auto"`` is not batch-invariant on CPU: steps of up to 8
tokens run the decode kernels on int16-rounded activations and bigger ones bf16
GEMMs where the CPU has them, so a token's logits
depend on how many tokens shared its step; there ``REDUCED_MARGIN`` separates
rounding from bugs.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.engine.kv_cache import bytes_per_block
from rusteeze.sampling import SamplingParams

MARGIN = 1e-3  # top-2 logprob gap above which a different token is a bug, not a near-tie
REDUCED_MARGIN = 0.25  # the same under dtype "auto" (int16 decode activations / bf16 GEMMs)
MAX_MODEL_LEN = 512  # the tiny models' max_position_embeddings
MAX_PROMPT = 420


class Req:
    """One request of a pass: prompt, limits, when it arrives and when it is aborted (engine steps).

    A plain class, not a dataclass: hypothesis prints a falsifying example with ``repr``.
    """

    def __init__(
        self, prompt: list[int], max_tokens: int, n: int = 1, arrive: int = 0, abort: int | None = None
    ) -> None:
        self.prompt, self.max_tokens, self.n, self.arrive, self.abort = prompt, max_tokens, n, arrive, abort

    def __repr__(self) -> str:  # short: hypothesis prints the falsifying example
        head = f"{self.prompt[:4]}..." if len(self.prompt) > 4 else str(self.prompt)
        limits = f"max_tokens={self.max_tokens}, n={self.n}, arrive={self.arrive}, abort={self.abort}"
        return f"Req(len={len(self.prompt)}, {head}, {limits})"


class Workload:
    """Engine settings and the passes (each runs to completion before the next; later ones hit the cache)."""

    def __init__(
        self,
        block_size: int,
        kv_tokens: int,
        max_num_batched_tokens: int,
        max_num_seqs: int,
        passes: list[list[Req]],
        speculate: int = 0,
    ) -> None:
        self.block_size, self.kv_tokens = block_size, kv_tokens
        self.max_num_batched_tokens, self.max_num_seqs = max_num_batched_tokens, max_num_seqs
        self.passes = passes
        self.speculate = speculate  # n-gram speculation's k (drafting every step it finds one); 0: off

    def __repr__(self) -> str:
        return (
            f"Workload(block_size={self.block_size}, kv_tokens={self.kv_tokens}, "
            f"max_num_batched_tokens={self.max_num_batched_tokens}, max_num_seqs={self.max_num_seqs}, "
            f"speculate={self.speculate}, passes={self.passes})"
        )


def _tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(3, vocab) for _ in range(n)]


@st.composite
def workloads(
    draw, vocab: int, max_requests: int = 5, max_total: int = 1100, long_first: bool = False, max_new: int = 8
) -> Workload:
    """A random Workload over token ids in [3, vocab) (0-2 are specials in the tiny tokenizers).

    ``long_first``: the first prompt has 260+ tokens, so its prefill crosses every
    row-count threshold the kernels switch on (64 for float linear, 256 for int4).
    A third of the workloads are under memory pressure: the smallest KV cache the
    engine accepts, chunked prefill, long prompts and long decodes, so sequences
    admitted a chunk at a time outgrow the cache and are preempted.
    """
    bs = draw(st.sampled_from([4, 8, 16]))
    pressure = draw(st.integers(0, 2)) == 2  # not the minimal choice: shrunk examples stay small
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # Shared prefixes: lengths at, just before and just after a block boundary, or anywhere.
    boundary = st.builds(lambda k, d: max(1, k * bs + d), st.integers(1, 200 // bs), st.sampled_from([-1, 0, 1]))
    prefixes = [_tokens(rng, n, vocab) for n in draw(st.lists(st.one_of(boundary, st.integers(1, 300)), max_size=2))]
    sizes = [st.integers(1, 24), st.integers(25, 120), st.integers(200, MAX_PROMPT)]
    if pressure:
        sizes = [st.integers(150, MAX_PROMPT)]
    # Mostly short decodes; sometimes a long one that holds its blocks while others prefill.
    new_tokens = [st.integers(1, max_new), st.integers(1, max_new), st.integers(16, 5 * max_new)]
    reqs: list[Req] = []
    total = 0
    for k in range(draw(st.integers(2 if pressure else 1, max_requests))):
        prefix = draw(st.sampled_from([[], *prefixes]))
        suffix = draw(st.one_of(st.just(0), *sizes)) if prefix else draw(st.one_of(*sizes))
        if k == 0 and long_first:
            suffix = max(suffix, 260 - len(prefix) + bs)
        length = min(len(prefix) + suffix, MAX_PROMPT)
        if draw(st.booleans()):  # an exact multiple of block_size
            length = max(bs, length // bs * bs)
        if reqs and draw(st.integers(0, 4)) == 0:
            prompt = list(draw(st.sampled_from(reqs)).prompt)  # the same prompt again: fully cached
        else:
            prompt = (prefix + _tokens(rng, length, vocab))[:length]
        if total + len(prompt) > max_total and reqs:
            break
        total += len(prompt)
        reqs.append(
            Req(
                prompt,
                max_tokens=draw(st.integers(16, 5 * max_new) if pressure else st.one_of(*new_tokens)),
                n=draw(st.sampled_from([1, 1, 1, 2, 3])),
                arrive=draw(st.sampled_from([0, 0, 0, 1, 3, 8])),
                abort=draw(st.one_of(st.none(), st.none(), st.none(), st.integers(0, 12))),
            )
        )
    passes = [reqs]
    if draw(st.booleans()):  # a second pass over some of the prompts: prefix-cache hits
        again = draw(st.lists(st.sampled_from(reqs), min_size=1, max_size=len(reqs)))
        passes.append(
            [Req(list(r.prompt), draw(st.integers(1, max_new)), r.n, draw(st.sampled_from([0, 1]))) for r in again]
        )
    speculate = draw(st.sampled_from([0, 0, 3]))
    if pressure:
        return Workload(bs, MAX_MODEL_LEN, draw(st.sampled_from([16, 64])), 64, passes, speculate)
    return Workload(
        speculate=speculate,
        block_size=bs,
        # From one max_model_len sequence (the engine's minimum) to plenty.
        kv_tokens=draw(st.sampled_from([MAX_MODEL_LEN, MAX_MODEL_LEN + 64, 1024, 4096])),
        max_num_batched_tokens=draw(st.sampled_from([7, 16, 64, 300, 2048])),
        max_num_seqs=draw(st.sampled_from([2, 4, 64])),
        passes=passes,
    )


def make_engine(loaded, *, block_size: int, kv_tokens: int, prefix_caching: bool, **kw) -> Engine:
    """An Engine over an already loaded model (torch kernels, CPU) with a KV cache of ``kv_tokens`` tokens."""
    blocks = -(-kv_tokens // block_size)
    config = EngineConfig(
        model=str(loaded.path),
        device="cpu",
        kernel_backend="torch",
        max_model_len=MAX_MODEL_LEN,
        block_size=block_size,
        kv_cache_memory=blocks * bytes_per_block(loaded.config, block_size, loaded.dtype),
        enable_prefix_caching=prefix_caching,
        **kw,
    )
    engine = Engine(config, loaded=loaded)
    assert engine.runner.poison, "the fuzzer runs with RUSTEEZE_DEBUG_POISON_KV=1 (tests/conftest.py)"
    return engine


def _params(max_tokens: int, n: int = 1, logprobs: int | None = None) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, n=n, ignore_eos=True, logprobs=logprobs)


def assert_idle(engine: Engine) -> None:
    """No request left, every block back on the free list."""
    bm = engine.block_manager
    assert not engine.has_unfinished_requests() and not engine.scheduler.has_unfinished()
    assert bm.num_free_blocks == bm.num_blocks, f"{bm.num_blocks - bm.num_free_blocks} KV blocks leaked"
    assert all(r == 0 for r in bm.ref_counts)


def run_workload(engine: Engine, wl: Workload, seen: set[str] | None = None) -> list[tuple[Req, list[list[int]], bool]]:
    """Run every pass; returns (request, tokens of each completion, aborted) per request.

    ``seen`` collects what the run exercised (for hypothesis' statistics): "preemption",
    "prefix hit", "chunked prefill", "prefill and decode mixed", "256+ rows", "abort".
    """
    seen = set() if seen is None else seen
    run = engine.runner.run

    def observe(out):
        if sum(s.num_new_tokens for s in out.scheduled) >= 256:
            seen.add("256+ rows")
        if any(not s.samples for s in out.scheduled):
            seen.add("chunked prefill")
        if len({s.num_new_tokens > 1 for s in out.scheduled}) == 2:
            seen.add("prefill and decode mixed")
        return run(out)

    engine.runner.run = observe  # an instance attribute: this engine only
    results = []
    for p, reqs in enumerate(wl.passes):
        ids = {f"p{p}-r{i}": r for i, r in enumerate(reqs)}
        pending = sorted(ids, key=lambda rid: ids[rid].arrive)
        final: dict[str, list[list[int]]] = {}
        aborted: set[str] = set()
        step = 0
        while pending or engine.has_unfinished_requests():
            while pending and ids[pending[0]].arrive <= step:
                rid = pending.pop(0)
                engine.add_request(ids[rid].prompt, _params(ids[rid].max_tokens, ids[rid].n), request_id=rid)
            for rid, r in ids.items():
                if r.abort == step and rid not in final and rid not in pending:
                    out = engine.abort(rid)
                    if out is not None:
                        final[rid] = [c.token_ids for c in out.outputs]
                        aborted.add(rid)
                        seen.add("abort")
            for out in engine.step():
                if out.finished:
                    final[out.request_id] = [list(c.token_ids) for c in out.outputs]
                    if out.usage.cached_tokens:
                        seen.add("prefix hit")
            step += 1
            assert step < 20_000, "engine made no progress"
        assert_idle(engine)
        results += [(r, final[rid], rid in aborted) for rid, r in ids.items()]
    if engine.scheduler.num_preemptions:
        seen.add("preemption")
    return results


class Alone:
    """Greedy tokens and top-2 margins of prompts run one at a time, caching off, whole prompt in one step."""

    def __init__(self, loaded, min_tokens: int = 8) -> None:
        self.min_tokens = min_tokens  # computed at least, for the memo
        self.engine = make_engine(
            loaded, block_size=16, kv_tokens=MAX_MODEL_LEN, prefix_caching=False, max_num_batched_tokens=MAX_MODEL_LEN
        )
        self.memo: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}

    def __call__(self, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        key = tuple(prompt)
        if key not in self.memo or len(self.memo[key][0]) < max_tokens:
            rid = self.engine.add_request(prompt, _params(max(max_tokens, self.min_tokens), logprobs=2))
            final = None
            while self.engine.has_unfinished_requests():
                for o in self.engine.step():
                    if o.request_id == rid and o.finished:
                        final = o
            assert_idle(self.engine)
            c = final.outputs[0]
            margins = []
            for entry in c.logprobs:
                top = sorted((lp.logprob for lp in entry.values()), reverse=True)
                margins.append(top[0] - top[1] if len(top) > 1 else float("inf"))
            self.memo[key] = (list(c.token_ids), margins)
        tokens, margins = self.memo[key]
        return tokens[:max_tokens], margins[:max_tokens]


def divergence(got: list[int], want: list[int], margins: list[float]) -> tuple[int, float] | None:
    """First index where ``got`` leaves ``want`` and the reference's top-2 margin there; None if a prefix."""
    for j, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return j, margins[j]
    return None


def check_against(
    what: str,
    prompt: list[int],
    got: list[int],
    want: list[int],
    margins: list[float],
    complete: bool,
    tolerance: float = MARGIN,
) -> str | None:
    """A failure message when ``got`` is not ``want`` (near-ties excepted), else None."""
    d = divergence(got, want, margins)
    if d is not None:
        j, margin = d
        if margin <= tolerance:
            return None  # a near-tie: the rest depends on it
        return (
            f"{what}: prompt of {len(prompt)} tokens {prompt[:6]}...: token {j} is {got[j]}, "
            f"the reference says {want[j]} with a top-2 logprob margin of {margin:.4g} (> {tolerance}); "
            f"got {got}, want {want}"
        )
    if complete and len(got) != len(want):
        return f"{what}: prompt of {len(prompt)} tokens: {len(got)} tokens, want {len(want)}: {got} vs {want}"
    return None
