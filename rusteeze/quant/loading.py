"""Reading a rusteeze-quantized HF directory: its config block → the per-module plan."""

from rusteeze.models.config import ModelConfig
from rusteeze.quant.config import LayerQuant, QuantConfig, plan_for


def quant_plan_from_config(cfg: ModelConfig, source: str = "config.json") -> dict[str, LayerQuant] | None:
    """The plan of a quantized checkpoint, or None for a float one.

    Raises:
        UnsupportedModelError: another tool's quantization (GPTQ, AWQ...) or an unknown format version.
        QuantizationError: a rusteeze block with invalid values.
    """
    raw = cfg.extra.get("quantization_config")
    if raw is None:
        return None
    quant = QuantConfig.from_json(raw, source)
    return plan_for(quant, cfg.num_hidden_layers, cfg.tie_word_embeddings)
