"""LLM.generate / LLM.chat, 64 mixed concurrent requests, and a light `import rusteeze`."""

import subprocess
import sys

import pytest
from engine_fakes import assert_all_free

from rusteeze import LLM, SamplingParams
from rusteeze.errors import ConfigError, InvalidRequestError


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(
        str(tiny_model_dirs["llama"]),
        device="cpu",
        kernel_backend="torch",
        max_model_len=96,
        block_size=4,
        kv_cache_memory=2_000_000,
        max_num_seqs=16,
        max_num_batched_tokens=48,
    )


def test_import_rusteeze_does_not_import_torch():
    code = "import sys, rusteeze; from rusteeze import SamplingParams; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generate_accepts_every_prompt_shape_and_keeps_order(llm):
    greedy = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    one = llm.generate("Hello world", greedy, use_tqdm=False)
    assert len(one) == 1 and len(one[0].outputs[0].token_ids) == 5
    ids = llm.tokenizer.encode("Hello world")
    assert llm.generate(ids, greedy)[0].outputs[0].token_ids == one[0].outputs[0].token_ids
    many = llm.generate(["The quick", "Hello world", [5, 6, 7]], [greedy, greedy, greedy])
    assert [o.prompt for o in many] == ["The quick", "Hello world", None]
    assert many[1].outputs[0].token_ids == one[0].outputs[0].token_ids
    with pytest.raises(InvalidRequestError) as info:
        llm.generate(["a", "b"], [greedy])
    assert info.value.param == "sampling_params"


def test_chat_applies_the_template(llm):
    conversation = [{"role": "user", "content": "Hi there"}]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    out = llm.chat(conversation, params)
    assert out[0].prompt.endswith("<|im_start|>assistant\n")
    assert out[0].prompt_token_ids == llm.tokenizer.encode_chat(conversation)
    both = llm.chat([conversation, [{"role": "user", "content": "Bye"}]], params, use_tqdm=False)
    assert both[0].outputs[0].token_ids == out[0].outputs[0].token_ids


def test_unknown_override_is_a_config_error(tiny_model_dirs):
    with pytest.raises(ConfigError, match="max_num_seq"):
        LLM(str(tiny_model_dirs["llama"]), max_num_seq=4)


def test_64_concurrent_requests_with_mixed_parameters_all_finish(llm):
    variants = [
        SamplingParams(temperature=0, max_tokens=12),
        SamplingParams(temperature=0.8, top_k=10, seed=3, max_tokens=20),
        SamplingParams(temperature=1.2, top_p=0.8, max_tokens=16, ignore_eos=True),
        SamplingParams(temperature=0.7, min_p=0.1, repetition_penalty=1.3, max_tokens=10),
        SamplingParams(presence_penalty=1.0, frequency_penalty=0.5, max_tokens=30, stop=["e", "."]),
        SamplingParams(n=3, temperature=1.0, max_tokens=8, logprobs=3),
        SamplingParams(temperature=0, min_tokens=6, max_tokens=9, stop_token_ids=[2], logit_bias={2: 5.0}),
        SamplingParams(max_tokens=None, prompt_logprobs=2, logprobs=0),
    ]
    prompts = [f"Request number {i}: " + "the quick brown fox " * (i % 7) for i in range(64)]
    params = [variants[i % len(variants)] for i in range(64)]
    outs = llm.generate(prompts, params)
    assert [o.prompt for o in outs] == prompts
    for out, p in zip(outs, params, strict=True):
        assert out.finished and len(out.outputs) == p.n
        for c in out.outputs:
            assert c.finish_reason in ("stop", "length")
            room = llm.engine.max_model_len - len(out.prompt_token_ids)  # max_tokens is clamped to it
            limit = min(p.max_tokens or room, room)
            assert min(p.min_tokens, limit) <= len(c.token_ids) <= limit
            assert (c.logprobs is not None) == (p.logprobs is not None)
            if c.logprobs is not None:
                assert len(c.logprobs) == len(c.token_ids)
            for s in p.stop_strings:
                assert s not in c.text
        if p.prompt_logprobs is not None:
            assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    assert_all_free(llm.engine.block_manager)
