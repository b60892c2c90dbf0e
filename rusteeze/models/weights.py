"""Copy checkpoint tensors (HF names) into a model's fused parameters, one at a time."""

import re
from collections.abc import Iterable

import torch
from torch import nn

from rusteeze.errors import ModelLoadError
from rusteeze.models.config import ModelConfig

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# HF tensor name (inside a layer) → (our parameter name, shard index); shards of
# a fused parameter are stacked along dim 0 in this order.
_FUSED = {
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_IGNORED = ("rotary_emb.inv_freq",)


def _shard_sizes(cfg: ModelConfig, fused: str) -> tuple[int, ...]:
    if ".qkv_proj." in fused:
        kv = cfg.num_key_value_heads * cfg.head_dim
        return (cfg.num_attention_heads * cfg.head_dim, kv, kv)
    return (cfg.intermediate_size, cfg.intermediate_size)


def _target(model: nn.Module, name: str) -> tuple[str, int | None] | None:
    """Our parameter name and shard index for an HF tensor name, or None to skip it."""
    if name.endswith(_IGNORED):
        return None
    if name.startswith("lm_head."):
        return (None, None) if model.lm_head is None else (name, None)
    if name.startswith("model.") and not _LAYER.match(name):
        return name[len("model.") :], None
    match = _LAYER.match(name)
    if match is None:
        raise ModelLoadError(f"unexpected tensor {name!r} in the checkpoint")
    index, rest = match.groups()
    module, _, leaf = rest.rpartition(".")
    if module in _FUSED:
        fused, shard = _FUSED[module]
        return f"layers.{index}.{fused}.{leaf}", shard
    return f"layers.{index}.{rest}", None


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy tensors named as in HF checkpoints into ``model``, casting each on the fly.

    Only one source tensor is alive at a time, so peak memory is the model plus
    the largest tensor (sources are memory-mapped or produced lazily).

    Raises:
        ModelLoadError: an unknown tensor, a shape mismatch (naming the tensor,
            expected and actual shapes) or tensors missing at the end.
    """
    cfg: ModelConfig = model.config
    params = dict(model.named_parameters()) | dict(model.named_buffers())  # quantized layers hold buffers
    pending = {name: set(range(len(_shard_sizes(cfg, name)))) if _is_fused(name) else {None} for name in params}
    for name, tensor in weights:
        target = _target(model, name)
        if target is None or target[0] is None:
            continue
        pname, shard = target
        if pname not in params:
            raise ModelLoadError(f"unexpected tensor {name!r}: the model has no parameter {pname!r}")
        dest = params[pname].data
        if shard is not None:
            sizes = _shard_sizes(cfg, pname)
            start = sum(sizes[:shard])
            dest = dest.narrow(0, start, sizes[shard])
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ModelLoadError(
                f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(dest.shape)} from the model config"
            )
        with torch.no_grad():
            dest.copy_(tensor)
        pending[pname].discard(shard)
    missing = sorted(p for p, shards in pending.items() if shards)
    if missing:
        raise ModelLoadError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")


def module_name(name: str) -> str:
    """Module name of an HF tensor: "model.layers.3.self_attn.k_proj.weight" → "layers.3.self_attn.qkv_proj"."""
    # (tensor leaf dropped; q/k/v and gate/up map to their fused module)
    module = name.rpartition(".")[0]
    if module == "lm_head":
        return module
    match = _LAYER.match(module)
    if match is None:
        return module.removeprefix("model.")
    index, rest = match.groups()
    return f"layers.{index}.{_FUSED[rest][0] if rest in _FUSED else rest}"


def _is_fused(pname: str) -> bool:
    return pname.split(".")[-2] in ("qkv_proj", "gate_up_proj")
