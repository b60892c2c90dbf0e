"""ModelConfig: the architecture hyper-parameters every loader produces."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder, whatever file they came from.

    Attributes:
        architecture: HF architecture name, e.g. "LlamaForCausalLM".
        vocab_size: rows of the embedding matrix.
        hidden_size: model width H.
        intermediate_size: MLP width I.
        num_hidden_layers: decoder layers.
        num_attention_heads: query heads Hq.
        num_key_value_heads: key/value heads Hk (GQA when Hk < Hq).
        head_dim: features per head D.
        rms_norm_eps: RMSNorm epsilon.
        rope_theta: rotary base.
        rope_scaling: HF ``rope_scaling`` dict ("llama3", "linear") or None.
        max_position_embeddings: trained context length.
        tie_word_embeddings: lm_head shares the embedding matrix.
        sliding_window: attention window in tokens (Mistral), or None.
        attention_bias: q/k/v projections carry a bias (Qwen2).
        qk_norm: per-head RMSNorm on q and k before rotary (Qwen3).
        bos_token_id: beginning-of-sequence id, when the model has one.
        eos_token_ids: ids that end generation.
        torch_dtype: the dtype the checkpoint was saved in ("float32", ...).
        extra: anything else from the source config, kept for display.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    attention_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_parameters(self) -> int:
        """Parameter count implied by the shapes (embeddings counted once when tied)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.attention_bias else 0) + (2 * d if self.qk_norm else 0)
        layer = attn + 3 * h * i + 2 * h
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + h
