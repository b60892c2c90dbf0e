"""`rusteeze quantize` on the real SmolLM2 Q4_1 GGUF through the installed CLI: no bigger, bit-exact, says Paris."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rusteeze import LLM, SamplingParams
from rusteeze.loader.gguf_loader import iter_gguf_tensors, model_config_from_gguf, open_gguf
from rusteeze.quant.convert import dir_size
from rusteeze.quant.tensors import dequantize_int4

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on the shared 2-core test machines two contended OpenMP threads run ~10-30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli() -> str:
    found = shutil.which("rusteeze") or os.path.join(os.path.dirname(sys.executable), "rusteeze")
    if not os.path.isfile(found):
        pytest.skip("the rusteeze entry point is not installed")
    return found


@pytest.fixture(scope="module")
def int4_dir(smollm2_gguf_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "int4"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [_cli(), "quantize", smollm2_gguf_path, "--method", "int4", "-o", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    return out, run


def test_int4_is_no_bigger_than_the_gguf_and_says_where_it_came_from(smollm2_gguf_path, int4_dir):
    out, run = int4_dir
    assert dir_size(out) <= os.path.getsize(smollm2_gguf_path)
    assert "Warning" not in run.stderr
    summary = [line for line in run.stdout.splitlines() if line.startswith("source: ")]
    assert len(summary) == 1, run.stdout
    assert summary[0].startswith(
        "source: GGUF Q4_1 (98.4 MB) → int4 group 32 (kept bit-exact), embeddings int8 group 32 (kept bit-exact): "
    )


def test_int4_weights_are_the_gguf_weights(smollm2_gguf_path, int4_dir):
    out, _ = int4_dir
    path = Path(smollm2_gguf_path)
    reader = open_gguf(path)
    checked = 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for name, w in iter_gguf_tensors(reader, model_config_from_gguf(reader, path), path):
            if name.endswith("proj.weight"):
                base = name.removesuffix(".weight")
                parts = [f.get_tensor(f"{base}.{leaf}") for leaf in ("qweight", "scales", "mins")]
                assert torch.equal(dequantize_int4(*parts, 32), w), name
            elif name.endswith("norm.weight"):
                assert torch.equal(f.get_tensor(name), w), name
            else:
                assert name == "model.embed_tokens.weight"  # tied: no lm_head
                q, scale = f.get_tensor(name).float(), f.get_tensor(f"{name}_scale").float()
                assert torch.equal((q.reshape(q.shape[0], -1, 32) * scale[..., None]).reshape(q.shape), w)
            checked += 1
    assert checked == 9 * 30 + 2


def test_int4_answers_paris_with_the_float_models_tokens(smollm2_gguf_path, int4_dir):
    out, _ = int4_dir
    small = {"kv_cache_memory": "64MiB"}  # the default 1 GiB, poisoned with NaN by the suite, only costs time
    answer = LLM(str(out), **small).chat(QUESTION, SamplingParams(max_tokens=24, temperature=0))[0].outputs[0]
    assert "Paris" in answer.text, answer.text
    # Every weight is the GGUF's, bit for bit: the greedy tokens match the GGUF dequantized to float32 on the
    # torch path.
    float_llm = LLM(smollm2_gguf_path, gguf_direct=False, dtype="float32", kernel_backend="torch", **small)
    expected = float_llm.chat(QUESTION, SamplingParams(max_tokens=24, temperature=0))[0].outputs[0].token_ids
    assert answer.token_ids == expected


def test_group_that_does_not_fit_is_an_error_without_the_requantize_warning(smollm2_gguf_path, tmp_path):
    from typer.testing import CliRunner

    from rusteeze.commands.main import app

    result = CliRunner().invoke(app, ["quantize", smollm2_gguf_path, "-g", "128", "-o", str(tmp_path / "q")])
    assert result.exit_code == 1
    assert "group size 128 does not divide hidden_size = 576" in result.stderr
    assert "Warning" not in result.stderr and list(tmp_path.iterdir()) == []
