"""Parse an HF ``config.json`` / ``generation_config.json`` into rusteeze's types."""

import json
from pathlib import Path
from typing import Any

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.models.config import ModelConfig
from rusteeze.models.registry import ARCHITECTURES

_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from ``path``, raising ModelLoadError naming the file on failure."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def model_config_from_hf(raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from an HF config dict.

    Raises:
        UnsupportedModelError: unknown architecture or model_type.
        ModelLoadError: a required key is missing.
    """
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(f"{source}: architecture {archs or None} is not supported; supported: {supported}")
    for key in _REQUIRED:
        if key not in raw:
            raise ModelLoadError(f"{source}: required key {key!r} is missing")
    heads = raw["num_attention_heads"]
    rope_scaling = raw.get("rope_scaling")
    rope_theta = raw.get("rope_theta")
    params = raw.get("rope_parameters")  # transformers 5 moves rope settings here
    if isinstance(params, dict):
        rope_theta = params.get("rope_theta", rope_theta)
        if params.get("rope_type", "default") != "default":
            rope_scaling = params
    sliding = raw.get("sliding_window")
    if arch.startswith("Qwen") and not raw.get("use_sliding_window", False):
        sliding = None
    return ModelConfig(
        architecture=arch,
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope_theta or 10000.0),
        rope_scaling=rope_scaling,
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=sliding,
        attention_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
        qk_norm=arch == "Qwen3ForCausalLM",
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=_eos_ids(raw.get("eos_token_id")),
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        extra={k: v for k, v in raw.items() if k in ("model_type", "quantization_config")},
    )


def generation_defaults(path: Path) -> dict[str, Any]:
    """Sampling defaults from ``generation_config.json`` (empty when the file is absent).

    Keeps temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens
    and the EOS ids (as ``eos_token_ids``), which is what requests inherit.
    """
    if not path.exists():
        return {}
    raw = read_json(path)
    keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens")
    out = {k: raw[k] for k in keys if raw.get(k) is not None}
    if raw.get("do_sample") is False:
        out["temperature"] = 0.0
    eos = _eos_ids(raw.get("eos_token_id"))
    if eos:
        out["eos_token_ids"] = eos
    return out
