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
