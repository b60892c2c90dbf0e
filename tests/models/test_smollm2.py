"""The real SmolLM2-135M-Instruct GGUF: greedy answers token-identical to transformers in float32."""

import os

import pytest
import torch
from tiny_models import paged_greedy

from rusteeze.loader.model_loader import load_model_from_path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Explain what a CPU does in one sentence.",
    "Translate 'good morning' into Spanish.",
]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_path):
    return load_model_from_path(smollm2_gguf_path, kernel_backend="torch", gguf_direct=False)


@pytest.fixture(scope="module")
def hf_smollm2(smollm2_gguf_path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(smollm2_gguf_path), gguf_file=os.path.basename(smollm2_gguf_path), dtype=torch.float32
    ).eval()


def test_config_and_load(smollm2):
    assert smollm2.config.architecture == "LlamaForCausalLM"
    assert smollm2.config.num_parameters == sum(p.numel() for p in smollm2.model.parameters())
    assert 134_000_000 < smollm2.config.num_parameters < 136_000_000


def test_greedy_chat_answers_match_transformers(smollm2, hf_smollm2, hf_smollm2_tokenizer):
    prompts = [smollm2.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    ours = paged_greedy(smollm2.model, prompts, steps=NEW_TOKENS, block_size=16)
    eos = hf_smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf_smollm2.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos
            )
        expected = out[0, len(prompt) :].tolist()
        assert got[: len(expected)] == expected
    answer = smollm2.tokenizer.decode(ours[0])
    assert "Paris" in answer


PARITY_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain what a CPU does in one sentence.",
]


def test_default_gguf_direct_path_in_float32_matches_transformers(smollm2_gguf_path, hf_smollm2, hf_smollm2_tokenizer):
    """The default path (GGUF weights kept quantized, CPU kernels) with dtype="float32" is float32 math."""
    from rusteeze import LLM, SamplingParams

    llm = LLM(smollm2_gguf_path, dtype="float32", kv_cache_memory="64MiB")
    params = SamplingParams(temperature=0, max_tokens=32)
    outputs = [llm.chat([{"role": "user", "content": p}], params)[0] for p in PARITY_PROMPTS]
    eos = hf_smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for out in outputs:
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            ref = hf_smollm2.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False, eos_token_id=eos
            )
        expected = [t for t in ref[0, ids.shape[1] :].tolist() if t != eos]
        assert out.outputs[0].token_ids[: len(expected)] == expected, out.outputs[0].text
