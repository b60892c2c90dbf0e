"""The whole model and the engine's paged path run through the Triton kernels (interpreter on CPU)."""

import pytest
import torch
from tiny_models import kv_caches_for, paged_greedy

from rusteeze import LLM, SamplingParams
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import contiguous_metadata

pytest.importorskip("triton")


@pytest.mark.parametrize("arch", ["qwen3", "mistral"])
def test_tiny_model_logits_match_torch_backend(tiny_model_dirs, arch):
    torch_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="torch").model
    triton_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="triton").model
    lens = [3, 13, 9]  # 13 > Mistral's window of 8; block_size 4 → partial blocks
    ids = torch.randint(3, torch_model.config.vocab_size, (sum(lens),), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in lens])
    meta, blocks = contiguous_metadata(lens, 4)
    with torch.no_grad():
        expected = torch_model.compute_logits(torch_model(ids, positions, kv_caches_for(torch_model, blocks, 4), meta))
        got = triton_model.compute_logits(triton_model(ids, positions, kv_caches_for(triton_model, blocks, 4), meta))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_decode_over_several_blocks_matches_torch_backend(tiny_model_dirs):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    torch_model = load_model_from_path(tiny_model_dirs["llama"], kernel_backend="torch").model
    triton_model = load_model_from_path(tiny_model_dirs["llama"], kernel_backend="triton").model
    assert paged_greedy(triton_model, prompts, steps=10) == paged_greedy(torch_model, prompts, steps=10)


def test_engine_chunked_prefill_and_decode_through_triton(tiny_llama_dir):
    """The engine's scheduler splits a long prompt into chunks; greedy output equals the torch backend's."""
    prompt = list(range(3, 40))  # 37 tokens; 16 per step → three prefill chunks
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outputs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(tiny_llama_dir), kernel_backend=backend, block_size=4, max_num_batched_tokens=16, kv_cache_memory="4MiB"
        )
        outputs[backend] = [o.outputs[0].token_ids for o in llm.generate([prompt, [7, 8, 9]], params, use_tqdm=False)]
    assert outputs["triton"] == outputs["torch"]
    assert all(len(t) == 8 for t in outputs["triton"])
