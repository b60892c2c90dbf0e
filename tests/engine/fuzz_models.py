"""The fuzzer's weight formats: a tiny model in each format, and its float32 twin.

The model under test runs on the default kernels ("auto": Numba on CPU) or on
the torch reference ops. Each quantized format is compared
with *the same quantized weights* dequantized to float32 (written out with the
dequantization math here, not the library's), run on the torch backend: a
kernel that is wrong the same way in every batch still shows against it.

* ``int8`` / ``int4``: ``rusteeze.quant.convert.quantize_model`` of the tiny HF
  model; the twin is an HF directory of the dequantized weights.
* ``q8_0`` / ``q4_0`` / ``q4_1``: a GGUF of the tiny model (llama.cpp's layout:
  Q/K rows permuted, byte-level BPE tokenizer in the metadata) loaded directly
  (``gguf_direct=True``); the twin is the same file with ``gguf_direct=False``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT
from safetensors import safe_open
from safetensors.torch import save_file

from rusteeze.loader.model_loader import load_model_from_path

HF_FORMATS = ("int8", "int4")
GGUF_FORMATS = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def load(path: Path, backend: str = "torch", **kw):
    """A LoadedModel on the CPU with the ``backend`` kernels ("auto": the default path)."""
    return load_model_from_path(path, device="cpu", kernel_backend=backend, **kw)


def quantized_pair(hf_dir: Path, method: str, tmp: Path, backend: str, dtype: str = "auto"):
    """(int8 / int4 quantized model on ``backend`` at ``dtype``, its dequantized float32 twin on torch)."""
    from rusteeze.quant.config import QuantConfig
    from rusteeze.quant.convert import quantize_model

    qdir, fdir = tmp / f"{method}-q", tmp / f"{method}-f32"
    quantize_model(hf_dir, qdir, QuantConfig(method, 32, quantize_embeddings=method == "int8"))
    write_dequantized(qdir, fdir)
    return load(qdir, backend, dtype=dtype), load(fdir)


def write_dequantized(qdir: Path, out: Path) -> None:
    """The quantized HF directory ``qdir`` as a float32 HF directory with the same weight values.

    int8: ``weight [N, K] int8 * weight_scale [N]``; int4: nibbles (even column in
    the low nibble) ``q * scales + mins`` per group of ``K / scales.shape[1]`` columns.
    """
    raw: dict[str, torch.Tensor] = {}
    for file in sorted(qdir.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118
                raw[name] = f.get_tensor(name)
    tensors = {}
    for name, t in raw.items():
        if name.endswith((".weight_scale", ".scales", ".mins")):
            continue
        if name.endswith(".qweight"):
            base = name.removesuffix(".qweight")
            q = torch.stack((t & 0x0F, t >> 4), dim=-1).flatten(1).float()  # [N, K]
            scales, mins = raw[f"{base}.scales"].float(), raw[f"{base}.mins"].float()
            group = q.shape[1] // scales.shape[1]
            w = q.view(q.shape[0], -1, group) * scales[..., None] + mins[..., None]
            tensors[f"{base}.weight"] = w.reshape(q.shape).contiguous()
        elif f"{name}_scale" in raw:
            tensors[name] = (t.float() * raw[f"{name}_scale"].float()[:, None]).contiguous()
        else:
            tensors[name] = t.float().contiguous()
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((qdir / "config.json").read_text())
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config))
    for name in _TOKENIZER_FILES:
        if (qdir / name).exists():
            shutil.copy(qdir / name, out / name)


def gguf_pair(hf_dir: Path, fmt: str, tmp: Path, backend: str, dtype: str = "auto"):
    """(the GGUF loaded directly on ``backend`` at ``dtype``, the same file dequantized to float32 on torch)."""
    path = tmp / f"tiny-{fmt}.gguf"
    write_gguf(hf_dir, path, GGUF_FORMATS[fmt])
    return load(path, backend, gguf_direct=True, dtype=dtype), load(path, gguf_direct=False)


_LAYER_NAMES = {
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


def _rope_interleave(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's Q/K rows as interleaved rotary pairs: rows (i, i + d/2) → (2i, 2i + 1)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir: Path, path: Path, qtype: QT) -> None:
    """A llama GGUF of the tiny HF model in ``hf_dir`` (no rope scaling): 2-D weights in ``qtype``, the rest F32."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg.get("rope_scaling") is None, "GGUF llama metadata here carries no rope scaling"
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["content"] for a in tok["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    with safe_open(str(hf_dir / "model.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118
            t = f.get_tensor(name).float().numpy()
            if name.startswith("model.layers."):
                _, _, i, rest = name.split(".", 3)
                gname = f"blk.{i}.{_LAYER_NAMES[rest]}"
            else:
                gname = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
                gname = gname.get(name, "output.weight")
            if gname.endswith("attn_q.weight"):
                t = _rope_interleave(t, cfg["num_attention_heads"])
            elif gname.endswith("attn_k.weight"):
                t = _rope_interleave(t, cfg["num_key_value_heads"])
            if t.ndim == 2:
                w.add_tensor(gname, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
            else:
                w.add_tensor(gname, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
