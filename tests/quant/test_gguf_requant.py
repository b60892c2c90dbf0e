"""Quantizing an already-quantized GGUF: Q4_0/Q4_1 kept bit-exact in int4, other types from floats, warnings."""

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize
from safetensors.torch import load_file
from typer.testing import CliRunner

from rusteeze.commands.main import app
from rusteeze.errors import QuantizationError, UnsupportedModelError
from rusteeze.loader.gguf_loader import iter_gguf_tensors, model_config_from_gguf, open_gguf
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.quant.config import QuantConfig
from rusteeze.quant.convert import dir_size, quantize_model
from rusteeze.quant.layers import QuantEmbedding
from rusteeze.quant.tensors import dequantize_int4, dequantize_int8, q8_0_to_int8, quantize_int4

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 128, 256, 4, 2, 2
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list(LETTERS) + [f"▁{c}" for c in LETTERS]
TOKEN_TYPES = [2, 3, 3] + [6] * 256 + [1] * 52
# Projection (GGUF leaf name → type) of the default tiny file: both 4-bit kinds, on permuted Q/K rows too.
FOUR_BIT = {
    "attn_q": QT.Q4_0,
    "attn_k": QT.Q4_1,
    "attn_v": QT.Q4_1,
    "attn_output": QT.Q4_1,
    "ffn_gate": QT.Q4_0,
    "ffn_up": QT.Q4_1,
    "ffn_down": QT.Q4_1,
}
ALL_Q4_1 = dict.fromkeys(FOUR_BIT, QT.Q4_1)
SHAPES = {
    "attn_q": (HIDDEN, HIDDEN),
    "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
    "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
    "attn_output": (HIDDEN, HIDDEN),
    "ffn_gate": (FFN, HIDDEN),
    "ffn_up": (FFN, HIDDEN),
    "ffn_down": (HIDDEN, FFN),
}


def write_tiny_gguf(path: Path, types: dict[str, QT] = FOUR_BIT, arch: str = "llama", seed: int = 0) -> Path:
    """A tiny GGUF as llama.cpp lays it out: ``types`` for the projections, Q8_0 embedding and output, F32 norms."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TOKEN_TYPES)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(52)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def add(name: str, shape: tuple[int, ...], qtype: QT) -> None:
        w = (rng.uniform(0.5, 1.5, shape) if len(shape) == 1 else rng.normal(0.0, 0.15, shape)).astype(np.float32)
        if qtype == QT.F32:
            writer.add_tensor(name, w)
        elif qtype == QT.F16:
            writer.add_tensor(name, w.astype(np.float16))
        else:
            writer.add_tensor(name, quantize(w, qtype), raw_dtype=qtype)

    add("token_embd.weight", (len(TOKENS), HIDDEN), QT.Q8_0)
    for i in range(LAYERS):
        add(f"blk.{i}.attn_norm.weight", (HIDDEN,), QT.F32)
        add(f"blk.{i}.ffn_norm.weight", (HIDDEN,), QT.F32)
        for leaf, qtype in types.items():
            add(f"blk.{i}.{leaf}.weight", SHAPES[leaf], qtype)
            if arch == "qwen2" and leaf in ("attn_q", "attn_k", "attn_v"):
                add(f"blk.{i}.{leaf}.bias", SHAPES[leaf][:1], QT.F32)
    add("output_norm.weight", (HIDDEN,), QT.F32)
    add("output.weight", (len(TOKENS), HIDDEN), QT.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def gguf_floats(path: Path) -> dict[str, torch.Tensor]:
    """HF name → the GGUF's tensors dequantized to float32 by the loader (Q/K rows unpermuted)."""
    reader = open_gguf(path)
    return dict(iter_gguf_tensors(reader, model_config_from_gguf(reader, path), path))


def gguf_blocks(path: Path, name: str) -> np.ndarray:
    tensor = next(t for t in open_gguf(path).tensors if t.name == name)
    return tensor.data.reshape(int(tensor.shape[-1]), -1)


# llama.cpp permutes llama's Q/K rows, not qwen2's.
@pytest.mark.parametrize(("arch", "types"), [("llama", FOUR_BIT), ("qwen2", FOUR_BIT), ("llama", ALL_Q4_1)])
def test_int4_keeps_q4_0_and_q4_1_blocks_bit_exact(tmp_path, arch, types):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", types, arch=arch)
    warnings: list[str] = []
    result = quantize_model(src, tmp_path / "q", QuantConfig("int4"), on_warning=warnings.append)
    assert warnings == []
    assert result.quant == QuantConfig("int4", 32, quantize_embeddings=True, embedding_group_size=32)
    assert result.source_bytes == src.stat().st_size and result.output_bytes == dir_size(tmp_path / "q")
    # Weight bytes: Q4_1 blocks (f16 d, f16 m, 16 bytes) and Q8_0 blocks (f16 d, 32 bytes) take as many as ours;
    # Q4_0 blocks have no min and ours store -8d: 2 more bytes per 32 weights (our int4 format always has mins).
    # (The whole directory's size is checked on SmolLM2: here the JSON files and the safetensors header, ~10 KB,
    # outweigh the GGUF's metadata.)
    q4_0_mins = sum(LAYERS * SHAPES[leaf][0] * SHAPES[leaf][1] // 16 for leaf, t in types.items() if t == QT.Q4_0)
    out = load_file(str(tmp_path / "q" / "model.safetensors"))
    out_bytes = sum(t.numel() * t.element_size() for t in out.values())
    assert out_bytes == sum(t.data.nbytes for t in open_gguf(src).tensors) + q4_0_mins
    summary = result.summary()
    assert summary.startswith("source: GGUF Q4_1" + ("+Q4_0 (" if q4_0_mins else " ("))
    assert "→ int4 group 32 (kept bit-exact)" in summary
    assert "embeddings int8 group 32 (kept bit-exact)" in summary
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"] == {
        "quant_method": "rusteeze",
        "method": "int4",
        "bits": 4,
        "group_size": 32,
        "format_version": 2,
        "embeddings": "int8",
        "embeddings_group_size": 32,
    }

    floats = gguf_floats(src)
    projections = [n for n in floats if n.endswith("proj.weight")]
    assert len(projections) == 7 * LAYERS
    for name in projections:
        base = name.removesuffix(".weight")
        assert out[f"{base}.scales"].dtype == out[f"{base}.mins"].dtype == torch.float16, name
        w = dequantize_int4(out[f"{base}.qweight"], out[f"{base}.scales"], out[f"{base}.mins"], 32)
        assert torch.equal(w, floats[name]), name
    for name in [n for n in floats if n.endswith(("norm.weight", "bias"))]:  # F32 vectors stay float32, exact
        assert out[name].dtype == torch.float32 and torch.equal(out[name], floats[name]), name
    # Q8_0 embedding and lm_head: int8 with one float16 scale per 32 columns, the blocks as stored.
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        q, scale = out[name], out[f"{name}_scale"]
        assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (len(TOKENS), HIDDEN // 32)
        w = (q.float().reshape(len(TOKENS), -1, 32) * scale.float()[..., None]).reshape(q.shape)
        assert torch.equal(w, floats[name]), name

    model = load_model_from_path(tmp_path / "q", kernel_backend="torch").model
    assert isinstance(model.embed_tokens, QuantEmbedding) and model.embed_tokens.group_size == 32
    assert torch.equal(model.embed_tokens(torch.tensor([5, 300])), floats["model.embed_tokens.weight"][[5, 300]])
    assert torch.equal(model.layers[0].mlp.down_proj.qweight, out["model.layers.0.mlp.down_proj.qweight"])


def test_other_types_are_quantized_from_floats(tmp_path):
    types = {**FOUR_BIT, "attn_v": QT.Q5_0, "ffn_down": QT.F16}
    src = write_tiny_gguf(tmp_path / "mixed.gguf", types)
    result = quantize_model(src, tmp_path / "q", QuantConfig("int4"))
    assert result.quant.group_size == 32
    assert "(10 kept bit-exact, 2 requantized from dequantized Q5_0, 2 quantized from F16)" in result.summary()
    out = load_file(str(tmp_path / "q" / "model.safetensors"))
    floats = gguf_floats(src)
    for name in ("model.layers.1.self_attn.v_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        base = name.removesuffix(".weight")
        expected = quantize_int4(floats[name], 32)
        assert torch.equal(out[f"{base}.qweight"], expected[0]), name
        assert torch.equal(out[f"{base}.scales"], expected[1].half()), name
    up = [out[f"model.layers.0.mlp.up_proj.{leaf}"] for leaf in ("qweight", "scales", "mins")]
    assert torch.equal(dequantize_int4(*up, 32), floats["model.layers.0.mlp.up_proj.weight"])


@pytest.mark.parametrize("group", [64, 128])
def test_coarser_group_warns_once_on_stderr_and_requantizes(tmp_path, group):
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", str(src), "--method", "int4", "-g", str(group), "-o", str(out)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        f"Warning: group size {group} requantizes the already-quantized GGUF Q4_1/Q4_0 weights (lossy); "
        "the default, --group-size 32, keeps them bit-exact"
    ]
    assert "Warning" not in result.stdout
    assert f"→ int4 group {group} (requantized from dequantized Q4_0/Q4_1)" in result.stdout
    assert load_file(str(out / "model.safetensors"))["model.layers.0.mlp.up_proj.scales"].shape == (
        FFN,
        HIDDEN // group,
    )


def test_default_group_keeps_bit_exact_without_warning_through_the_cli(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    result = CliRunner().invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q")])
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.stderr
    assert "source: GGUF Q4_1+Q4_0 (" in result.stdout and "→ int4 group 32 (kept bit-exact)" in result.stdout


def test_int8_from_a_4bit_source_requantizes_and_says_so(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf", {**FOUR_BIT, "attn_v": QT.Q8_0})
    warnings: list[str] = []
    result = quantize_model(src, tmp_path / "q", QuantConfig("int8"), on_warning=warnings.append)
    assert warnings == []
    summary = result.summary()
    assert "→ int8 (12 requantized from dequantized Q4_0/Q4_1, 2 Q8_0 repacked per row)" in summary
    assert "embeddings int8 group 32 (kept bit-exact)" in summary
    out = load_file(str(tmp_path / "q" / "model.safetensors"))
    floats = gguf_floats(src)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"):
        err = (dequantize_int8(out[name], out[f"{name}_scale"]) - floats[name]).abs().amax(dim=1)
        assert (err <= out[f"{name}_scale"] / 2 + 1e-6).all(), name
    q, scale = q8_0_to_int8(gguf_blocks(src, "blk.0.attn_v.weight"))  # not permuted: v rows are as stored
    assert torch.equal(out["model.layers.0.self_attn.v_proj.weight"], q)
    assert torch.equal(out["model.layers.0.self_attn.v_proj.weight_scale"], scale)


def test_quantization_config_versions(tmp_path):
    block = {"quant_method": "rusteeze", "method": "int4", "bits": 4, "group_size": 32, "embeddings": "int8"}
    assert QuantConfig.from_json({**block, "format_version": 1}) == QuantConfig("int4", 32, True)
    v2 = {**block, "format_version": 2, "embeddings_group_size": 32}
    assert QuantConfig.from_json(v2) == QuantConfig("int4", 32, True, 32)
    assert QuantConfig("int4", 32, True, 32).to_json() == v2 | {"bits": 4}
    with pytest.raises(UnsupportedModelError, match="format_version 3"):
        QuantConfig.from_json({**block, "format_version": 3})
    with pytest.raises(QuantizationError, match="embedding group size must be 32"):
        QuantConfig("int4", 32, True, 64)


def test_embeddings_can_stay_float16(tmp_path):
    src = write_tiny_gguf(tmp_path / "tiny.gguf")
    result = quantize_model(src, tmp_path / "q", QuantConfig("int4", quantize_embeddings=False))
    assert "embeddings float16:" in result.summary()
    out = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert out["model.embed_tokens.weight"].dtype == torch.float16
