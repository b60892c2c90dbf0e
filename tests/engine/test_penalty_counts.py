"""Incremental penalty counts: equal to counting from scratch, updated by the new tokens only."""

import random

import torch
from engine_fakes import assert_all_free, make_seq

import rusteeze.engine.model_runner as model_runner
from rusteeze.engine.penalty_counts import PenaltyCounts, penalty_counts_of
from rusteeze.engine.sampler import SamplingBatch, apply_penalties_and_bias
from rusteeze.sampling import SamplingParams

V = 11


def from_scratch(seq, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([V] float32 output counts, [V] bool prompt mask) counted directly from the token lists."""
    out = torch.bincount(torch.tensor(seq.output_token_ids, dtype=torch.long), minlength=vocab).float()
    prompt = torch.bincount(torch.tensor(seq.token_ids[: seq.num_prompt_tokens]), minlength=vocab) > 0
    return out, prompt


def test_sync_adds_the_new_tail_of_any_length_and_recounts_a_shrunk_output():
    rng = random.Random(0)
    seq = make_seq([3, 3, 7], frequency_penalty=0.5)
    counts = PenaltyCounts(V, torch.device("cpu"))
    for step in range(60):
        if step % 13 == 12:
            del seq.token_ids[-2:]  # a rolled-back draft: the output got shorter
        else:
            seq.token_ids += [rng.randrange(V) for _ in range(rng.choice([1, 1, 1, 4]))]  # 4: a speculative step
        counts.sync(seq)
        expected_out, expected_prompt = from_scratch(seq, V)
        assert counts.counted == seq.num_output_tokens
        assert torch.equal(counts.output_counts, expected_out)
        assert torch.equal(counts.prompt_mask(seq), expected_prompt)


def test_each_step_counts_only_the_tokens_appended_since_the_last():
    seq = make_seq([1, 2], repetition_penalty=1.5)
    added = []
    counts = penalty_counts_of(seq, V, "cpu")
    original = counts.append
    counts.append = lambda ids: (added.append(len(ids)), original(ids))
    for t in range(40):
        seq.append_token(t % V)
        assert penalty_counts_of(seq, V, "cpu") is counts  # the same vectors, kept on the sequence
    assert added == [1] * 40  # never the whole output again


def test_rows_without_penalties_keep_no_counts_and_are_unchanged():
    plain, penalized = make_seq([4, 5]), make_seq([4, 5], presence_penalty=1.0, repetition_penalty=2.0)
    for s in (plain, penalized):
        s.token_ids += [4, 6, 6]
    logits = torch.randn(2, V)
    out = apply_penalties_and_bias(logits.clone(), SamplingBatch.from_sequences([plain, penalized], V, "cpu"))
    assert plain.penalty_counts is None and penalized.penalty_counts is not None
    assert torch.equal(out[0], logits[0])
    assert not torch.equal(out[1], logits[1])


def reference_penalties(logits: torch.Tensor, seqs, vocab: int) -> torch.Tensor:
    """The penalties applied with counts rebuilt from every row's full token lists (the old way)."""
    logits = logits.clone()
    for i, s in enumerate(seqs):
        p = s.params
        out, prompt = from_scratch(s, vocab)
        seen = prompt | (out > 0)
        rep = torch.where(logits[i] > 0, logits[i] / p.repetition_penalty, logits[i] * p.repetition_penalty)
        logits[i] = torch.where(seen, rep, logits[i])
        logits[i] -= p.frequency_penalty * out + p.presence_penalty * (out > 0)
    return logits


def test_engine_with_penalties_preemption_and_forks_matches_counting_from_scratch(make_engine, monkeypatch):
    checked = []
    real_sample = model_runner.sample

    def checking_sample(logits, batch):
        seqs = checked_seqs[-1]
        vocab = logits.shape[1]
        expected = reference_penalties(logits, seqs, vocab)
        got = apply_penalties_and_bias(logits.clone(), batch)
        assert torch.equal(got, expected)
        checked.append(len(seqs))
        return real_sample(logits, batch)

    checked_seqs = []
    real_from_sequences = SamplingBatch.from_sequences.__func__

    def recording_from_sequences(cls, seqs, vocab_size, device):
        checked_seqs.append(list(seqs))
        return real_from_sequences(cls, seqs, vocab_size, device)

    monkeypatch.setattr(model_runner, "sample", checking_sample)
    monkeypatch.setattr(SamplingBatch, "from_sequences", classmethod(recording_from_sequences))

    def run_all(engine):
        vocab = engine.model_config.vocab_size
        rng = random.Random(5)
        prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(4, 12))] for _ in range(4)]
        kinds = [
            SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, repetition_penalty=1.3),
            SamplingParams(temperature=0, max_tokens=48, ignore_eos=True, presence_penalty=0.8, frequency_penalty=0.4),
            SamplingParams(temperature=0, max_tokens=48, ignore_eos=True),
            SamplingParams(
                temperature=1.0,
                seed=7,
                n=2,
                max_tokens=48,
                ignore_eos=True,
                frequency_penalty=1.0,
                repetition_penalty=1.2,
            ),
        ]
        ids = [engine.add_request(p, k) for p, k in zip(prompts, kinds, strict=True)]
        done = {}
        while engine.has_unfinished_requests():
            done.update({o.request_id: o for o in engine.step() if o.finished})
        assert_all_free(engine.block_manager)
        return [[c.token_ids for c in done[i].outputs] for i in ids]

    roomy = run_all(make_engine())
    tight_engine = make_engine(kv_tokens=72, max_model_len=64)
    tight = run_all(tight_engine)
    assert tight_engine.scheduler.num_preemptions > 0
    assert tight == roomy
    assert max(checked) >= 4 and len(checked) > 48  # mixed batches, every step compared
