"""Speculative decoding in the engine on the tiny random models: the same output as plain decoding.

Random tiny models rarely repeat themselves, so most tests draft with ``OracleDrafts`` (the plain
run's tokens, a share of them wrong): every step then verifies accepted and rejected drafts. The
suite runs in the poisoned-KV mode, so a read of a rejected draft's slot fails the step.
"""

import random

import pytest
from engine_fakes import assert_all_free
from oracle import OracleDrafts

from rusteeze.sampling import SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def prompts_for(vocab: int, n: int = 4, seed: int = 0) -> list[list[int]]:
    """Prompts that repeat a phrase (something for n-gram lookup to continue)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phrase = [rng.randrange(3, vocab) for _ in range(rng.randint(3, 7))]
        out.append([rng.randrange(3, vocab)] + phrase * rng.randint(2, 4) + phrase[: rng.randint(0, 2)])
    return out


def run(engine, prompts, params):
    """Add every prompt, step to completion, return outputs in prompt order (every block free after)."""
    ids = [engine.add_request(p, params) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    return [done[i] for i in ids]


def token_ids(outputs):
    return [[c.token_ids for c in o.outputs] for o in outputs]


def with_oracle(engine, prompts, expected, **kw):
    """Make ``engine`` draft from ``expected`` (a plain run's outputs for ``prompts``)."""
    answers = {tuple(p): o.outputs[0].token_ids for p, o in zip(prompts, expected, strict=True)}
    engine.speculator.propose = OracleDrafts(engine.speculator, answers, **kw)
    return engine


def assert_some_drafts_kept_and_some_rejected(engine):
    s = engine.stats()
    assert 0 < s["spec_decode_num_accepted_tokens"] < s["spec_decode_num_draft_tokens"]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_greedy_output_is_identical_with_speculation(make_engine, arch):
    plain = make_engine(arch)
    prompts = prompts_for(plain.model_config.vocab_size)
    expected = run(plain, prompts, GREEDY)
    spec = with_oracle(make_engine(arch, speculative=SPEC), prompts, expected)
    assert token_ids(run(spec, prompts, GREEDY)) == token_ids(expected)
    assert_some_drafts_kept_and_some_rejected(spec)
    ngram = make_engine(arch, speculative=SPEC)  # the real proposer: whatever it finds, the output holds
    assert token_ids(run(ngram, prompts, GREEDY)) == token_ids(expected)


def test_preemption_prefix_caching_and_chunked_prefill(make_engine):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    plain = make_engine()
    prompts = prompts_for(plain.model_config.vocab_size, n=6, seed=3)
    expected = run(plain, prompts, params)
    tight = with_oracle(make_engine(kv_tokens=64, max_model_len=64, speculative=SPEC), prompts, expected)
    assert token_ids(run(tight, prompts, params)) == token_ids(expected)
    assert tight.scheduler.num_preemptions > 0
    assert_some_drafts_kept_and_some_rejected(tight)
    chunked = make_engine(max_num_batched_tokens=7, enable_prefix_caching=True, speculative=SPEC)
    with_oracle(chunked, prompts, expected, wrong=0.2)
    first = run(chunked, prompts[:2], params)
    again = run(chunked, prompts, params)  # prefix-cache hits on blocks written while speculating
    assert token_ids(first + again) == token_ids(expected[:2] + expected)
    assert any(o.usage.cached_tokens for o in again)


def test_max_tokens_stop_ids_and_stop_strings_end_exactly_where_plain_decoding_ends(make_engine):
    plain = make_engine()
    prompts = prompts_for(plain.model_config.vocab_size, n=3, seed=5)
    long = run(plain, prompts, GREEDY)
    for i, out in enumerate(long):
        ids, text = out.outputs[0].token_ids, out.outputs[0].text
        cases = [
            SamplingParams(temperature=0, max_tokens=7, ignore_eos=True),
            SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop_token_ids=[ids[9]]),
            SamplingParams(
                temperature=0, max_tokens=24, ignore_eos=True, stop=[text[len(text) // 2 : len(text) // 2 + 3]]
            ),
        ]
        for params in cases:
            expected = run(plain, [prompts[i]], params)
            spec = with_oracle(make_engine(speculative=SPEC), [prompts[i]], long[i : i + 1], wrong=0.0)
            got = run(spec, [prompts[i]], params)
            assert token_ids(got) == token_ids(expected), params
            assert got[0].outputs[0].text == expected[0].outputs[0].text
            assert got[0].outputs[0].finish_reason == expected[0].outputs[0].finish_reason
            assert got[0].usage.completion_tokens == expected[0].usage.completion_tokens


def test_n_completions_and_logprobs_equal_plain_decoding(make_engine):
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, n=3, logprobs=3)
    plain = make_engine()
    prompts = prompts_for(plain.model_config.vocab_size, n=2, seed=7)
    expected = run(plain, prompts, params)
    spec = with_oracle(make_engine(speculative=SPEC), prompts, expected)
    got = run(spec, prompts, params)
    assert token_ids(got) == token_ids(expected)
    assert_some_drafts_kept_and_some_rejected(spec)
    for g, e in zip(got, expected, strict=True):
        for gc, ec in zip(g.outputs, e.outputs, strict=True):
            assert len(gc.logprobs) == len(ec.logprobs) == len(gc.token_ids)
            for gl, el in zip(gc.logprobs, ec.logprobs, strict=True):
                assert gl.keys() == el.keys()
                for t in gl:
                    assert gl[t].logprob == pytest.approx(el[t].logprob, abs=1e-4)
                    assert gl[t].rank == el[t].rank
            assert gc.cumulative_logprob == pytest.approx(ec.cumulative_logprob, abs=1e-3)


def test_seeded_sampling_with_speculation_repeats(make_engine):
    params = SamplingParams(temperature=0.8, top_k=50, seed=42, max_tokens=20, ignore_eos=True, n=2)
    plain = make_engine()
    prompts = prompts_for(plain.model_config.vocab_size, n=2, seed=9)
    drafts_from = run(plain, prompts, GREEDY)
    runs = []
    for _ in range(2):
        spec = with_oracle(make_engine(speculative=SPEC), prompts, drafts_from, wrong=0.1, seed=3)
        runs.append(token_ids(run(spec, prompts, params)))
        assert spec.stats()["spec_decode_num_draft_tokens"] > 0
    assert runs[0] == runs[1]


def test_penalized_requests_are_not_speculated(make_engine):
    spec = make_engine(speculative=SPEC)
    prompts = prompts_for(spec.model_config.vocab_size, n=2, seed=11)
    penalized = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, repetition_penalty=1.3)
    expected = run(make_engine(), prompts, penalized)
    with_oracle(spec, prompts, expected, wrong=0.0)
    assert token_ids(run(spec, prompts, penalized)) == token_ids(expected)
    assert spec.stats()["spec_decode_num_draft_tokens"] == 0
