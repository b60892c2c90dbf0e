"""GGUF Q8_0 / Q4_0 / Q4_1 tensors loaded straight into quantized layers (no float weights).

:func:`gguf_plan` decides, per module, from the tensor types: a module whose
tensors (all shards of fused q/k/v and gate/up) are Q4_0/Q4_1 becomes int4
group-32, all-Q8_0 becomes int8 (group-32 and exact where the layer runs on
the CPU kernels, which take group scales; per channel otherwise), anything else (F16, K-quants, a mix) stays
float and is dequantized as before. :func:`iter_gguf_quantized` then yields the
quantized modules' tensors under their checkpoint names (``.qweight``,
``.scales``, ``.mins`` / ``.weight``, ``.weight_scale``), repacked with integer
operations, and every other tensor exactly as ``iter_gguf_tensors`` does.
"""

from collections.abc import Iterator
from pathlib import Path

import torch
from gguf import GGMLQuantizationType

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.loader.gguf_file import GGUFFile
from rusteeze.loader.gguf_loader import SUPPORTED_TYPES, hf_tensor_name, iter_gguf_tensors, metadata, unpermute_qk
from rusteeze.models.config import ModelConfig
from rusteeze.models.weights import module_name
from rusteeze.quant.config import LayerQuant
from rusteeze.quant.tensors import q4_0_to_int4, q4_1_to_int4, q8_0_to_int8, q8_0_to_int8_groups

QT = GGMLQuantizationType
_INT4 = {QT.Q4_0: q4_0_to_int4, QT.Q4_1: q4_1_to_int4}
_PERMUTED = ("llama", "mistral")


def gguf_plan(reader: GGUFFile, int8_group_size: int | None = 32) -> dict[str, LayerQuant]:
    """Module name → LayerQuant for the modules whose GGUF weights load without dequantizing.

    Args:
        reader: the GGUF file.
        int8_group_size: 32 keeps Q8_0's block scales exactly (the CPU kernels);
            None re-expresses them per output channel (what the Triton int8 kernel takes).
    """
    types: dict[str, set[QT]] = {}
    for t in reader.tensors:
        name = hf_tensor_name(t.name)
        if name is None or not name.endswith(".weight") or len(t.shape) != 2:
            continue
        types.setdefault(module_name(name), set()).add(t.tensor_type)
    plan = {}
    for module, kinds in types.items():
        if kinds <= set(_INT4) and module != "embed_tokens":
            plan[module] = LayerQuant("int4", 32)
        elif kinds == {QT.Q8_0}:
            plan[module] = LayerQuant("int8", int8_group_size)
    return plan


def iter_gguf_quantized(
    reader: GGUFFile, cfg: ModelConfig, path: Path, plan: dict[str, LayerQuant]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (checkpoint name, tensor): repacked tensors for modules in ``plan``, floats for the rest.

    Raises:
        UnsupportedModelError: a tensor type outside SUPPORTED_TYPES.
        ModelLoadError: a tensor whose data does not match its declared shape.
    """
    arch = metadata(reader, "general.architecture")
    direct = {t.name for t in reader.tensors if _is_direct(t.name, plan)}
    floats = iter_gguf_tensors(_Subset(reader, direct, keep=False), cfg, path)
    yield from floats
    for t in reader.tensors:
        if t.name not in direct:
            continue
        if t.tensor_type not in SUPPORTED_TYPES:
            raise UnsupportedModelError(f"{path}: tensor {t.name!r} has unsupported type {t.tensor_type.name}")
        base = hf_tensor_name(t.name).removesuffix(".weight")
        rows = int(t.shape[-1])  # GGUF lists the fastest dimension first
        try:
            if t.tensor_type == QT.Q8_0:
                to_int8 = (
                    q8_0_to_int8 if plan[module_name(base + ".weight")].group_size is None else q8_0_to_int8_groups
                )
                q, scale = to_int8(t.data.reshape(rows, -1))
                parts = {"weight": q, "weight_scale": scale}
            else:
                packed, scales, mins = _INT4[t.tensor_type](t.data.reshape(rows, -1))
                parts = {"qweight": packed, "scales": scales, "mins": mins}
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"{path}: tensor {t.name!r} data does not match its shape: {e}") from None
        for leaf, tensor in parts.items():
            if arch in _PERMUTED and t.name.endswith("attn_q.weight"):
                tensor = unpermute_qk(tensor, cfg.num_attention_heads)
            elif arch in _PERMUTED and t.name.endswith("attn_k.weight"):
                tensor = unpermute_qk(tensor, cfg.num_key_value_heads)
            yield f"{base}.{leaf}", tensor
        reader.release(t)  # copied by the consumer: the file pages need not stay resident


def _is_direct(gguf_name: str, plan: dict[str, LayerQuant]) -> bool:
    name = hf_tensor_name(gguf_name)
    return name is not None and name.endswith(".weight") and module_name(name) in plan


class _Subset:
    """A GGUFFile view that hides (keep=False) or shows only (keep=True) some tensors."""

    def __init__(self, reader: GGUFFile, names: set[str], keep: bool) -> None:
        self.fields = reader.fields
        self.tensors = [t for t in reader.tensors if (t.name in names) == keep]
        self.release = reader.release
