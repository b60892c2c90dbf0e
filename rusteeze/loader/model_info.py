"""Describe a model on disk without loading it: format, architecture, parameter count, quantization.

`rusteeze list` and `rusteeze pull` show these figures. They come straight from the files:
`config.json` plus the safetensors headers (8-byte length + JSON: names, dtypes and shapes) for an
HF directory, the metadata and tensor table of a GGUF file (read with `gguf.GGUFReader`). No
tensor data is read, so describing a multi-gigabyte model takes milliseconds to seconds.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rusteeze.errors import ModelLoadError

# HF `torch_dtype` / `dtype` values → the short names GGUF users know.
_DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "float64": "F64"}
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors format caps the header at 100 MB


@dataclass(frozen=True)
class ModelInfo:
    """What `rusteeze list` shows about a model.

    Attributes:
        format: "hf" (config.json + safetensors) or "gguf".
        architecture: the model family, e.g. "llama", "qwen2" (HF `model_type` / GGUF `general.architecture`).
        parameters: the number of weights, counted from tensor shapes (None when no weights are present).
        quantization: e.g. "BF16", "Q4_1", "gptq int4".
    """

    format: str
    architecture: str
    parameters: int | None
    quantization: str


def is_hf_dir(path: Path) -> bool:
    """True when `path` is a directory holding a `config.json` (the HF layout)."""
    return path.is_dir() and (path / "config.json").is_file()


def is_gguf_file(path: Path) -> bool:
    """True when `path` is a regular file named `*.gguf`."""
    return path.is_file() and path.suffix.lower() == ".gguf"


def describe(path: Path) -> ModelInfo:
    """Describe the model at `path`: an HF directory or a `.gguf` file.

    Raises:
        ModelLoadError: the files exist but cannot be parsed (names the file and what is wrong).
        ModelNotFoundError is never raised here: callers check the path first.
    """
    return describe_gguf(path) if is_gguf_file(path) else describe_hf_dir(path)


def describe_hf_dir(path: Path) -> ModelInfo:
    """Describe an HF model directory from its `config.json` and safetensors headers."""
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{config_path}: cannot read the model config ({e})") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    architecture = config.get("model_type") or next(iter(config.get("architectures") or []), None) or "unknown"
    shards = sorted(path.glob("*.safetensors"))
    parameters = sum(_safetensors_parameters(shard) for shard in shards) if shards else None
    return ModelInfo("hf", str(architecture), parameters, _hf_quantization(config))


def describe_gguf(path: Path) -> ModelInfo:
    """Describe a GGUF file from its metadata (`general.architecture`, `general.file_type`) and tensor table."""
    from gguf import GGMLQuantizationType, LlamaFileType

    from rusteeze.loader.gguf_file import GGUFFile

    try:
        reader = GGUFFile(path)  # raises ModelLoadError naming the file when it is bad
    except OSError as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e})") from e

    def field(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None and f.types else None

    architecture = field("general.architecture") or "unknown"
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    file_type = field("general.file_type")
    try:
        quantization = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        # No (or an unknown) file type: name the most common type among the 2-D weights.
        weight_types = Counter(t.tensor_type for t in reader.tensors if len(t.shape) >= 2)
        kind = weight_types.most_common(1)[0][0] if weight_types else None
        quantization = GGMLQuantizationType(kind).name if kind is not None else "unknown"
    if quantization == "GUESSED":
        quantization = "unknown"
    return ModelInfo("gguf", str(architecture), parameters or None, quantization)


def _safetensors_parameters(path: Path) -> int:
    """Count the elements of every tensor listed in a safetensors header."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header length {length} is larger than the format allows")
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({e})") from e
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))


def _hf_quantization(config: dict) -> str:
    """The quantization named by `quantization_config`, else the checkpoint dtype ("BF16", "F32"…)."""
    qc = config.get("quantization_config")
    if isinstance(qc, dict):
        method = str(qc.get("quant_method") or qc.get("method") or "quantized")
        bits = qc.get("bits") or qc.get("w_bit") or qc.get("weight_bits")
        if bits is None and qc.get("load_in_8bit"):
            bits = 8
        if bits is None and qc.get("load_in_4bit"):
            bits = 4
        label = f"{method} int{bits}" if bits else method
        group = qc.get("group_size") or qc.get("q_group_size")
        return f"{label} g{group}" if group and group > 0 else label
    dtype = config.get("torch_dtype") or config.get("dtype")
    return _DTYPE_NAMES.get(str(dtype), str(dtype).upper() if dtype else "unknown")


def human_size(n: int) -> str:
    """Bytes in decimal units, as `ollama list` shows them: "98.4 MB", "1.7 GB", "512 B"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def human_parameters(n: int | None) -> str:
    """A parameter count with three significant digits: "135M", "1.71B", "4.16K"; "-" when unknown."""
    if not n:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale * 0.9995:  # 999,950,000 reads "1B", not "1e+03M"
            return f"{n / scale:.3g}{unit}"
    return str(n)
