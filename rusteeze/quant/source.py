"""The float model a quantization starts from: an HF safetensors directory or a GGUF file.

Either way it is a config (as HF ``config.json`` JSON), a stream of HF-named
float tensors, and the tokenizer / generation files to copy beside the result.
"""

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rusteeze.errors import ModelNotFoundError, QuantizationError
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


@dataclass
class Source:
    """A float model to quantize.

    Attributes:
        path: the directory or .gguf file.
        config: its ModelConfig.
        hf_config: the config.json dict to write out (without quantization_config).
        tensors: a callable returning a fresh stream of (HF name, float tensor).
        write_side_files: copies/writes tokenizer and generation files into a directory.
    """

    path: Path
    config: ModelConfig
    hf_config: dict[str, Any]
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    write_side_files: Callable[[Path], None]


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

    return Source(path, cfg, raw, lambda: iter_safetensors(files), side_files)


def _gguf_source(path: Path) -> Source:
    from rusteeze.loader.gguf_loader import iter_gguf_tensors, model_config_from_gguf, open_gguf
    from rusteeze.loader.gguf_tokenizer import tokenizer_from_gguf

    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    tokenizer = tokenizer_from_gguf(reader, path)

    def side_files(out: Path) -> None:
        tokenizer.backend.save(str(out / "tokenizer.json"))
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

    return Source(path, cfg, hf_config_dict(cfg), lambda: iter_gguf_tensors(reader, cfg, path), side_files)


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
