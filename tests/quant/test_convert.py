"""Quantize tiny models: formats, round trip through the saved directory, and typed errors on bad input."""

import json

import pytest
import torch
from tiny_models import paged_greedy

from rusteeze.errors import ModelNotFoundError, QuantizationError, UnsupportedModelError
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.quant.config import QuantConfig
from rusteeze.quant.convert import quantize_model
from rusteeze.quant.layers import QuantEmbedding, QuantLinear
from rusteeze.quant.tensors import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8

PROMPTS = [[5, 9, 30, 7, 100], [3, 44, 12]]


def test_int8_and_int4_round_trip_errors_are_bounded():
    w = torch.randn(48, 128)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (48,)
    assert (dequantize_int8(q, scale) - w).abs().max() <= scale.max() / 2 + 1e-6
    packed, scales, mins = quantize_int4(w, 32)
    assert packed.shape == (48, 64) and scales.shape == mins.shape == (48, 4)
    err = (dequantize_int4(packed, scales, mins, 32) - w).square().reshape(48, 4, 32).sum(-1)
    # Plain min/max rounding (error at most half a step per weight) is the search's first candidate.
    lo, hi = w.reshape(48, 4, 32).amin(-1, keepdim=True), w.reshape(48, 4, 32).amax(-1, keepdim=True)
    step = (hi - lo) / 15
    minmax = ((torch.round((w.reshape(48, 4, 32) - lo) / step) * step + lo) - w.reshape(48, 4, 32)).square().sum(-1)
    assert (err <= minmax + 1e-5).all() and err.sum() < 0.95 * minmax.sum()
    assert ((dequantize_int4(packed, scales, mins, 32) - w).abs().reshape(48, 4, 32).amax(-1) <= step.squeeze(-1)).all()


@pytest.mark.parametrize(("method", "group", "tol"), [("int8", None, 0.05), ("int4", 32, 0.35)])
def test_quantize_save_load_gives_logits_close_to_float(tiny_llama_dir, tmp_path, method, group, tol):
    out = tmp_path / "q"
    result = quantize_model(tiny_llama_dir, out, QuantConfig(method, group, quantize_embeddings=True))
    assert result.output == out and result.output_bytes < result.source_bytes
    raw = json.loads((out / "config.json").read_text())["quantization_config"]
    assert raw["method"] == method and raw["format_version"] == 1 and raw["bits"] == (8 if method == "int8" else 4)
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()
    ref = load_model_from_path(tiny_llama_dir, kernel_backend="torch")
    quant = load_model_from_path(out, kernel_backend="torch")
    assert isinstance(quant.model.layers[0].self_attn.qkv_proj, QuantLinear)
    assert isinstance(quant.model.embed_tokens, QuantEmbedding)
    hidden = torch.randn(4, ref.config.hidden_size)
    a, b = ref.model.compute_logits(hidden), quant.model.compute_logits(hidden)
    assert (a - b).abs().max() / a.abs().max() < tol
    tokens = paged_greedy(quant.model, PROMPTS, steps=4)
    assert all(len(t) == 4 for t in tokens)


def test_unquantized_tensors_are_float16(tiny_model_dirs, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "q"
    quantize_model(tiny_model_dirs["qwen2"], out, QuantConfig("int4", 32))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {name: f.get_tensor(name).dtype for name in f.keys()}  # noqa: SIM118
    assert dtypes["model.embed_tokens.weight"] == torch.float16
    assert dtypes["model.layers.0.self_attn.q_proj.bias"] == torch.float16
    assert dtypes["model.layers.0.self_attn.q_proj.qweight"] == torch.uint8
    loaded = load_model_from_path(out, kernel_backend="torch")
    assert paged_greedy(loaded.model, PROMPTS, steps=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "int3"}, QuantizationError, "unknown quantization method"),
        ({"method": "int4", "group_size": 48}, QuantizationError, "group size must be one of"),
        ({"method": "int4", "group_size": 64}, QuantizationError, "does not divide intermediate_size = 96"),
    ],
)
def test_bad_requests_raise_and_write_nothing(tiny_llama_dir, tmp_path, kwargs, error, match):
    out = tmp_path / "q"
    with pytest.raises(error, match=match):
        quantize_model(tiny_llama_dir, out, QuantConfig(**kwargs))
    assert list(tmp_path.iterdir()) == []


def test_already_quantized_input_is_rejected(tiny_llama_dir, tmp_path):
    quantize_model(tiny_llama_dir, tmp_path / "q", QuantConfig("int8"))
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_model(tmp_path / "q", tmp_path / "q2", QuantConfig("int8"))
    assert not (tmp_path / "q2").exists()


def test_unsupported_architecture_and_missing_model(tiny_llama_dir, tmp_path):
    src = tmp_path / "gpt2"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "vocab_size": 10}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        quantize_model(src, tmp_path / "out", QuantConfig("int8"))
    with pytest.raises(ModelNotFoundError):
        quantize_model(tmp_path / "nope", tmp_path / "out", QuantConfig("int8"))
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force_and_model_is_never_overwritten(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizationError, match="already exists"):
        quantize_model(tiny_llama_dir, out, QuantConfig("int8"))
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(QuantizationError, match="overlaps the model"):
        quantize_model(tiny_llama_dir, tiny_llama_dir, QuantConfig("int8"), force=True)
    quantize_model(tiny_llama_dir, out, QuantConfig("int8"), force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no temp dir left behind
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o644}  # safetensors alone writes 0600


def test_foreign_quantization_config_is_unsupported(tiny_llama_dir, tmp_path):
    import shutil

    src = tmp_path / "gptq"
    shutil.copytree(tiny_llama_dir, src)
    raw = json.loads((src / "config.json").read_text())
    raw["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (src / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UnsupportedModelError, match="gptq"):
        load_model_from_path(src)
