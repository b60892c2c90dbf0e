"""The "numba" backend: what get_ops hands out, lazy import, and whole tiny models against the torch backend."""

import inspect
import subprocess
import sys

import pytest
import torch
from tiny_models import kv_caches_for, paged_greedy

from rusteeze import LLM, SamplingParams
from rusteeze.config import EngineConfig
from rusteeze.kernels import NUMBA_OP_NAMES, OP_NAMES, get_ops, numba_ops, torch_ops
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import contiguous_metadata


def test_numba_backend_ops():
    ops = get_ops("numba")
    for name in OP_NAMES:
        expected = numba_ops if name in NUMBA_OP_NAMES else torch_ops
        assert getattr(ops, name) is getattr(expected, name), name
    assert ops.rotary_store_kv is numba_ops.rotary_store_kv
    assert get_ops("torch").rotary_store_kv is None
    assert EngineConfig(kernel_backend="numba").kernel_backend == "numba"


def test_numba_ops_take_the_torch_parameters():
    for name in NUMBA_OP_NAMES:
        torch_params = list(inspect.signature(getattr(torch_ops, name)).parameters)
        numba_params = list(inspect.signature(getattr(numba_ops, name)).parameters)
        assert numba_params[: len(torch_params)] == torch_params, name


def test_importing_rusteeze_kernels_does_not_import_numba():
    code = "import sys, rusteeze, rusteeze.kernels; sys.exit('numba' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, "import rusteeze.kernels imported numba"


def test_warm_up_runs_every_kernel():
    assert numba_ops.warm_up() >= 0


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
def test_tiny_model_logits_match_torch_backend(tiny_model_dirs, arch):
    torch_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="torch").model
    numba_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="numba").model
    lens = [3, 13, 9]  # 13 > Mistral's window of 8; block_size 4 → partial blocks
    ids = torch.randint(3, torch_model.config.vocab_size, (sum(lens),), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(n) for n in lens])
    meta, blocks = contiguous_metadata(lens, 4)
    with torch.no_grad():
        expected = torch_model.compute_logits(torch_model(ids, positions, kv_caches_for(torch_model, blocks, 4), meta))
        got = numba_model.compute_logits(numba_model(ids, positions, kv_caches_for(numba_model, blocks, 4), meta))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_decode_over_several_blocks_matches_torch_backend(tiny_model_dirs):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    torch_model = load_model_from_path(tiny_model_dirs["llama"], kernel_backend="torch").model
    numba_model = load_model_from_path(tiny_model_dirs["llama"], kernel_backend="numba").model
    assert paged_greedy(numba_model, prompts, steps=10) == paged_greedy(torch_model, prompts, steps=10)


def test_engine_chunked_prefill_and_decode_through_numba(tiny_llama_dir):
    """The engine's chunked prefill and decode: greedy output equals the torch backend's."""
    prompt = list(range(3, 40))  # 37 tokens; 16 per step → three prefill chunks
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    outputs = {}
    for backend in ("torch", "numba"):
        llm = LLM(
            str(tiny_llama_dir), kernel_backend=backend, block_size=4, max_num_batched_tokens=16, kv_cache_memory="4MiB"
        )
        outputs[backend] = [o.outputs[0].token_ids for o in llm.generate([prompt, [7, 8, 9]], params, use_tqdm=False)]
    assert outputs["numba"] == outputs["torch"]
    assert all(len(t) == 8 for t in outputs["numba"])
