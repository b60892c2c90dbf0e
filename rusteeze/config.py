"""EngineConfig: one frozen, validated configuration shared by every subcommand.

Values come from (highest first) CLI flags / ``LLM(**overrides)``, a TOML file,
then the defaults below. The TOML file holds engine keys at the top level and
server and chat settings in their own ``[server]`` and ``[chat]`` tables.
"""

import difflib
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DTYPES = ("auto", "float32", "float16", "bfloat16")
KERNEL_BACKENDS = ("auto", "triton", "numba", "torch")
SECTION_TABLES = ("server", "chat")
ENGINE_TABLES = ("speculative",)  # tables that are EngineConfig fields
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: int | str, key: str = "size") -> int:
    """Parse a byte count given as an int or a string such as "2GiB", "512 MB" or "1.5g".

    Raises:
        ConfigError: naming ``key`` when the value is not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{key} = {value!r} is not a size; use bytes or a string like '2GiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise ConfigError(f"{key} = {value!r} is not a size; use bytes or a string like '2GiB' or '512MB'")
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ConfigError(f"{key} = {value!r} is not a size; use bytes or a string like '2GiB'")
    if size <= 0:
        raise ConfigError(f"{key} = {value!r} must be positive")
    return size


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to load a model and serve requests.

    Attributes:
        model: a hub id, a local HF directory, a .gguf file or a store name;
            None means the default model.
        dtype: "auto" (float32 on CPU, the checkpoint's 16-bit type on CUDA),
            "float32", "float16" or "bfloat16".
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
        max_model_len: longest context (prompt + output); None means the model's.
        block_size: tokens per KV-cache block.
        kv_cache_memory: bytes for the KV cache (or a string like "2GiB"); None: 1 GiB on the
            CPU, and on CUDA ``gpu_memory_utilization`` of the GPU's memory less what the weights,
            the rest of the device and a profiled activation peak take (as vLLM does).
        max_num_seqs: most sequences in one step.
        max_num_batched_tokens: most tokens (prefill + decode) in one step.
        enable_prefix_caching: reuse KV blocks of identical prompt prefixes.
        kernel_backend: "auto" (Triton on CUDA, torch otherwise), "triton", "numba"
            (the Numba CPU kernels; quantized matmuls stay torch's) or "torch".
        seed: seed of the engine's random generator for requests without their own seed
            (the process's global torch generator is not touched).
        gguf_direct: load a GGUF's Q8_0/Q4_0/Q4_1 tensors straight into the int8/int4
            quantized layers; False dequantizes every GGUF tensor to ``dtype`` (the
            float path). No effect on other models.
        speculative: speculative decoding (the ``[speculative]`` table: ``method``,
            ``num_speculative_tokens``, ``prompt_lookup_min``/``_max``, ``draft_model``; a dict is
            turned into a ``SpeculativeConfig``); None (the default): off.
        enforce_eager: run every step eagerly (no CUDA graphs for decode steps on CUDA).
        gpu_memory_utilization: the fraction (0 < x <= 1) of the GPU's memory the engine may
            use when ``kv_cache_memory`` is unset on CUDA.
    """

    model: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    max_model_len: int | None = None
    block_size: int = 16
    kv_cache_memory: int | str | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    kernel_backend: str = "auto"
    seed: int = 0
    gguf_direct: bool = True
    speculative: SpeculativeConfig | dict | None = None
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise ConfigError(f"model = {self.model!r} must be a non-empty string (hub id, directory or .gguf file)")
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("kernel_backend", self.kernel_backend, KERNEL_BACKENDS)
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device = {self.device!r} is not valid; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.max_model_len is not None:
            _check_int("max_model_len", self.max_model_len, minimum=1)
        _check_int("block_size", self.block_size, minimum=1)
        if self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size = {self.block_size} must be a power of two (e.g. 16)")
        _check_int("max_num_seqs", self.max_num_seqs, minimum=1)
        _check_int("max_num_batched_tokens", self.max_num_batched_tokens, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if not isinstance(self.enable_prefix_caching, bool):
            raise ConfigError(f"enable_prefix_caching = {self.enable_prefix_caching!r} must be true or false")
        if not isinstance(self.gguf_direct, bool):
            raise ConfigError(f"gguf_direct = {self.gguf_direct!r} must be true or false")
        object.__setattr__(self, "speculative", SpeculativeConfig.coerce(self.speculative))
        if not isinstance(self.enforce_eager, bool):
            raise ConfigError(f"enforce_eager = {self.enforce_eager!r} must be true or false")
        utilization = self.gpu_memory_utilization
        if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization = {utilization!r} must be a number in (0, 1], e.g. 0.9")
        if self.kv_cache_memory is not None:
            object.__setattr__(self, "kv_cache_memory", parse_size(self.kv_cache_memory, "kv_cache_memory"))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of every field, which are also the TOML keys."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "EngineConfig":
        """Build a config from a mapping, rejecting unknown keys with a did-you-mean hint.

        Raises:
            ConfigError: an unknown key or an invalid value.
        """
        names = cls.field_names()
        for key in values:
            if key not in names:
                raise ConfigError(_unknown_key_message(key, names, source))
        return cls(**values)

    def replace(self, **overrides: Any) -> "EngineConfig":
        """A copy with some fields changed (validated; unknown names rejected)."""
        merged = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in overrides:
            if key not in merged:
                raise ConfigError(_unknown_key_message(key, tuple(merged), "overrides"))
        merged.update(overrides)
        return EngineConfig(**merged)


def load_config_file(path: str | Path) -> tuple[EngineConfig, dict[str, dict[str, Any]]]:
    """Read a rusteeze TOML file.

    Returns:
        The EngineConfig from the top-level keys, and the ``[server]`` and
        ``[chat]`` tables (empty dicts when absent).

    Raises:
        ConfigError: the file is missing, not valid TOML, or holds an unknown
            key or an invalid value; the message names the file.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    sections = {}
    for name in SECTION_TABLES:
        table = data.pop(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        sections[name] = table
    nested = [k for k, v in data.items() if isinstance(v, dict) and k not in ENGINE_TABLES]
    if nested:
        allowed = ", ".join(f"[{t}]" for t in SECTION_TABLES + ENGINE_TABLES)
        raise ConfigError(f"{path}: unknown table [{nested[0]}]; the tables are {allowed}")
    try:
        return EngineConfig.from_dict(data, source=str(path)), sections
    except ConfigError as e:
        message = str(e)
        raise ConfigError(message if str(path) in message else f"{path}: {message}") from None


def _unknown_key_message(key: str, names: tuple[str, ...], source: str) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
    return f"unknown key {key!r} in {source}{hint}"


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not valid; use one of: {', '.join(allowed)}")


def _check_int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} = {value!r} must be an integer")
    if value < minimum:
        raise ConfigError(f"{key} = {value!r} must be at least {minimum}")
