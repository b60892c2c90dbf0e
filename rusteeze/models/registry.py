"""Architecture registry: HF architecture name → model class."""

import torch
from torch import nn

from rusteeze.errors import UnsupportedModelError
from rusteeze.kernels import Ops
from rusteeze.models.config import ModelConfig
from rusteeze.models.llama import LlamaForCausalLM

# Every Llama-family variant is the same decoder with config switches
# (sliding_window, attention_bias, qk_norm) set by the config parsers.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def model_class(architecture: str) -> type[nn.Module]:
    """The class that implements ``architecture``.

    Raises:
        UnsupportedModelError: naming the architecture and the supported ones.
    """
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(f"architecture {architecture!r} is not supported; supported: {supported}") from None


def build_model(
    cfg: ModelConfig,
    ops: Ops,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int | None = None,
    quant_plan: dict | None = None,
) -> nn.Module:
    """Instantiate the model with uninitialized weights of ``dtype`` on ``device``.

    Parameters are created on the meta device first and then allocated without
    initialization, so building costs one allocation and no compute; the caller
    fills them with :func:`rusteeze.models.weights.load_weights`. ``quant_plan``
    (module name → ``rusteeze.quant.LayerQuant``) swaps those layers for quantized
    ones before allocation; ``dtype`` then applies to their float tensors only.
    """
    cls = model_class(cfg.architecture)
    with torch.device("meta"):
        model = cls(cfg, ops, max_positions=max_positions)
        if quant_plan:
            from rusteeze.quant.layers import quantize_modules

            quantize_modules(model, quant_plan)
    # Not Module.to_empty: its empty_like of a meta tensor runs torch's Python reference, which imports
    # torch.fx's symbolic shapes and sympy, ~29 MiB resident for the life of the process.
    model = model.to(dtype)._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device))
    model.build_rope(device)
    return model.eval().requires_grad_(False)
