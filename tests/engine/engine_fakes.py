"""A fake model for scheduler tests: its "KV cache" stores token ids.

Each step writes the token id of every computed position into the slot the
block table gives it, then, for each sequence that samples, reads its whole
visible context back through the block table. If blocks were shared, freed or
reused wrongly the context read back differs from the sequence's tokens and
the test fails; otherwise the next token is a fixed function of the context,
so a preempted-and-recomputed run must give the same tokens as an
uninterrupted one.
"""

from __future__ import annotations

from rusteeze.engine.block_manager import NULL_BLOCK, BlockManager
from rusteeze.engine.scheduler import Scheduler, SchedulerOutput
from rusteeze.engine.sequence import Sequence
from rusteeze.sampling import SamplingParams


def next_token(context: list[int]) -> int:
    """A deterministic 'greedy model': depends on every token of the context."""
    h = 0
    for t in context:
        h = (h * 31 + t) % 1_000_003
    return 3 + h % 97


class FakeRunner:
    """Runs scheduled steps against a token-id cache of ``num_blocks * block_size`` slots."""

    def __init__(self, bm: BlockManager) -> None:
        self.bm = bm
        self.cache = [-1] * (bm.num_blocks * bm.block_size)
        self.steps: list[list[tuple[int, int, int]]] = []  # (seq_id, start, num_new) per step

    def run(self, out: SchedulerOutput) -> list[int | None]:
        bs, window = self.bm.block_size, self.bm.sliding_window
        self.steps.append([(s.seq.seq_id, s.start, s.num_new_tokens) for s in out.scheduled])
        for s in out.scheduled:
            table = s.seq.block_table
            for pos in range(s.start, s.start + s.num_new_tokens):
                block = table[pos // bs]
                assert block != NULL_BLOCK, "wrote into a released block"
                self.cache[block * bs + pos % bs] = s.seq.token_ids[pos]
        sampled: list[int | None] = []
        for s in out.scheduled:
            if not s.samples:
                sampled.append(None)
                continue
            seq, last = s.seq, s.seq.num_tokens - 1
            first = 0 if window is None else max(0, last - window + 1)
            ctx = [self.cache[seq.block_table[p // bs] * bs + p % bs] for p in range(first, last + 1)]
            assert ctx == seq.token_ids[first:], f"KV cache corrupted for {seq}"
            sampled.append(next_token(seq.token_ids))
        return sampled


def make_seq(prompt: list[int], max_tokens: int = 4, request_id: str = "r", **kw) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, **kw).resolve(None)
    return Sequence(request_id, prompt, params)


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    """What an uninterrupted greedy run of the fake model produces."""
    toks = list(prompt)
    for _ in range(max_tokens):
        toks.append(next_token(toks))
    return toks[len(prompt) :]


def run_all(sched: Scheduler, runner: FakeRunner, max_steps: int = 10_000) -> int:
    """Step until every sequence finishes; returns the number of steps."""
    steps = 0
    while sched.has_unfinished():
        out = sched.schedule()
        assert not out.is_empty, "scheduler stalled with work left (deadlock)"
        sched.update(out, runner.run(out))
        steps += 1
        assert steps < max_steps
    return steps


def assert_all_free(bm: BlockManager) -> None:
    """The no-leak invariant: every block is back on the free list."""
    assert bm.num_free_blocks == bm.num_blocks
    assert all(r == 0 for r in bm.ref_counts)
