"""Scheduler: chunked prefill, mixing, limits, FCFS, preemption, prefix hits, n > 1, no leaks."""

import random

import pytest
from engine_fakes import FakeRunner, assert_all_free, make_seq, reference_output, run_all

from rusteeze.engine.block_manager import BlockManager
from rusteeze.engine.scheduler import Scheduler
from rusteeze.engine.sequence import Sequence, SequenceStatus
from rusteeze.sampling import SamplingParams


def build(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=64, **bm_kw):
    bm = BlockManager(num_blocks, block_size, **bm_kw)
    return Scheduler(bm, max_num_seqs, max_num_batched_tokens), bm, FakeRunner(bm)


def test_long_prompt_is_chunked_then_decoded():
    sched, bm, runner = build(max_num_batched_tokens=8)
    seq = make_seq(list(range(20)), max_tokens=3)
    sched.add(seq)
    run_all(sched, runner)
    assert [step[0][1:] for step in runner.steps] == [(0, 8), (8, 8), (16, 4), (20, 1), (21, 1)]
    assert seq.output_token_ids == reference_output(list(range(20)), 3)
    assert seq.finish_reason == "length"
    assert_all_free(bm)


def test_decodes_and_a_chunked_prefill_share_a_step():
    sched, bm, runner = build(max_num_batched_tokens=6)
    a = make_seq([1, 2, 3], max_tokens=5)
    sched.add(a)
    sched.update(out := sched.schedule(), runner.run(out))  # a: prompt, samples
    b = make_seq(list(range(10)), max_tokens=2)
    sched.add(b)
    out = sched.schedule()
    assert [(s.seq, s.start, s.num_new_tokens) for s in out.scheduled] == [(a, 3, 1), (b, 0, 5)]
    assert [s.samples for s in out.scheduled] == [True, False]
    sched.update(out, runner.run(out))
    out = sched.schedule()
    assert [(s.seq, s.start, s.num_new_tokens) for s in out.scheduled] == [(a, 4, 1), (b, 5, 5)]
    sched.update(out, runner.run(out))
    run_all(sched, runner)
    assert a.output_token_ids == reference_output([1, 2, 3], 5)
    assert b.output_token_ids == reference_output(list(range(10)), 2)
    assert_all_free(bm)


def test_max_num_seqs_limits_running_and_admission_is_fcfs():
    sched, bm, runner = build(max_num_seqs=2)
    seqs = [make_seq([i + 1] * 3, max_tokens=2 + i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == seqs[:2]
    assert sched.waiting[0] is seqs[2]
    sched.update(out, runner.run(out))
    run_all(sched, runner)
    first_step_of = {}
    for i, step in enumerate(runner.steps):
        for sid, _, _ in step:
            first_step_of.setdefault(sid, i)
    assert first_step_of[seqs[2].seq_id] == 2  # admitted right after seqs[0] finished
    for i, s in enumerate(seqs):
        assert s.output_token_ids == reference_output([i + 1] * 3, 2 + i)
    assert_all_free(bm)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_cache_for_one_sequence_preempts_and_recomputes_without_changing_output(prefix_caching):
    # 6 blocks of 4 tokens: one 24-token sequence at a time; four requests of up to 22 tokens.
    sched, bm, runner = build(num_blocks=6, max_num_seqs=4, enable_prefix_caching=prefix_caching)
    prompts = [[i + 1] * (5 + i) for i in range(4)]
    seqs = [make_seq(p, max_tokens=14) for p in prompts]
    for s in seqs:
        sched.add(s)
    run_all(sched, runner)
    assert sched.num_preemptions > 0
    for p, s in zip(prompts, seqs, strict=True):
        assert s.output_token_ids == reference_output(p, 14)
        assert s.finish_reason == "length"
    assert_all_free(bm)


def test_preemption_takes_the_newest_and_requeues_it_first():
    sched, bm, runner = build(num_blocks=4, max_num_seqs=4)
    a, b = make_seq([1] * 7, max_tokens=9), make_seq([2] * 7, max_tokens=9)
    sched.add(a)
    sched.add(b)
    sched.update(out := sched.schedule(), runner.run(out))  # both admitted: 2 blocks each
    assert sched.running == [a, b]
    sched.update(out := sched.schedule(), runner.run(out))  # positions 7: fits
    out = sched.schedule()  # position 8 of a needs a third block: b is preempted
    assert out.preempted == [b] and [s.seq for s in out.scheduled] == [a]
    assert b.status is SequenceStatus.WAITING and b.block_table == [] and b.num_computed_tokens == 0
    assert list(sched.waiting) == [b] and b.num_output_tokens == 2
    sched.update(out, runner.run(out))
    run_all(sched, runner)
    assert b.output_token_ids == reference_output([2] * 7, 9)
    assert_all_free(bm)


def test_prefix_cache_hit_skips_computed_blocks():
    sched, bm, runner = build(block_size=4)
    shared = list(range(1, 13))
    a = make_seq([*shared, 50], max_tokens=2)
    sched.add(a)
    run_all(sched, runner)
    b = make_seq([*shared, 60, 61], max_tokens=2)
    sched.add(b)
    out = sched.schedule()
    assert (out.scheduled[0].start, out.scheduled[0].num_new_tokens) == (12, 2)
    assert b.num_cached_tokens == 12
    sched.update(out, runner.run(out))
    run_all(sched, runner)
    assert b.output_token_ids == reference_output([*shared, 60, 61], 2)
    assert_all_free(bm)


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_n_completions_share_the_prompt_blocks(prefix_caching):
    sched, bm, runner = build(block_size=4, enable_prefix_caching=prefix_caching)
    params = SamplingParams(n=3, max_tokens=3).resolve(None)
    prompt = list(range(1, 11))
    parent = Sequence("r", prompt, params)
    kids = [Sequence("r", prompt, params, index=i, parent=parent) for i in (1, 2)]
    for s in (parent, *kids):
        sched.add(s)
    out = sched.schedule()
    assert [s.seq for s in out.scheduled] == [parent]  # children wait for the parent's prompt
    sched.update(out, runner.run(out))
    out = sched.schedule()
    assert [(s.seq, s.start) for s in out.scheduled] == [(parent, 10), (kids[0], 8), (kids[1], 8)]
    shared = parent.block_table[:2]
    assert all(k.block_table[:2] == shared for k in kids)
    assert bm.ref_counts[shared[0]] == bm.ref_counts[shared[1]] == 3
    sched.update(out, runner.run(out))
    run_all(sched, runner)
    for s in (parent, *kids):
        assert s.output_token_ids == reference_output(prompt, 3)
    assert_all_free(bm)


def test_sliding_window_releases_blocks_while_generating():
    sched, bm, runner = build(num_blocks=5, block_size=4, sliding_window=8)
    seq = make_seq([5, 6, 7], max_tokens=40)  # 43 tokens in 5 blocks: only with release
    sched.add(seq)
    peak = 0
    while sched.has_unfinished():
        sched.update(out := sched.schedule(), runner.run(out))
        peak = max(peak, bm.num_blocks - bm.num_free_blocks)
    assert peak <= 4
    assert seq.output_token_ids == reference_output([5, 6, 7], 40)
    assert_all_free(bm)


def test_finish_frees_blocks_of_running_and_waiting_sequences():
    sched, bm, runner = build(max_num_seqs=1)
    a, b = make_seq([1, 2, 3], max_tokens=50), make_seq([4, 5], max_tokens=50)
    sched.add(a)
    sched.add(b)
    sched.update(out := sched.schedule(), runner.run(out))
    sched.finish(a, "abort")
    sched.finish(b, "abort")
    assert a.finish_reason == b.finish_reason == "abort"
    assert not sched.has_unfinished()
    assert_all_free(bm)


@pytest.mark.parametrize("seed", range(6))
def test_random_workloads_match_the_reference_and_leak_nothing(seed):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 16])
    window = rng.choice([None, None, 7, 20])
    max_len = 48
    num_blocks = -(-max_len // bs) + rng.randint(0, 3 * max_len // bs)
    sched, bm, runner = build(
        num_blocks=num_blocks,
        block_size=bs,
        max_num_seqs=rng.randint(1, 8),
        max_num_batched_tokens=rng.randint(1, 40),
        enable_prefix_caching=rng.random() < 0.7,
        sliding_window=window,
    )
    stem = [rng.randint(0, 9) for _ in range(20)]
    cases, steps = [], 0
    for i in range(16):
        prompt = stem[: rng.randint(0, 20)] + [rng.randint(0, 9) for _ in range(rng.randint(1, 10))]
        cases.append((prompt, make_seq(prompt, max_tokens=rng.randint(1, max_len - len(prompt)), request_id=str(i))))
    pending = list(cases)
    while pending or sched.has_unfinished():
        while pending and rng.random() < 0.5:
            sched.add(pending.pop(0)[1])
        out = sched.schedule()
        assert not out.is_empty or not sched.has_unfinished()
        sched.update(out, runner.run(out))
        steps += 1
        assert steps < 5000
    for prompt, seq in cases:
        assert seq.output_token_ids == reference_output(prompt, seq.max_tokens)
    assert_all_free(bm)
