"""What a loaded engine runs, in words: the weights' format and the compute path (for `/show` and load lines).

The model's dtype alone says "float32" for a GGUF whose Q4_1 weights load straight into int4
layers; these say "int4 (group 32) linear layers, int8 embedding" and "float32 activations,
Numba kernels" instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn


def weight_format(model: nn.Module) -> str:
    """The weights as stored: "float32", or e.g. "int4 (group 32) linear layers, int8 embedding, float32 norms"."""
    from rusteeze.quant.layers import QuantEmbedding, QuantLinear

    linear: Counter[str] = Counter()
    embedding = None
    for module in model.modules():
        if isinstance(module, QuantEmbedding):
            embedding = "int8 embedding" + (f" (group {module.group_size})" if module.group_size else "")
        elif isinstance(module, QuantLinear):
            group = f" (group {module.group_size})" if module.group_size else ""
            linear[module.method + group] += 1
    floats = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()})
    if not linear and embedding is None:
        return "/".join(floats) or "unknown"
    parts = [f"{kind} linear layers" for kind, _ in linear.most_common()]
    parts += [embedding] if embedding else []
    rest = "norms" if embedding else "embedding and norms"
    return ", ".join(parts + ([f"{'/'.join(floats)} {rest}"] if floats else []))


def compute_path(engine: Any) -> str:
    """Device, activation dtype and kernels: "cpu, float32 activations, Numba kernels (kernel backend auto)"."""
    from rusteeze.quant.layers import QuantLinear

    loaded, asked = engine.loaded, engine.config.kernel_backend
    device = loaded.device
    runs = getattr(loaded, "kernel_backend", None) or asked  # the backend chosen at load (never "auto")
    if runs == "auto":
        runs = "triton" if device.type == "cuda" else "torch"
    kernels = {"triton": "Triton kernels", "numba": "Numba kernels", "torch": "torch ops"}.get(runs, runs)
    tiled = [m.tiled for m in loaded.model.modules() if isinstance(m, QuantLinear) and m.tiled is not None]
    if runs != "numba" and tiled:
        kernels += " with Numba int4/int8 matmuls"
    line = f"{device}, {activation_dtype(loaded)} activations, {kernels} (kernel backend {asked})"
    if any(t.activation_bits for t in tiled):  # dtype "auto": decode-sized quantized matmuls round x to int16
        line += ", int16-rounded inputs in decode matmuls"
    return line


def activation_dtype(loaded: Any) -> str:
    """The activations' dtype: "float32", "bfloat16", …"""
    return str(loaded.dtype).removeprefix("torch.")


def quantized_as(model: nn.Module) -> str | None:
    """The format of most quantized linear layers ("int4", "int8"), or None for a float model."""
    from rusteeze.quant.layers import QuantEmbedding, QuantLinear

    methods = Counter(
        m.method for m in model.modules() if isinstance(m, QuantLinear) and not isinstance(m, QuantEmbedding)
    )
    return methods.most_common(1)[0][0] if methods else None


def speculation(engine: Any) -> str:
    """Speculative decoding in words: "off", or e.g. "ngram (n 2..4), up to 4 tokens; 61% of 212 drafts accepted"."""
    spec = engine.config.speculative
    if spec is None or engine.speculator is None:
        return "off"
    n_range = f"n {spec.prompt_lookup_min}..{spec.prompt_lookup_max}"
    text = f"{spec.method} ({n_range}), up to {spec.num_speculative_tokens} tokens"
    drafted = engine.speculator.num_draft_tokens
    if drafted:
        text += f"; {engine.speculator.num_accepted_tokens / drafted:.0%} of {drafted} drafts accepted"
    return text
