"""GGUF files: metadata → ModelConfig, tensors → HF-named float tensors.

The file is parsed by :class:`GGUFFile` (fast metadata, memory-mapped data)
and quantized tensors are dequantized by vectorized code (no Python loop per
block, see ``gguf_dequant``). llama.cpp's converter permutes the rows of the Q and K
projections of ``llama`` models (interleaved rotary pairs); that permutation is
undone here so the weights match the HF layout the model expects.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from gguf import GGMLQuantizationType

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.loader.gguf_dequant import dequantize
from rusteeze.loader.gguf_file import GGUFFile
from rusteeze.models.config import ModelConfig

# GGUF general.architecture → HF architecture.
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# Architectures whose Q/K rows llama.cpp's converter permutes.
_PERMUTED = ("llama", "mistral")
SUPPORTED_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def open_gguf(path: Path) -> GGUFFile:
    """Open a GGUF file, raising ModelLoadError naming it when it is missing, truncated or corrupt."""
    try:
        return GGUFFile(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} does not exist") from None
    except OSError as e:
        raise ModelLoadError(f"{path} cannot be read: {e}") from None


def metadata(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """One metadata value (scalars, strings and arrays decoded), or ``default``."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def model_config_from_gguf(reader: GGUFFile, path: Path) -> ModelConfig:
    """Map GGUF metadata to a ModelConfig.

    Raises:
        UnsupportedModelError: the architecture is not a supported one.
        ModelLoadError: a required key is missing (naming it and the file).
    """
    arch = metadata(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        supported = ", ".join(GGUF_ARCHITECTURES)
        raise UnsupportedModelError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {supported}")

    def need(key: str) -> Any:
        value = metadata(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{path}: GGUF metadata key '{arch}.{key}' is missing")
        return value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    vocab = metadata(reader, f"{arch}.vocab_size") or len(metadata(reader, "tokenizer.ggml.tokens") or [])
    if not vocab:
        raise ModelLoadError(f"{path}: cannot tell the vocabulary size ('{arch}.vocab_size' and tokens missing)")
    rope_scaling = None
    if metadata(reader, f"{arch}.rope.scaling.type") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(metadata(reader, f"{arch}.rope.scaling.factor"))}
    names = {t.name for t in reader.tensors}
    eos = metadata(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(metadata(reader, f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(metadata(reader, f"{arch}.attention.key_length") or hidden // heads),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(metadata(reader, f"{arch}.rope.freq_base") or 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=int(metadata(reader, f"{arch}.context_length") or 2048),
        tie_word_embeddings="output.weight" not in names,
        sliding_window=metadata(reader, f"{arch}.attention.sliding_window"),
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        bos_token_id=metadata(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        torch_dtype="float32",
        extra={"gguf_file_type": metadata(reader, "general.file_type"), "model_type": arch},
    )


def hf_tensor_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, or None for tensors the model does not use (e.g. rope_freqs)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation. w: [heads * D, ...] → HF layout, same shape.

    The converter turned each head's rows from halves ``[x0..x(D/2-1), y0..]``
    into interleaved pairs ``[x0, y0, x1, y1, ...]``; this swaps them back.
    """
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def iter_gguf_tensors(reader: GGUFFile, cfg: ModelConfig, path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, float32 tensor) for every tensor the model uses, one at a time.

    Each tensor's file pages are released (``GGUFFile.release``) once the
    consumer asks for the next one, so loading never holds the whole file resident.

    Raises:
        UnsupportedModelError: a tensor type outside SUPPORTED_TYPES.
        ModelLoadError: a tensor whose data does not match its declared shape.
    """
    arch = metadata(reader, "general.architecture")
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None:
            continue
        if t.tensor_type not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"{path}: tensor {t.name!r} has unsupported type {t.tensor_type.name}")
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists the fastest dimension first
        try:
            w = dequantize(t.data, t.tensor_type, shape)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: tensor {t.name!r} data does not match shape {list(shape)}: {e}") from None
        if arch in _PERMUTED and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_qk(w, cfg.num_attention_heads)
        elif arch in _PERMUTED and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_qk(w, cfg.num_key_value_heads)
        yield name, w
        reader.release(t)  # the caller has copied it: its file pages need not stay resident
