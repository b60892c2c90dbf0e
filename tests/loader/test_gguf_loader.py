"""GGUF loading: metadata → config, tensor types, llama.cpp's Q/K permutation, bad files."""

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize
from tiny_models import kv_caches_for, load_hf_model

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.kernels import get_ops
from rusteeze.loader.gguf_loader import iter_gguf_tensors, model_config_from_gguf, open_gguf
from rusteeze.models.attention import contiguous_metadata
from rusteeze.models.registry import build_model
from rusteeze.models.weights import load_weights

_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to Q/K rows (written independently of the loader)."""
    out = np.empty_like(w)
    d = w.shape[0] // heads
    for h in range(heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = w[h * d + i]
            out[h * d + 2 * i + 1] = w[h * d + d // 2 + i]
    return out


def write_gguf(hf_dir: Path, path: Path, qtype: QT, arch: str = "llama") -> dict[str, np.ndarray]:
    """Convert a tiny HF llama to GGUF as llama.cpp would; returns the HF-named weights as stored (after rounding)."""
    hf = load_hf_model(hf_dir)
    cfg = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    stored = {}
    for name, p in hf.state_dict().items():
        w = p.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            gname = f"blk.{i}.{_GGUF_NAMES[rest]}"
        else:
            gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}.get(
                name, "output.weight"
            )
        if gname.endswith("attn_q.weight"):
            w = _llama_cpp_permute(w, cfg.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            w = _llama_cpp_permute(w, cfg.num_key_value_heads)
        if w.ndim == 2 and qtype != QT.F32:
            data = quantize(w, qtype)
            writer.add_tensor(gname, data, raw_dtype=qtype)
            rounded = dequantize(data, qtype).reshape(w.shape)
        else:
            writer.add_tensor(gname, w)
            rounded = w
        stored[name] = rounded
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def _logits(model, ids: list[int]) -> torch.Tensor:
    meta, blocks = contiguous_metadata([len(ids)], 4)
    with torch.no_grad():
        return model.compute_logits(
            model(torch.tensor(ids), torch.arange(len(ids)), kv_caches_for(model, blocks, 4), meta)
        )


def _load(path: Path):
    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    model = build_model(cfg, get_ops("torch"), torch.float32, torch.device("cpu"))
    load_weights(model, iter_gguf_tensors(reader, cfg, path))
    return cfg, model


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1])
def test_gguf_tensor_types_match_transformers(tiny_plain_llama_dir, tmp_path, qtype):
    """Each GGUF type, permuted as llama.cpp does, loads to the same logits as transformers on the same values."""
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    stored = write_gguf(tiny_plain_llama_dir, path, qtype)
    cfg, ours = _load(path)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 4, 2)
    hf = load_hf_model(tiny_plain_llama_dir)
    # Un-permute Q/K independently of the loader's code: invert _llama_cpp_permute by search.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            value = stored[name]
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads
                value = _invert(value, heads)
            p.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    ids = [5, 9, 17, 3, 250, 77, 12]
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    torch.testing.assert_close(_logits(ours, ids), expected, rtol=1e-4, atol=1e-4)


def _invert(w: np.ndarray, heads: int) -> np.ndarray:
    out = np.empty_like(w)
    d = w.shape[0] // heads
    for h in range(heads):
        for i in range(d // 2):
            out[h * d + i] = w[h * d + 2 * i]
            out[h * d + d // 2 + i] = w[h * d + 2 * i + 1]
    return out


def test_tied_embeddings_when_output_weight_absent(smollm2_gguf_reader, smollm2_gguf_path):
    cfg = model_config_from_gguf(smollm2_gguf_reader, Path(smollm2_gguf_path))
    assert cfg.tie_word_embeddings
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 576, 9, 3)
    assert cfg.rope_theta == 100000.0 and cfg.max_position_embeddings == 8192 and cfg.vocab_size == 49152


def test_truncated_gguf_names_the_file(tiny_plain_llama_dir, tmp_path):
    path = tmp_path / "full.gguf"
    write_gguf(tiny_plain_llama_dir, path, QT.F32)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.gguf"):
        _load(cut)


def test_garbage_file_is_not_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match=r"junk\.gguf"):
        open_gguf(path)


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        model_config_from_gguf(open_gguf(path), path)


def test_missing_metadata_key_is_named(tmp_path):
    path = tmp_path / "nokeys.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_vocab_size(4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"llama\.feed_forward_length"):
        model_config_from_gguf(open_gguf(path), path)


def test_wrong_tensor_shape_names_tensor(tiny_plain_llama_dir, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_plain_llama_dir, path, QT.F32)
    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    wrong = type(cfg)(**{**cfg.__dict__, "intermediate_size": cfg.intermediate_size * 2})
    model = build_model(wrong, get_ops("torch"), torch.float32, torch.device("cpu"))
    with pytest.raises(ModelLoadError, match=r"mlp\.(gate|up|down)_proj.*expected"):
        load_weights(model, iter_gguf_tensors(reader, wrong, path))
