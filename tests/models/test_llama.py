"""The Llama-family decoder matches transformers: logits and greedy tokens, every architecture."""

import pytest
import torch
from tiny_models import ARCHITECTURES, kv_caches_for, load_hf_model, paged_greedy

from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import AttentionMetadata, contiguous_metadata

PROMPT_LENS = [5, 19, 1, 12]  # 19 > Mistral's window of 8


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batch_logits_match_transformers(tiny_model_dirs, arch):
    loaded = load_model_from_path(tiny_model_dirs[arch], kernel_backend="torch")
    model, hf = loaded.model, load_hf_model(tiny_model_dirs[arch])
    prompts = _prompts(loaded.config.vocab_size, seed=1)
    meta, num_blocks = contiguous_metadata(PROMPT_LENS, block_size=4)
    positions = torch.cat([torch.arange(n) for n in PROMPT_LENS])
    with torch.no_grad():
        hidden = model(
            torch.tensor([t for p in prompts for t in p]), positions, kv_caches_for(model, num_blocks, 4), meta
        )
        logits = model.compute_logits(hidden)  # [T, V]
        offset = 0
        for p in prompts:
            expected = hf(torch.tensor([p])).logits[0]
            torch.testing.assert_close(logits[offset : offset + len(p)], expected, rtol=1e-4, atol=1e-4)
            offset += len(p)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_32_tokens_identical_to_transformers(tiny_model_dirs, arch):
    loaded = load_model_from_path(tiny_model_dirs[arch], kernel_backend="torch")
    hf = load_hf_model(tiny_model_dirs[arch])
    prompts = _prompts(loaded.config.vocab_size, seed=2)
    ours = paged_greedy(loaded.model, prompts, steps=32)
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=32,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
                min_new_tokens=32,
            )
        assert got == out[0, len(prompt) :].tolist()


def test_chunked_prefill_matches_single_pass(tiny_model_dirs):
    """Prefilling a prompt in two chunks (the second reading the first from the cache) changes nothing."""
    loaded = load_model_from_path(tiny_model_dirs["mistral"], kernel_backend="torch")
    model = loaded.model
    prompt = _prompts(loaded.config.vocab_size, seed=3)[1]  # 19 tokens
    meta, num_blocks = contiguous_metadata([len(prompt)], block_size=4)
    with torch.no_grad():
        full = model.compute_logits(
            model(torch.tensor(prompt), torch.arange(len(prompt)), kv_caches_for(model, num_blocks, 4), meta)
        )
        caches = kv_caches_for(model, num_blocks, 4)
        outs = []
        for start, end in ((0, 7), (7, len(prompt))):
            chunk_meta = AttentionMetadata(
                cu_seqlens_q=torch.tensor([0, end - start], dtype=torch.int32),
                seq_lens=torch.tensor([end], dtype=torch.int32),
                slot_mapping=meta.slot_mapping[start:end],
                block_tables=meta.block_tables,
            )
            hidden = model(torch.tensor(prompt[start:end]), torch.arange(start, end), caches, chunk_meta)
            outs.append(model.compute_logits(hidden))
    torch.testing.assert_close(torch.cat(outs), full, rtol=1e-5, atol=1e-5)


def test_loaded_model_reports_its_config(tiny_model_dirs):
    loaded = load_model_from_path(tiny_model_dirs["qwen3"], kernel_backend="torch")
    assert loaded.config.architecture == "Qwen3ForCausalLM"
    assert loaded.config.qk_norm and not loaded.config.attention_bias
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    hf_params = sum(p.numel() for p in load_hf_model(tiny_model_dirs["qwen3"]).parameters())
    assert loaded.config.num_parameters == hf_params
