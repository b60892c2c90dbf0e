"""Quantize a model into a new HF-layout directory, atomically.

The source tensors are streamed one at a time: projection weights are
quantized (int8 per channel or int4 per group), the embedding and lm_head too
with ``quantize_embeddings`` (int8 per row), everything else is stored in
float16 (a GGUF's F32 norms stay float32). Output goes to a temporary directory
beside OUT that is renamed at the end, so OUT is either absent, the old model
(without ``force``), or complete.

From a GGUF whose weights are already quantized, int4 group 32 repacks Q4_0 /
Q4_1 blocks bit-exactly (integer ops on the nibbles, float16 scales and mins
as stored), and int8 repacks Q8_0 blocks per row (as the GGUF-direct loader
does); other tensors are dequantized and quantized from floats.
"""

import json
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from gguf import GGMLQuantizationType
from safetensors.torch import save_file

from rusteeze.errors import ModelLoadError, QuantizationError
from rusteeze.file_modes import dir_mode, file_mode
from rusteeze.loader.gguf_loader import unpermute_qk
from rusteeze.models.weights import module_name
from rusteeze.quant.config import EMBEDDING_GROUP, QuantConfig, check_output, plan_for
from rusteeze.quant.source import FLOAT_TYPES, Source, SourceTensor, open_source
from rusteeze.quant.tensors import (
    q4_0_to_int4,
    q4_1_to_int4,
    q8_0_to_int8,
    q8_0_to_int8_groups,
    quantize_int4,
    quantize_int8,
)

QT = GGMLQuantizationType
EXACT_INT4 = {QT.Q4_0: q4_0_to_int4, QT.Q4_1: q4_1_to_int4}  # GGUF types that are int4 group 32 already
EXACT_GROUP = 32
DEFAULT_GROUP = 64  # int4 group size for float sources

# How a quantized tensor was made (Tally keys) → the words the summary uses.
KEPT, REPACKED, REQUANTIZED, QUANTIZED = "kept", "repacked", "requantized", "quantized"
SHARD_BYTES = 2 * 1024**3


@dataclass
class Tally:
    """How each quantized tensor was made: (projections or embeddings, how) → the source types seen, tensors."""

    counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def add(self, name: str, how: str, source_type: str) -> None:
        kind = "embeddings" if name.startswith(("model.embed_tokens.", "lm_head.")) else "projections"
        types = self.counts.setdefault((kind, how), {})
        types[source_type] = types.get(source_type, 0) + 1

    def describe(self, kind: str) -> str:
        """E.g. "kept bit-exact", or "196 kept bit-exact, 14 requantized from dequantized Q6_K"."""
        parts = []
        for how in (KEPT, REPACKED, REQUANTIZED, QUANTIZED):
            types = self.counts.get((kind, how))
            if not types:
                continue
            names = "/".join(sorted(types, key=natural_key))
            words = {
                KEPT: "kept bit-exact",
                REPACKED: f"{names} repacked per row",
                REQUANTIZED: f"requantized from dequantized {names}",
                QUANTIZED: f"quantized from {names}",
            }[how]
            parts.append((sum(types.values()), words))
        if len(parts) == 1:
            return parts[0][1]
        parts.sort(key=lambda part: -part[0])  # most tensors first; ties in the order above (sort is stable)
        return ", ".join(f"{n} {words}" for n, words in parts)


@dataclass
class QuantizeResult:
    """What :func:`quantize_model` did: sizes in bytes, seconds, output path, and how.

    Attributes:
        quant: the request with its defaults resolved (group size, embeddings).
        source_format: e.g. "GGUF Q4_1" or "safetensors bfloat16".
        tally: how each quantized tensor was made.
    """

    output: Path
    source_bytes: int
    output_bytes: int
    seconds: float
    quant: QuantConfig
    source_format: str
    tally: Tally

    def summary(self) -> str:
        """One line: source format and size → what was written, how, its size, the time."""
        from rusteeze.loader.model_info import human_size

        target = self.quant.method + (f" group {self.quant.group_size}" if self.quant.group_size else "")
        embeddings = "int8" if self.quant.quantize_embeddings else "float16"
        if self.quant.quantize_embeddings and self.quant.embedding_group_size:
            embeddings += f" group {self.quant.embedding_group_size}"
        if self.quant.quantize_embeddings and self.tally.describe("embeddings"):
            embeddings += f" ({self.tally.describe('embeddings')})"
        ratio = self.output_bytes / max(self.source_bytes, 1)
        return (
            f"source: {self.source_format} ({human_size(self.source_bytes)}) → {target} "
            f"({self.tally.describe('projections')}), embeddings {embeddings}: "
            f"{human_size(self.output_bytes)} ({ratio:.2f}×) in {self.seconds:.1f} s"
        )


def dir_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def resolve_request(source: Source, quant: QuantConfig, on_warning: Callable[[str], None]) -> QuantConfig:
    """Fill in the defaults the request left open, check it, and warn when it requantizes 4-bit weights.

    A GGUF whose projections hold Q4_0/Q4_1 blocks defaults to group 32 (kept
    bit-exact); a GGUF with a quantized token embedding defaults to an int8 one
    (float16 would be larger than the source), with group-32 scales when it is
    Q8_0 (kept bit-exact).
    """
    four_bit = [t.name for t in source.projection_types() if t in EXACT_INT4]
    embedding = source.gguf_types.get("model.embed_tokens.weight")
    resolved = quant.resolved(
        EXACT_GROUP if four_bit else DEFAULT_GROUP,
        embedding is not None and embedding not in FLOAT_TYPES,
        EMBEDDING_GROUP if embedding == QT.Q8_0 else None,
    )
    check_request(source, resolved)
    if four_bit and resolved.method == "int4" and resolved.group_size != EXACT_GROUP:
        on_warning(
            f"group size {resolved.group_size} requantizes the already-quantized GGUF {'/'.join(four_bit)} weights "
            f"(lossy); the default, --group-size {EXACT_GROUP}, keeps them bit-exact"
        )
    return resolved


def check_request(source: Source, quant: QuantConfig) -> None:
    """Reject requests the model cannot take before anything is written.

    Raises:
        QuantizationError: the int4 group size does not divide a projection's input width, or the
            embedding group size the hidden size.
    """
    cfg = source.config
    if quant.embedding_group_size and cfg.hidden_size % quant.embedding_group_size:
        raise QuantizationError(
            f"embedding group size {quant.embedding_group_size} does not divide hidden_size = {cfg.hidden_size} "
            f"of {source.path}"
        )
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


def natural_key(name: str) -> list[str | int]:
    """Sort key putting numbers in numeric order: ``layers.2`` before ``layers.10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def quantized_tensors(
    source: Source, quant: QuantConfig, on_module: Callable[[str], None] | None = None, tally: Tally | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the output checkpoint's (name, tensor) pairs, quantizing as the (resolved) plan says."""
    cfg = source.config
    tally = Tally() if tally is None else tally
    plan = plan_for(quant, cfg.num_hidden_layers, cfg.tie_word_embeddings)
    # Layer order (0, 1, 2, …, 10), not the file's text order (0, 1, 10, 11, …, 2): progress reads
    # naturally. The handles are lazy (nothing read yet); each is dropped once converted.
    pending: list[SourceTensor | None] = sorted(source.tensors(), key=lambda t: natural_key(t.name))
    for i in range(len(pending)):
        t, pending[i] = pending[i], None
        assert t is not None
        name = t.name
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        layer = plan.get(module_name(name)) if name.endswith(".weight") else None
        if on_module is not None:
            on_module(name)
        if layer is None:
            yield name, _stored_float(t)
            continue
        base = name.removesuffix(".weight")
        source_type = t.gguf_type.name if t.gguf_type is not None else _dtype_name(t)
        if layer.method == "int8" and t.gguf_type == QT.Q8_0 and layer.group_size == EMBEDDING_GROUP:
            q, scale = _from_blocks(q8_0_to_int8_groups, t, source.path)
            tally.add(name, KEPT, source_type)
            yield name, _unpermute(q, t)
            yield f"{name}_scale", _unpermute(_exact_f16(scale, name), t)
        elif layer.method == "int8" and t.gguf_type == QT.Q8_0:
            q, scale = _from_blocks(q8_0_to_int8, t, source.path)
            tally.add(name, REPACKED, source_type)
            yield name, _unpermute(q, t)
            yield f"{name}_scale", _unpermute(scale, t)
        elif layer.method == "int8":
            tally.add(name, _float_how(t), source_type)
            q, scale = _quantize_int8(t.read(), layer.group_size)
            yield name, q
            yield f"{name}_scale", scale
        elif t.gguf_type in EXACT_INT4 and layer.group_size == EXACT_GROUP:
            tally.add(name, KEPT, source_type)
            packed, scales, mins = _from_blocks(EXACT_INT4[t.gguf_type], t, source.path)
            yield f"{base}.qweight", _unpermute(packed, t)
            yield f"{base}.scales", _unpermute(_exact_f16(scales, name), t)
            yield f"{base}.mins", _unpermute(_exact_f16(mins, name), t)
        else:
            tally.add(name, _float_how(t), source_type)
            packed, scales, mins = quantize_int4(t.read(), layer.group_size)
            yield f"{base}.qweight", packed
            yield f"{base}.scales", scales.to(torch.float16)
            yield f"{base}.mins", mins.to(torch.float16)


def _quantize_int8(w: torch.Tensor, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 per row (scale [N]) or per group of columns (scale [N, K/G]), symmetric."""
    if group_size is None:
        return quantize_int8(w)
    n, k = w.shape
    q, scale = quantize_int8(w.reshape(-1, group_size))
    return q.reshape(n, k), scale.reshape(n, k // group_size)


def _from_blocks(convert: Callable, t: SourceTensor, path: Path) -> tuple[torch.Tensor, ...]:
    """``convert(t.blocks)``, a ModelLoadError naming the tensor when its bytes do not fit its blocks."""
    try:
        return convert(t.blocks)
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path}: tensor {t.name!r} data does not match its shape: {e}") from None


def _float_how(t: SourceTensor) -> str:
    """QUANTIZED from float weights, REQUANTIZED from dequantized GGUF blocks."""
    return REQUANTIZED if t.gguf_type is not None and t.gguf_type not in FLOAT_TYPES else QUANTIZED


def _dtype_name(t: SourceTensor) -> str:
    return str(t.read().dtype).removeprefix("torch.")


def _stored_float(t: SourceTensor) -> torch.Tensor:
    """A tensor kept unquantized: float16, except GGUF F32 vectors (norms, biases) and BF16, kept exact."""
    w = t.read()
    if t.gguf_type == QT.F32 and w.dim() == 1:
        return w.float()
    if t.gguf_type == QT.BF16:
        return w.to(torch.bfloat16)
    return w.to(torch.float16) if w.is_floating_point() else w


def _unpermute(x: torch.Tensor, t: SourceTensor) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation on something made from ``t.blocks`` (rows first)."""
    return x if t.qk_heads is None else unpermute_qk(x, t.qk_heads)


def _exact_f16(x: torch.Tensor, name: str) -> torch.Tensor:
    """GGUF's float16 scales/mins (Q4_0's min is -8·d) as float16, checking nothing is rounded."""
    half = x.to(torch.float16)
    if not torch.equal(half.float(), x.float()):
        raise QuantizationError(f"{name}: its GGUF scales do not fit float16 exactly (an overflowing Q4_0 scale)")
    return half


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
    on_warning: Callable[[str], None] | None = None,
) -> QuantizeResult:
    """Quantize ``model`` (HF directory or .gguf) into the HF directory ``output``.

    Args:
        quant: the request; its open defaults (None) are resolved for the source (see ``resolve_request``).
        on_module: called with each source tensor name as it is processed (progress).
        on_warning: called with a one-line warning (default: ``warnings.warn``), e.g. when a
            coarser int4 group size requantizes already 4-bit GGUF weights.

    Raises:
        QuantizationError: OUT exists without ``force``, OUT is the model itself,
            the model is already quantized, or the group size does not fit.
        ModelNotFoundError / UnsupportedModelError / ModelLoadError: from opening the model.
    """
    start = time.perf_counter()
    src_path, out = Path(model).resolve(), Path(output).resolve()
    check_output(src_path, out, force)
    source = open_source(src_path)
    quant = resolve_request(source, quant, on_warning or (lambda msg: warnings.warn(msg, stacklevel=4)))
    tally = Tally()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(dir_mode())  # mkdtemp made it 0700
    try:
        _save_shards(quantized_tensors(source, quant, on_module, tally), tmp)
        config = {**source.hf_config, "quantization_config": quant.to_json(), "torch_dtype": "float16"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        source.write_side_files(tmp)
        for f in tmp.iterdir():
            f.chmod(file_mode())  # safetensors writes its files 0600; the umask decides, as for any new file
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    return QuantizeResult(out, dir_size(src_path), dir_size(out), seconds, quant, source.describe(), tally)
