"""Sampler: each parameter against a simple reference on fixed logits; seeds; frequencies."""

import math

import pytest
import torch
from engine_fakes import make_seq

from rusteeze.engine.sampler import SamplingBatch, apply_penalties_and_bias, gather_logprobs, sample

V = 6
LOGITS = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])  # [V]; order by probability: 5, 0, 1, 2, 3, 4


def batch_of(seqs):
    return SamplingBatch.from_sequences(seqs, V, torch.device("cpu"))


def frequencies(n: int = 20000, logits=LOGITS, **params) -> torch.Tensor:
    """Empirical distribution of ``n`` draws (one batch of n identical rows)."""
    torch.manual_seed(0)
    seqs = [make_seq([1], **params)] * n
    tokens, _ = sample(logits.expand(n, V).clone(), batch_of(seqs))
    return torch.bincount(tokens, minlength=V).float() / n


def assert_close_to(freq: torch.Tensor, probs: torch.Tensor):
    assert torch.allclose(freq, probs, atol=0.02), (freq, probs)


def test_greedy_is_argmax_and_ignores_the_rng():
    logits = torch.randn(5, V)
    tokens, logprobs = sample(logits, batch_of([make_seq([1], temperature=0)] * 5))
    assert tokens.tolist() == logits.argmax(-1).tolist()
    assert logprobs == [None] * 5


def test_temperature_frequencies_match_the_softmax():
    assert_close_to(frequencies(temperature=1.0), LOGITS.softmax(-1))
    assert_close_to(frequencies(temperature=0.5), (LOGITS / 0.5).softmax(-1))


def test_top_k_keeps_the_k_most_likely_renormalised():
    expected = torch.zeros(V)
    expected[[5, 0]] = LOGITS[[5, 0]].softmax(-1)
    assert_close_to(frequencies(temperature=1.0, top_k=2), expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = LOGITS.softmax(-1)  # sorted: 5: .60, 0: .22, 1: .08, ...
    keep = [5, 0, 1]
    assert probs[[5, 0]].sum() < 0.85 <= probs[keep].sum()
    expected = torch.zeros(V)
    expected[keep] = probs[keep] / probs[keep].sum()
    assert_close_to(frequencies(temperature=1.0, top_p=0.85), expected)


def test_min_p_drops_tokens_below_a_fraction_of_the_top():
    probs = LOGITS.softmax(-1)
    keep = probs >= 0.3 * probs.max()
    expected = torch.where(keep, probs, torch.zeros(V))
    assert_close_to(frequencies(temperature=1.0, min_p=0.3), expected / expected.sum())


def test_repetition_penalty_follows_the_hf_rule_over_prompt_and_output():
    seq = make_seq([0, 4], repetition_penalty=2.0)
    seq.token_ids.append(3)  # an output token
    out = apply_penalties_and_bias(LOGITS.clone().unsqueeze(0), batch_of([seq]))[0]
    expected = LOGITS.clone()
    expected[0] /= 2  # positive: divided
    expected[4] *= 2  # negative: multiplied
    expected[3] *= 2  # zero stays zero
    assert torch.equal(out, expected)


def test_presence_and_frequency_penalties_use_output_counts_only():
    seq = make_seq([1, 1], presence_penalty=0.5, frequency_penalty=0.25)
    seq.token_ids += [2, 2, 2, 5]
    out = apply_penalties_and_bias(LOGITS.clone().unsqueeze(0), batch_of([seq]))[0]
    expected = LOGITS.clone()
    expected[2] -= 0.5 + 3 * 0.25
    expected[5] -= 0.5 + 1 * 0.25
    assert torch.allclose(out, expected)


def test_logit_bias_changes_the_greedy_choice():
    seq = make_seq([1], temperature=0, logit_bias={4: 10.0, 99: 5.0})  # 99 is outside the vocabulary
    tokens, _ = sample(LOGITS.clone().unsqueeze(0), batch_of([seq]))
    assert tokens.tolist() == [4]


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    seq = make_seq([1], temperature=0, min_tokens=2, max_tokens=5, stop_token_ids=[0])
    seq.eos_token_ids = frozenset({5})
    tokens, _ = sample(LOGITS.clone().unsqueeze(0), batch_of([seq]))
    assert tokens.tolist() == [1]  # 5 (EOS) and 0 (stop id) are masked
    seq.token_ids += [1, 1]
    tokens, _ = sample(LOGITS.clone().unsqueeze(0), batch_of([seq]))
    assert tokens.tolist() == [5]


def test_seeded_rows_are_independent_of_the_rest_of_the_batch():
    logits = torch.randn(1, 50)

    def draws(position: int, batch_size: int, seed_others: bool) -> list[int]:
        me = make_seq([1], seed=7, temperature=1.0)
        me.generator = torch.Generator().manual_seed(7)
        others = [make_seq([2], temperature=0.8, top_k=5) for _ in range(batch_size - 1)]
        for i, o in enumerate(others):
            if seed_others:
                o.generator = torch.Generator().manual_seed(100 + i)
        seqs = [*others[:position], me, *others[position:]]
        out = []
        for _ in range(10):
            tokens, _ = sample(logits.expand(batch_size, 50).clone(), SamplingBatch.from_sequences(seqs, 50, "cpu"))
            out.append(tokens[position].item())
        return out

    ref = draws(0, 1, False)
    assert len(set(ref)) > 1  # actually random
    assert draws(2, 4, False) == ref
    assert draws(1, 3, True) == ref


def test_mixed_batch_greedy_rows_stay_greedy():
    logits = torch.randn(6, V)
    seqs = [make_seq([1], temperature=0 if i % 2 == 0 else 1.5, top_p=0.9) for i in range(6)]
    tokens, _ = sample(logits.clone(), batch_of(seqs))
    assert tokens[::2].tolist() == logits[::2].argmax(-1).tolist()


def test_logprobs_come_from_the_raw_distribution():
    seq = make_seq([1], temperature=0, logprobs=2, logit_bias={3: 50.0})
    tokens, logprobs = sample(LOGITS.clone().unsqueeze(0), batch_of([seq]))
    raw = LOGITS.log_softmax(-1)
    assert tokens.tolist() == [3]
    entry = logprobs[0]
    assert set(entry) == {5, 0, 3}
    assert entry[5] == pytest.approx((raw[5].item(), 1))
    assert entry[0] == pytest.approx((raw[0].item(), 2))
    assert entry[3] == pytest.approx((raw[3].item(), 5))
    assert math.isclose(sum(math.exp(x) for x in raw.tolist()), 1.0, rel_tol=1e-5)


def test_gather_logprobs_skips_rows_and_handles_zero_alternatives():
    logits = torch.randn(3, V)
    targets = torch.tensor([0, 1, 2])
    out = gather_logprobs(logits, targets, [None, 0, 3])
    assert out[0] is None
    assert list(out[1]) == [1]
    assert len(out[2]) in (3, 4) and 2 in out[2]


def test_rows_draw_from_their_sequences_generators_only():
    """Unseeded rows share their engine's generator (one block, row order); greedy rows draw nothing."""
    shared, own = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    temps = (0, 1.0, 1.0, 0.7, 0)
    seqs = [make_seq([1], temperature=t) for t in temps]
    for s in seqs:
        s.generator = shared
    seqs[2].generator = own
    logits = torch.randn(5, V, generator=torch.Generator().manual_seed(3))
    before = torch.get_rng_state()
    tokens, _ = sample(logits.clone(), batch_of(seqs))
    assert torch.equal(torch.get_rng_state(), before)  # torch's global generator untouched
    replay = torch.Generator().manual_seed(1)
    race = torch.empty(2, V).exponential_(generator=replay)  # rows 1 and 3, one block
    expected = [((logits[r] / temps[r]).softmax(-1) / race[i]).argmax().item() for i, r in enumerate((1, 3))]
    assert [tokens[1].item(), tokens[3].item()] == expected
    assert torch.equal(shared.get_state(), replay.get_state())  # nothing else drawn from it
    assert [tokens[0].item(), tokens[4].item()] == [logits[0].argmax().item(), logits[4].argmax().item()]
