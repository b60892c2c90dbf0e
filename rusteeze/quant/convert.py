"""Quantize a float model into a new HF-layout directory, atomically.

The source tensors are streamed one at a time: projection weights are
quantized (int8 per channel or int4 per group), the embedding and lm_head too
with ``quantize_embeddings`` (int8 per row), everything else is stored in
float16. Output goes to a temporary directory beside OUT that is renamed at the
end, so OUT is either absent, the old model (without ``force``), or complete.
"""

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from rusteeze.errors import QuantizationError
from rusteeze.models.weights import module_name
from rusteeze.quant.config import QuantConfig, plan_for
from rusteeze.quant.source import Source, open_source
from rusteeze.quant.tensors import quantize_int4, quantize_int8

SHARD_BYTES = 2 * 1024**3


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` did: sizes in bytes, seconds, output path."""

    output: Path
    source_bytes: int
    output_bytes: int
    seconds: float


def dir_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_request(source: Source, quant: QuantConfig) -> None:
    """Reject requests the model cannot take before anything is written.

    Raises:
        QuantizationError: the int4 group size does not divide a projection's input width.
    """
    cfg = source.config
    if quant.group_size is None:
        return
    widths = {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size}
    widths["num_attention_heads * head_dim"] = cfg.num_attention_heads * cfg.head_dim
    for what, k in widths.items():
        if k % quant.group_size:
            raise QuantizationError(
                f"group size {quant.group_size} does not divide {what} = {k} of {source.path}; "
                "try --group-size 32 (or 64)"
            )


def quantized_tensors(
    source: Source, quant: QuantConfig, on_module: Callable[[str], None] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the output checkpoint's (name, tensor) pairs, quantizing as the plan says."""
    cfg = source.config
    plan = plan_for(quant, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    for name, tensor in source.tensors():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        module = module_name(name)
        layer = plan.get(module) if name.endswith(".weight") else None
        if on_module is not None:
            on_module(name)
        if layer is None:
            yield name, tensor.to(torch.float16) if tensor.is_floating_point() else tensor
        elif layer.method == "int8":
            q, scale = quantize_int8(tensor)
            yield name, q
            yield f"{name}_scale", scale
        else:
            packed, scales, mins = quantize_int4(tensor, layer.group_size)
            base = name.removesuffix(".weight")
            yield f"{base}.qweight", packed
            yield f"{base}.scales", scales.to(torch.float16)
            yield f"{base}.mins", mins.to(torch.float16)


def _save_shards(tensors: Iterator[tuple[str, torch.Tensor]], out: Path) -> None:
    """Write model.safetensors, or model-0000i-of-0000n.safetensors + index past SHARD_BYTES."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors:
        if size > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous()
        size += t.numel() * t.element_size()
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}, indent=2))


def quantize_model(
    model: str | Path,
    output: str | Path,
    quant: QuantConfig,
    force: bool = False,
    on_module: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` (HF directory or .gguf) into the HF directory ``output``.

    Args:
        on_module: called with each source tensor name as it is processed (progress).

    Raises:
        QuantizationError: OUT exists without ``force``, OUT is the model itself,
            the model is already quantized, or the group size does not fit.
        ModelNotFoundError / UnsupportedModelError / ModelLoadError: from opening the model.
    """
    start = time.perf_counter()
    src_path, out = Path(model).resolve(), Path(output).resolve()
    if out == src_path or src_path.is_relative_to(out) or (src_path.is_dir() and out.is_relative_to(src_path)):
        raise QuantizationError(f"output {out} overlaps the model {src_path}; choose another -o")
    if out.exists() and not force:
        raise QuantizationError(f"{out} already exists; pass --force to replace it")
    source = open_source(src_path)
    check_request(source, quant)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)
    try:
        _save_shards(quantized_tensors(source, quant, on_module), tmp)
        config = {**source.hf_config, "quantization_config": quant.to_json(), "torch_dtype": "float16"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        source.write_side_files(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return QuantizeResult(out, dir_size(src_path), dir_size(out), time.perf_counter() - start)
