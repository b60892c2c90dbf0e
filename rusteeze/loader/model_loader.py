"""Load a model (weights, config, tokenizer, generation defaults) from a path or an EngineConfig."""

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rusteeze.config import EngineConfig
from rusteeze.errors import ConfigError, ModelNotFoundError
from rusteeze.kernels import get_ops, resolve_backend
from rusteeze.loader.gguf_loader import iter_gguf_tensors, model_config_from_gguf, open_gguf
from rusteeze.loader.hf_config import generation_defaults, model_config_from_hf, read_json
from rusteeze.loader.safetensors_loader import iter_safetensors, safetensors_files
from rusteeze.models.config import ModelConfig
from rusteeze.models.registry import build_model
from rusteeze.models.weights import load_weights
from rusteeze.quant.config import LayerQuant
from rusteeze.quant.layers import prepare_quantized
from rusteeze.quant.loading import quant_plan_from_config
from rusteeze.tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready to run, with everything needed to talk to it.

    Attributes:
        model: the nn.Module in eval mode.
        config: its ModelConfig.
        tokenizer: the tokenizer (with chat template, when the model has one).
        generation_defaults: sampling defaults from generation_config.json.
        path: the file or directory it was loaded from.
        dtype: the weights' dtype.
        device: where the weights live.
        load_seconds: wall time of the load.
        kernel_backend: the backend the model runs ("triton", "numba" or "torch"; never "auto").
    """

    model: nn.Module
    config: ModelConfig
    tokenizer: Tokenizer
    generation_defaults: dict[str, Any]
    path: Path
    dtype: torch.dtype
    device: torch.device
    load_seconds: float = field(default=0.0)
    kernel_backend: str = "torch"


def resolve_device(name: str) -> torch.device:
    """ "auto" → CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this torch build sees no CUDA device; use --device cpu (or auto)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: str) -> torch.dtype:
    """ "auto" → float32 on CPU (no fast 16-bit matmul there), else the checkpoint's 16-bit type."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if checkpoint_dtype == "bfloat16" else torch.float16


def release_freed_memory() -> None:
    """Hand the heap that loading freed (file buffers, dequantized copies) back to the OS.

    glibc keeps freed heap memory for reuse; after a load that is hundreds of
    MB of resident memory the model never uses again (SmolLM2 GGUF-direct:
    ~220 MB). No-op where ``malloc_trim`` does not exist (musl, macOS, Windows).
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _open_gguf_model(
    path: Path, gguf_direct: bool, backend: str
) -> tuple[ModelConfig, Tokenizer, Iterator[tuple[str, torch.Tensor]], dict[str, LayerQuant] | None]:
    """A GGUF file's config, tokenizer, weight stream and quantization plan (None: every tensor as float).

    Only the weight stream holds the reader, so the file's mapping and its
    metadata (the vocabulary as Python strings) are released as soon as the
    stream is consumed and dropped.
    """
    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    from rusteeze.loader.gguf_tokenizer import tokenizer_from_gguf

    tokenizer = tokenizer_from_gguf(reader, path)
    if not gguf_direct:
        return cfg, tokenizer, iter_gguf_tensors(reader, cfg, path), None
    from rusteeze.quant.gguf_direct import gguf_plan, iter_gguf_quantized

    # Group-32 int8 (exact Q8_0) where the CPU kernels will run; the Triton kernel takes one scale per row.
    plan = gguf_plan(reader, None if backend == "triton" else 32)
    return cfg, tokenizer, iter_gguf_quantized(reader, cfg, path, plan), plan


def load_model_from_path(
    path: str | Path,
    dtype: str = "auto",
    device: str = "auto",
    kernel_backend: str = "auto",
    max_model_len: int | None = None,
    gguf_direct: bool = True,
) -> LoadedModel:
    """Load an HF directory (safetensors, float or rusteeze-quantized) or a .gguf file.

    ``gguf_direct``: load a GGUF's Q8_0/Q4_0/Q4_1 weights straight into
    quantized layers (resident weights stay 4-8 bits); False dequantizes
    every tensor to ``dtype``.

    Raises:
        ModelNotFoundError: the path does not exist or holds no model.
        ModelLoadError / UnsupportedModelError: see the loaders.
        KernelError: a kernel backend this device cannot run.
        ConfigError: a CUDA device asked of a torch build without CUDA.
    """
    start = time.perf_counter()
    path = Path(path)
    plan = None
    dev = resolve_device(device)
    backend = resolve_backend(kernel_backend, dev.type)  # the one place the kernels are chosen
    if path.is_file() and path.suffix == ".gguf":
        cfg, tokenizer, weights, plan = _open_gguf_model(path, gguf_direct, backend)
        defaults: dict[str, Any] = {}
    elif path.is_dir() and (path / "config.json").exists():
        cfg = model_config_from_hf(read_json(path / "config.json"), str(path / "config.json"))
        tokenizer = Tokenizer.from_dir(path)
        defaults = generation_defaults(path / "generation_config.json")
        weights = iter_safetensors(safetensors_files(path))
        plan = quant_plan_from_config(cfg, str(path / "config.json"))
    else:
        raise ModelNotFoundError(f"{path} is neither a .gguf file nor a directory with config.json")
    torch_dtype = resolve_dtype(dtype, dev, cfg.torch_dtype)
    model = build_model(cfg, get_ops(backend), torch_dtype, dev, max_positions=max_model_len, quant_plan=plan)
    load_weights(model, weights)
    del weights  # a GGUF's reader (its metadata and the file's mapped pages) goes with it, before the repack
    if plan:  # dtype "auto": decode-sized CPU matmuls take int16 activations, bf16 GEMMs; "float32": float32 math
        prepare_quantized(model, backend, reduced_precision=dtype == "auto")
    if backend == "numba":
        from rusteeze.kernels import numba_ops

        numba_ops.prepare()
    release_freed_memory()
    return LoadedModel(
        model=model,
        config=cfg,
        tokenizer=tokenizer,
        generation_defaults=defaults,
        path=path,
        dtype=torch_dtype,
        device=dev,
        load_seconds=time.perf_counter() - start,
        kernel_backend=backend,
    )


def load_model(config: EngineConfig) -> LoadedModel:
    """Resolve ``config.model`` (path, store name, cached hub id or the default) and load it."""
    from rusteeze.loader.resolve import resolve_model

    resolved = resolve_model(config.model)
    return load_model_from_path(
        resolved.path,
        dtype=config.dtype,
        device=config.device,
        kernel_backend=config.kernel_backend,
        max_model_len=config.max_model_len,
        gguf_direct=config.gguf_direct,
    )
