"""Engine end to end on tiny random models: greedy parity, caching, preemption, aborts, limits."""

import random

import pytest
import torch
from engine_fakes import assert_all_free
from tiny_models import load_hf_model

from rusteeze.errors import ConfigError, InvalidRequestError
from rusteeze.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def prompts_for(vocab: int, n: int = 5, seed: int = 0, stem: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, vocab) for _ in range(stem)]
    return [shared + [rng.randrange(3, vocab) for _ in range(rng.randint(3, 20))] for _ in range(n)]


def run(engine, prompts, params=GREEDY):
    """Add every prompt, step to completion, return outputs in prompt order."""
    ids = [engine.add_request(p, params) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
    assert_all_free(engine.block_manager)
    return [done[i] for i in ids]


def tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def hf_greedy(model_dir, prompts, n):
    hf = load_hf_model(model_dir)
    out = []
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            gen = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        out.append(gen[0, len(p) :].tolist())
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: sliding window 8, blocks released
def test_batched_greedy_equals_one_at_a_time_equals_transformers(make_engine, tiny_model_dirs, arch):
    engine = make_engine(arch)
    prompts = prompts_for(engine.model_config.vocab_size)
    batched = tokens(run(engine, prompts))
    single = [tokens(run(engine, [p]))[0] for p in prompts]
    assert batched == single
    assert batched == hf_greedy(tiny_model_dirs[arch], prompts, GREEDY.max_tokens)


def test_chunked_prefill_and_prefix_caching_do_not_change_greedy_output(make_engine):
    reference = make_engine(enable_prefix_caching=False)
    prompts = prompts_for(reference.model_config.vocab_size, n=6, stem=13)
    expected = tokens(run(reference, prompts))
    cached = make_engine(enable_prefix_caching=True, max_num_batched_tokens=7)
    first = run(cached, prompts[:1])
    rest = run(cached, prompts[1:])
    assert tokens(first + rest) == expected
    assert all(o.usage.cached_tokens == 12 for o in rest)  # 13 shared tokens = 3 full blocks of 4


def test_a_kv_cache_for_one_sequence_preempts_and_gives_the_same_output(make_engine):
    roomy = make_engine()
    prompts = prompts_for(roomy.model_config.vocab_size, n=6, seed=3)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    expected = tokens(run(roomy, prompts, params))
    tight = make_engine(kv_tokens=64, max_model_len=64)
    assert tokens(run(tight, prompts, params)) == expected
    assert tight.scheduler.num_preemptions > 0


def test_seeded_sampling_does_not_depend_on_the_batch(make_engine):
    engine = make_engine()
    vocab = engine.model_config.vocab_size
    prompt = prompts_for(vocab, n=1, seed=9)[0]
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    alone = tokens(run(engine, [prompt], seeded))[0]
    others = SamplingParams(temperature=0.9, top_k=20, max_tokens=10, ignore_eos=True)
    ids = [engine.add_request(p, others) for p in prompts_for(vocab, n=3, seed=10)]
    mine = engine.add_request(prompt, seeded)
    ids += [engine.add_request(p, others) for p in prompts_for(vocab, n=3, seed=11)]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert done[mine].outputs[0].token_ids == alone
    unseeded = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    assert tokens(run(engine, [prompt] * 4, unseeded)) != [alone] * 4


def test_abort_mid_generation_frees_blocks(make_engine):
    engine = make_engine()
    a = engine.add_request([5, 6, 7, 8, 9], SamplingParams(max_tokens=100, ignore_eos=True))
    b = engine.add_request([5, 6, 7], SamplingParams(max_tokens=100, ignore_eos=True, n=2))
    for _ in range(4):
        engine.step()
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    final = engine.abort(a)
    assert final.finished and final.outputs[0].finish_reason == "abort"
    assert len(final.outputs[0].token_ids) == 4
    assert engine.abort(b).outputs[1].finish_reason == "abort"
    assert engine.abort("nope") is None
    assert not engine.has_unfinished_requests()
    assert_all_free(engine.block_manager)


def test_stops_limits_and_validation(make_engine):
    engine = make_engine(max_model_len=40)
    vocab = engine.model_config.vocab_size
    prompt = prompts_for(vocab, n=1, seed=4)[0]
    free_run = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0].outputs[0]
    stop_id = free_run.token_ids[3]
    out = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_id]))[0].outputs[0]
    k = free_run.token_ids.index(stop_id)
    assert out.token_ids == free_run.token_ids[: k + 1] and out.finish_reason == "stop" and out.stop_reason == stop_id
    text = free_run.text
    stop = next(text[i : i + 2] for i in range(2, len(text) - 2) if text[i : i + 2].strip())
    out = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop=stop))[0]
    assert out.outputs[0].text == text[: text.index(stop)]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == stop
    # max_tokens beyond the context is clamped to what fits.
    out = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=1000, ignore_eos=True))[0]
    assert len(prompt) + len(out.outputs[0].token_ids) == 40 and out.outputs[0].finish_reason == "length"
    with pytest.raises(InvalidRequestError, match=r"40 tokens.*max_model_len is 40") as info:
        engine.add_request([5] * 40)
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request([5], SamplingParams(stop_token_ids=[vocab]))
    assert info.value.param == "stop_token_ids"
    with pytest.raises(InvalidRequestError) as info:
        engine.add_request([5], SamplingParams(logit_bias={vocab + 3: 1.0}))
    assert info.value.param == "logit_bias"
    for bad in ([], [vocab], "", 3):
        with pytest.raises(InvalidRequestError):
            engine.add_request(bad)
    engine.add_request([5], request_id="x")
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request([6], request_id="x")
    engine.abort("x")
    assert_all_free(engine.block_manager)


def test_kv_budget_smaller_than_one_sequence_is_a_config_error(make_engine):
    with pytest.raises(ConfigError, match="max_model_len = 128"):
        make_engine(kv_tokens=64, max_model_len=128)


@pytest.mark.parametrize("slice_rows", [256, 3])  # prompt positions scored per lm_head call
def test_logprobs_and_prompt_logprobs_match_transformers(make_engine, tiny_model_dirs, monkeypatch, slice_rows):
    from rusteeze.engine import model_runner as runner

    monkeypatch.setattr(runner, "PROMPT_LOGPROBS_ROWS", slice_rows)
    engine = make_engine()
    prompt = prompts_for(engine.model_config.vocab_size, n=1, seed=5)[0]
    assert len(prompt) > 2 * 3
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    out = run(engine, [prompt], params)[0]
    hf = load_hf_model(tiny_model_dirs["llama"])
    full = prompt + out.outputs[0].token_ids
    with torch.no_grad():
        ref = hf(torch.tensor([full])).logits[0].log_softmax(-1)  # [L, V]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for i in range(1, len(prompt)):
        entry = out.prompt_logprobs[i]
        assert entry[prompt[i]].logprob == pytest.approx(ref[i - 1, prompt[i]].item(), abs=1e-4)
        assert len(entry) in (1, 2)
    for j, tok in enumerate(out.outputs[0].token_ids):
        entry = out.outputs[0].logprobs[j]
        assert entry[tok].rank == 1  # greedy
        assert entry[tok].logprob == pytest.approx(ref[len(prompt) + j - 1, tok].item(), abs=1e-4)
        assert len(entry) == 2
    assert out.outputs[0].cumulative_logprob == pytest.approx(
        sum(out.outputs[0].logprobs[j][t].logprob for j, t in enumerate(out.outputs[0].token_ids))
    )


def test_outputs_carry_deltas_usage_and_timing(make_engine):
    engine = make_engine()
    rid = engine.add_request("Hello world", SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, n=2))
    deltas, texts, last = [[], []], ["", ""], None
    while engine.has_unfinished_requests():
        for out in engine.step():
            assert out.request_id == rid
            for c in out.outputs:
                deltas[c.index] += c.delta_token_ids
                texts[c.index] += c.delta_text
            last = out
    assert last.finished and [c.index for c in last.outputs] == [0, 1]
    for c in last.outputs:
        assert deltas[c.index] == c.token_ids and len(c.token_ids) == 6
        assert texts[c.index] == c.text == engine.tokenizer.decode(c.token_ids)
    assert last.outputs[0].token_ids == last.outputs[1].token_ids  # greedy twice
    assert last.prompt == "Hello world" and last.prompt_token_ids == engine.tokenizer.encode("Hello world")
    assert last.usage.prompt_tokens == len(last.prompt_token_ids) and last.usage.completion_tokens == 12
    m = last.metrics
    assert m.arrival_time <= m.first_token_time <= m.finish_time


def test_unset_max_model_len_shrinks_to_the_kv_budget(make_engine):
    engine = make_engine(kv_tokens=100, max_model_len=None)
    assert engine.max_model_len == 100  # the model allows 512
    assert make_engine(max_model_len=None).max_model_len == 512


def test_n_seeded_completions_differ_and_repeat(make_engine):
    engine = make_engine()
    params = SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=10, ignore_eos=True)
    first = run(engine, [[5, 6, 7, 8, 9, 10]], params)[0]
    again = run(engine, [[5, 6, 7, 8, 9, 10]], params)[0]
    runs = [c.token_ids for c in first.outputs]
    assert runs == [c.token_ids for c in again.outputs]
    assert len({tuple(r) for r in runs}) == 3
    assert first.usage.completion_tokens == 30


def test_include_stop_str_in_output_keeps_the_match(make_engine):
    engine = make_engine()
    prompt = prompts_for(engine.model_config.vocab_size, n=1, seed=4)[0]
    text = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0].outputs[0].text
    stop = next(text[i : i + 2] for i in range(2, len(text) - 2) if text[i : i + 2].strip())
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop=[stop], include_stop_str_in_output=True)
    out = run(engine, [prompt], params)[0].outputs[0]
    assert out.text == text[: text.index(stop) + len(stop)]
