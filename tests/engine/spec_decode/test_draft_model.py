"""Draft-model speculation on the tiny random models (they share one tokenizer): plain decoding's output."""

import shutil

import pytest
import transformers
from test_spec_engine import GREEDY, prompts_for, run, token_ids
from tiny_models import hf_config

from rusteeze.errors import ConfigError
from rusteeze.sampling import SamplingParams


def draft_spec(tiny_model_dirs, arch: str, k: int = 4) -> dict:
    return {"method": "draft", "draft_model": str(tiny_model_dirs[arch]), "num_speculative_tokens": k}


def always_draft(engine):
    """Drafts cost nothing in the cost model: draft every step (so every step verifies)."""
    engine.speculator.fixed_cost_tokens, engine.speculator.draft_cost = 1e9, 0.0
    return engine


def test_the_model_as_its_own_draft_is_always_right(make_engine, tiny_model_dirs):
    plain = make_engine()
    prompts = prompts_for(plain.model_config.vocab_size)
    expected = token_ids(run(plain, prompts, GREEDY))
    spec = always_draft(make_engine(speculative=draft_spec(tiny_model_dirs, "llama")))
    assert token_ids(run(spec, prompts, GREEDY)) == expected
    s = spec.stats()
    assert s["spec_decode_num_draft_tokens"] > 0
    assert s["spec_decode_acceptance_rate"] == 1.0
    bm = spec.speculator.drafter.block_manager
    assert bm.num_free_blocks == bm.num_blocks  # every shadow released once its sequence finished


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_another_draft_model_keeps_the_output_with_preemption_and_n(make_engine, tiny_model_dirs, arch):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, n=2)
    plain = make_engine(arch)
    prompts = prompts_for(plain.model_config.vocab_size, n=5, seed=3)
    expected = token_ids(run(plain, prompts, params))
    other = "qwen2" if arch == "llama" else "mistral"
    tight = make_engine(arch, kv_tokens=64, max_model_len=64, speculative=draft_spec(tiny_model_dirs, other, 3))
    assert token_ids(run(always_draft(tight), prompts, params)) == expected
    assert tight.scheduler.num_preemptions > 0
    assert tight.stats()["spec_decode_num_draft_tokens"] > 0


def test_seeded_sampling_with_a_draft_model_repeats(make_engine, tiny_model_dirs):
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    prompts = prompts_for(320, n=2, seed=4)
    runs = [
        token_ids(run(always_draft(make_engine(speculative=draft_spec(tiny_model_dirs, "llama"))), prompts, params))
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_draft_settings_are_checked(make_engine, tiny_model_dirs, tmp_path):
    with pytest.raises(ConfigError, match=r"needs speculative\.draft_model"):
        make_engine(speculative={"method": "draft"})
    with pytest.raises(ConfigError, match="only used with method = 'draft'"):
        make_engine(speculative={"method": "ngram", "draft_model": "x"})
    wider = tmp_path / "wide"  # the tiny Llama's files, a model with 384 token embeddings
    shutil.copytree(tiny_model_dirs["llama"], wider)
    transformers.AutoModelForCausalLM.from_config(hf_config("llama", 384)).save_pretrained(wider)
    with pytest.raises(ConfigError, match="has a vocabulary of 384 tokens, the model 320"):
        make_engine(speculative={"method": "draft", "draft_model": str(wider)})
