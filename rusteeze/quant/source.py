"""The model a quantization starts from: an HF safetensors directory or a GGUF file.

Either way it is a config (as HF ``config.json`` JSON), a stream of HF-named
tensors, and the tokenizer / generation files to copy beside the result. Each
tensor can be read as floats; a GGUF tensor also exposes its stored blocks and
type, so already-quantized weights can be repacked without a float round trip.
"""

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from rusteeze.errors import ModelLoadError, ModelNotFoundError, QuantizationError
from rusteeze.loader.hf_config import model_config_from_hf, read_json
from rusteeze.models.config import ModelConfig

HF_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
)


QT = GGMLQuantizationType
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)
_PERMUTED = ("llama", "mistral")  # architectures whose Q/K rows llama.cpp permutes (as in gguf_loader)


@dataclass
class SourceTensor:
    """One tensor of the source, read on demand.

    Attributes:
        name: its HF name.
        read: → the tensor in HF layout (GGUF: dequantized to float32, Q/K rows unpermuted).
        gguf_type: the GGUF type it is stored in; None for safetensors.
        blocks: a GGUF tensor's stored rows, [rows, bytes per row] (a memory-mapped view); None for safetensors.
        qk_heads: heads of a Q/K projection whose rows llama.cpp's converter permuted: anything made
            from ``blocks`` must go through ``unpermute_qk(x, qk_heads)``; None when not permuted.
    """

    name: str
    read: Callable[[], torch.Tensor]
    gguf_type: GGMLQuantizationType | None = None
    blocks: np.ndarray | None = None
    qk_heads: int | None = None


@dataclass
class Source:
    """A model to quantize.

    Attributes:
        path: the directory or .gguf file.
        config: its ModelConfig.
        hf_config: the config.json dict to write out (without quantization_config).
        tensors: a callable returning a fresh stream of SourceTensor.
        write_side_files: copies/writes tokenizer and generation files into a directory.
        gguf_types: HF tensor name → GGUF type (empty for safetensors).
    """

    path: Path
    config: ModelConfig
    hf_config: dict[str, Any]
    tensors: Callable[[], Iterator[SourceTensor]]
    write_side_files: Callable[[Path], None]
    gguf_types: dict[str, GGMLQuantizationType] = field(default_factory=dict)

    def projection_types(self) -> list[GGMLQuantizationType]:
        """GGUF types of the attention/MLP projection weights, most parameters first (empty for safetensors)."""
        counts: dict[GGMLQuantizationType, int] = {}
        for name, qtype in self.gguf_types.items():
            if name.startswith("model.layers.") and name.endswith("proj.weight"):
                counts[qtype] = counts.get(qtype, 0) + 1
        return sorted(counts, key=lambda t: -counts[t])

    def describe(self) -> str:
        """What the source is, e.g. "GGUF Q4_1" or "safetensors bfloat16"."""
        if self.gguf_types:
            return "GGUF " + ("+".join(t.name for t in self.projection_types()) or "F32")
        dtype = self.hf_config.get("torch_dtype") or self.hf_config.get("dtype")  # newer transformers: "dtype"
        return f"safetensors {dtype or 'float'}"


def open_source(path: Path) -> Source:
    """Open ``path`` for quantization.

    Raises:
        ModelNotFoundError: neither a .gguf file nor a directory with config.json.
        QuantizationError: the model is already quantized.
        UnsupportedModelError / ModelLoadError: see the loaders.
    """
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_source(path)
    if not (path.is_dir() and (path / "config.json").exists()):
        raise ModelNotFoundError(f"{path} is neither a .gguf file nor a directory with config.json")
    raw = read_json(path / "config.json")
    if raw.get("quantization_config") is not None:
        raise QuantizationError(f"{path} is already quantized ({raw['quantization_config']}); start from a float model")
    cfg = model_config_from_hf(raw, str(path / "config.json"))
    from rusteeze.loader.safetensors_loader import iter_safetensors, safetensors_files

    files = safetensors_files(path)

    def side_files(out: Path) -> None:
        for name in HF_SIDE_FILES:
            if (path / name).is_file():
                shutil.copy2(path / name, out / name)

    def tensors() -> Iterator[SourceTensor]:
        for name, tensor in iter_safetensors(files):
            yield SourceTensor(name, lambda t=tensor: t)

    return Source(path, cfg, raw, tensors, side_files)


def _gguf_source(path: Path) -> Source:
    from rusteeze.loader.gguf_loader import hf_tensor_name, model_config_from_gguf, open_gguf
    from rusteeze.loader.gguf_tokenizer import tokenizer_from_gguf

    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    tokenizer = tokenizer_from_gguf(reader, path)

    def side_files(out: Path) -> None:
        tokenizer.backend.save(str(out / "tokenizer.json"), pretty=False)  # compact: ~1/3 smaller
        tok_cfg = {
            "bos_token": tokenizer.bos_token,
            "eos_token": tokenizer.eos_token,
            "unk_token": tokenizer.unk_token,
            "pad_token": tokenizer.pad_token,
            "add_bos_token": tokenizer.add_bos_token,
            "chat_template": tokenizer.chat_template,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
        gen = {"eos_token_id": list(tokenizer.eos_token_ids)}
        if cfg.bos_token_id is not None:
            gen["bos_token_id"] = cfg.bos_token_id
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))

    def tensors() -> Iterator[SourceTensor]:
        yield from _gguf_tensors(reader, cfg, path)

    types = {hf_tensor_name(t.name): t.tensor_type for t in reader.tensors if hf_tensor_name(t.name) is not None}
    return Source(path, cfg, hf_config_dict(cfg), tensors, side_files, types)


class _OneTensor:
    """A GGUFFile view holding only one of its tensors (so ``iter_gguf_tensors`` reads just that)."""

    def __init__(self, reader: Any, tensor: Any) -> None:
        self.fields = reader.fields
        self.tensors = [tensor]
        self.release = reader.release


def _gguf_tensors(reader: Any, cfg: ModelConfig, path: Path) -> Iterator[SourceTensor]:
    """SourceTensors of a GGUF file; floats come from ``iter_gguf_tensors`` (same checks and unpermuting)."""
    from rusteeze.loader.gguf_loader import hf_tensor_name, iter_gguf_tensors, metadata

    arch = metadata(reader, "general.architecture")
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None:
            continue

        def read(t: Any = t) -> torch.Tensor:
            return next(iter_gguf_tensors(_OneTensor(reader, t), cfg, path))[1]

        blocks, heads = None, None
        if t.tensor_type not in FLOAT_TYPES and len(t.shape) == 2:
            rows = int(t.shape[-1])  # GGUF lists the fastest dimension first
            try:
                blocks = t.data.reshape(rows, -1)
            except ValueError as e:
                raise ModelLoadError(f"{path}: tensor {t.name!r} data does not match its shape: {e}") from None
            if arch in _PERMUTED and t.name.endswith("attn_q.weight"):
                heads = cfg.num_attention_heads
            elif arch in _PERMUTED and t.name.endswith("attn_k.weight"):
                heads = cfg.num_key_value_heads
        yield SourceTensor(name, read, t.tensor_type, blocks, heads)


def hf_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """An HF ``config.json`` dict describing ``cfg`` (for models that came from GGUF)."""
    out: dict[str, Any] = {
        "architectures": [cfg.architecture],
        "model_type": cfg.extra.get("model_type", "llama"),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": list(cfg.eos_token_ids) or None,
        "torch_dtype": "float16",
    }
    if cfg.sliding_window is not None:
        out["sliding_window"] = cfg.sliding_window
        out["use_sliding_window"] = True
    return out
