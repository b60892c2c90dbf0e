"""Structured output through the engine on tiny random models: valid, isolated, preemption-safe."""

import random
import re

from engine_fakes import assert_all_free

from rusteeze.sampling import SamplingParams
from rusteeze.structured import StructuredOutputsParams

WORD = "[a-e]{3,12}"


def prompts_for(vocab: int, n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 20))] for _ in range(n)]


def drain(engine):
    """Step until every request finished → {request_id: final output}; every block free at the end."""
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    return done


def run(engine, requests):
    """requests: [(prompt, params)] → finished outputs in order."""
    ids = [engine.add_request(p, params) for p, params in requests]
    done = drain(engine)
    return [done[i] for i in ids]


def test_regex_constrained_sampling_always_matches_and_ends_with_stop(make_engine):
    engine = make_engine()
    prompts = prompts_for(engine.model_config.vocab_size, 6, seed=1)
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=40, structured_outputs={"regex": WORD})
    for out in run(engine, [(p, params) for p in prompts]):
        completion = out.outputs[0]
        assert re.fullmatch(WORD, completion.text), completion.text
        assert completion.finish_reason == "stop"


def test_choice_and_grammar_constraints(make_engine):
    engine = make_engine()
    prompts = prompts_for(engine.model_config.vocab_size, 4, seed=2)
    choice = SamplingParams(temperature=1.0, seed=3, max_tokens=30, structured_outputs={"choice": ["abc", "de"]})
    lark = 'start: "(" item ("," item)* ")"\nitem: /[0-9]/'
    grammar = SamplingParams(temperature=1.0, seed=3, max_tokens=60, structured_outputs={"grammar": lark})
    outs = run(engine, [(p, choice) for p in prompts] + [(p, grammar) for p in prompts])
    for out in outs[:4]:
        assert out.outputs[0].text in ("abc", "de")
    for out in outs[4:]:
        assert re.fullmatch(r"\([0-9](,[0-9])*\)", out.outputs[0].text), out.outputs[0].text
        assert out.outputs[0].finish_reason == "stop"


def test_free_requests_in_a_mixed_batch_get_their_output_alone(make_engine):
    engine = make_engine()
    prompts = prompts_for(engine.model_config.vocab_size, 6, seed=4)
    free = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    constrained = SamplingParams(temperature=0.8, seed=5, max_tokens=40, structured_outputs={"regex": WORD})
    alone = [o.outputs[0].token_ids for o in run(engine, [(p, free) for p in prompts[:3]])]
    pairs = [((prompts[i], free), (prompts[3 + i], constrained)) for i in range(3)]
    mixed = run(engine, [r for pair in pairs for r in pair])
    assert [mixed[i].outputs[0].token_ids for i in (0, 2, 4)] == alone
    assert all(re.fullmatch(WORD, mixed[i].outputs[0].text) for i in (1, 3, 5))


def test_preemption_by_recompute_consumes_no_token_twice(make_engine):
    params = SamplingParams(temperature=0, max_tokens=60, structured_outputs={"regex": "[a-e]{20,40}"}, ignore_eos=True)
    roomy = make_engine()
    prompts = prompts_for(roomy.model_config.vocab_size, 6, seed=3)
    expected = [o.outputs[0].token_ids for o in run(roomy, [(p, params) for p in prompts])]
    tight = make_engine(kv_tokens=64, max_model_len=64)
    got = run(tight, [(p, params) for p in prompts])
    assert tight.scheduler.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in got] == expected
    assert all(re.fullmatch("[a-e]{20,40}", o.outputs[0].text) for o in got)


def test_each_of_n_completions_has_its_own_matcher_and_the_grammar_is_compiled_once(make_engine):
    engine = make_engine()
    prompt = prompts_for(engine.model_config.vocab_size, 1, seed=6)[0]
    spec = StructuredOutputsParams(regex="[a-c]{2,9}")
    params = SamplingParams(n=4, temperature=1.0, seed=11, max_tokens=30, structured_outputs=spec)
    request = engine.make_request(prompt, params)
    assert len({id(seq.grammar) for seq in request.seqs}) == 4
    engine.add(request)
    first = drain(engine)[request.request_id]
    assert all(re.fullmatch("[a-c]{2,9}", c.text) for c in first.outputs)
    from rusteeze.structured.compiler import compiler_for

    compiler = compiler_for(engine.tokenizer, engine.model_config.vocab_size, engine.eos_token_ids)
    before = compiler.num_compiled
    run(engine, [(prompt, SamplingParams(max_tokens=30, structured_outputs={"regex": "[a-c]{2,9}"}))])
    assert compiler.num_compiled == before
