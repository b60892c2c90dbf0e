"""The Llama-family decoder: Llama, Mistral, Qwen2 and Qwen3 by config switches.

Differences handled here: GQA (all), rope scaling (Llama 3), sliding-window
attention (Mistral), q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3) and
tied embeddings. The forward pass takes a flat, unpadded batch plus
:class:`AttentionMetadata`; every hot op goes through ``rusteeze.kernels``.
"""

from types import ModuleType

import numpy as np
import torch
from torch import nn

from rusteeze.errors import KernelError
from rusteeze.kernels import Ops
from rusteeze.models.attention import AttentionMetadata
from rusteeze.models.config import ModelConfig
from rusteeze.models.linear import Embedding, Linear, linear
from rusteeze.models.rotary import cos_sin_cache

KVCache = tuple[torch.Tensor, torch.Tensor]
# Steps of up to this many tokens take the fused path on the numba backend when every linear takes int16
# activations (dtype "auto"): the integer kernels' own limit (cpu_matmul.NUMBA_MAX_TOKENS; larger batches
# dequantize and use torch's GEMM). SmolLM2 Q4_1, 64 sequences after 128-token prompts, 2 threads
# (benches/batch_step.py): 110 ms per step fused against 138 per op (the glue between ops, their parallel
# regions and the KV-cache store's separate pass are gone; attention and matmuls are the same kernels).
FUSED_MAX_TOKENS = 64
# Layers with float32 activations (dtype "float32") or float32 weights keep their one-row-at-a-time kernels
# to this many tokens, as the per-op path does (cpu_matmul.FLOAT_KERNEL_MAX_TOKENS).
FUSED_FLOAT_MAX_TOKENS = 8


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale; optionally fused with the residual add."""

    def __init__(self, size: int, eps: float, ops: Ops) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x: [T, H]; when ``residual`` is given it becomes ``residual + x`` in place."""
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.fused_add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    """Multi-head attention with GQA over the paged KV cache."""

    def __init__(self, cfg: ModelConfig, ops: Ops) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.sliding_window = cfg.sliding_window
        self.ops = ops
        # q, k and v share one matmul: rows [0, q) are q, then k, then v.
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, ops)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, ops)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        rope: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """positions: [T], x: [T, H], rope: [P, D] cos|sin table → [T, H]."""
        t = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, (Hq + 2 Hk) D]
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        q = q.reshape(t, self.num_heads, self.head_dim)  # [T, Hq, D] (copy: split views are not contiguous)
        k = k.reshape(t, self.num_kv_heads, self.head_dim)  # [T, Hk, D]
        v = v.reshape(t, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(t, self.num_heads, self.head_dim)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(t, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        if self.ops.rotary_store_kv is not None:  # one pass where the backend has it (Numba)
            self.ops.rotary_store_kv(positions, q, k, v, rope, k_cache, v_cache, meta.slot_mapping, True)
        else:
            self.ops.rotary_embedding(positions, q, k, rope, True)
            self.ops.store_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        out = self.ops.paged_attention(
            q, k_cache, v_cache, meta.cu_seqlens_q, meta.seq_lens, meta.block_tables, self.scale, self.sliding_window
        )  # [T, Hq, D]
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)) with gate and up fused."""

    def __init__(self, cfg: ModelConfig, ops: Ops) -> None:
        super().__init__()
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, H] → [T, H]."""
        return self.down_proj(self.ops.silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried separately and updated in place."""

    def __init__(self, cfg: ModelConfig, ops: Ops) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.self_attn = Attention(cfg, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.mlp = MLP(cfg, ops)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        rope: torch.Tensor,
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden, residual: [T, H] → (block output, residual stream)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, rope, kv_cache, meta)
        hidden = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """Decoder-only transformer of the Llama family over a paged KV cache."""

    def __init__(self, cfg: ModelConfig, ops: Ops, max_positions: int | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.ops = ops
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, ops) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.lm_head = None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.max_positions = max(max_positions or 0, cfg.max_position_embeddings)
        self.rope = torch.empty(0)  # [P, D] filled by build_rope() once the device is known
        self._fused: tuple | bool | None = False  # the fused decode path's weights (False: not made yet)
        self._fused_norm: np.ndarray | None = None
        self._fused_cache_key: list[KVCache] | None = None
        self._fused_cache_views: list[tuple[np.ndarray, np.ndarray]] = []

    def build_rope(self, device: torch.device | str) -> None:
        """Compute the [P, D] cos|sin table on ``device`` (after weights are materialized)."""
        cfg = self.config
        self.rope = cos_sin_cache(cfg.head_dim, self.max_positions, cfg.rope_theta, cfg.rope_scaling, device)
        self._fused = False  # remade on the next forward

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[KVCache],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Run the decoder over a flat batch.

        Args:
            input_ids: [T] int64 token ids.
            positions: [T] int64 absolute positions.
            kv_caches: one (k_cache, v_cache) per layer, each
                [num_blocks, block_size, Hk, D]; the new tokens' K/V are written.
            meta: where the tokens sit in the cache (see AttentionMetadata).

        Returns:
            [T, H] final hidden states (normalized).
        """
        hidden = self.embed_tokens(input_ids)  # [T, H]
        if hidden.shape[0] <= FUSED_MAX_TOKENS:  # decode and small steps: one compiled call per layer (numba)
            out = self._fused_forward(hidden, positions, kv_caches, meta)
            if out is not None:
                return out
        residual = None
        with meta.plan.active():  # the torch kernels' per-step index work, done once for all layers
            for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
                hidden, residual = layer(positions, hidden, residual, self.rope, kv_cache, meta)
        return self.norm(hidden, residual)

    def _fused_forward(
        self, hidden: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache], meta: AttentionMetadata
    ) -> torch.Tensor | None:
        """The forward through ``numba_decoder.decoder_layer`` (one call per layer), or None where it does not apply.

        Applies on the "numba" backend to float32 CPU steps of up to ``FUSED_MAX_TOKENS`` tokens
        (``FUSED_FLOAT_MAX_TOKENS`` unless every linear takes int16 activations) whose
        sequences each have fewer than ``numba_decoder.MAX_QUERY_TOKENS + 1`` query tokens, with every
        linear a Numba-tiled quantized layer or a float32 ``nn.Linear``. Anything else (and a step with a
        bad position or slot, which the per-op kernels then report) takes the per-op path.
        """
        fused = self._fused_weights()
        if fused is None or hidden.dtype is not torch.float32 or not hidden.is_cpu:
            return None
        nd, layers, rope, eps, dims, scale, window, max_tokens = fused
        if hidden.shape[0] > max_tokens:
            return None
        caches = self._fused_caches(nd, kv_caches)
        if caches is None:
            return None
        op = "fused decode"
        pos = nd.index_array(op, "positions", positions, torch.int64, 1)
        slots = nd.index_array(op, "slot_mapping", meta.slot_mapping, torch.int64, 1)
        cu = nd.index_array(op, "cu_seqlens_q", meta.cu_seqlens_q, torch.int32, 1)
        lens = nd.index_array(op, "seq_lens", meta.seq_lens, torch.int32, 1)
        tables = nd.index_array(op, "block_tables", meta.block_tables, torch.int32, 2)
        t = hidden.shape[0]
        k0 = caches[0][0]
        if (
            pos.shape[0] != t
            or slots.shape[0] != t
            or cu.shape[0] != lens.shape[0] + 1
            or tables.shape[0] != lens.shape[0]
            or (t > nd.MAX_QUERY_TOKENS and int(np.diff(cu).max()) > nd.MAX_QUERY_TOKENS)
            or nd.bad_step(pos, rope.shape[0], slots, k0.shape[0] * k0.shape[1])
        ):
            return None  # the per-op path handles it (or explains what is wrong)
        x = hidden.contiguous().numpy()
        residual = np.empty_like(x)
        first = True
        for (ln1, ln2, qn, kn, qkv, o, gate_up, down), (k_cache, v_cache) in zip(layers, caches, strict=True):
            status = nd.decoder_layer(
                x, residual, first, pos, slots, cu, lens, tables, rope, k_cache, v_cache,
                ln1, ln2, qn, kn, eps, dims, scale, window, qkv, o, gate_up, down,
            )  # fmt: skip
            if status < 0:
                raise KernelError(f"{op}: a block-table entry or an offset in the step's metadata is inconsistent")
            first = False
        out = np.empty_like(x)
        nd.add_rms_norm_rows(x, residual, self._fused_norm, eps, out)
        return torch.from_numpy(out)

    def _fused_weights(self) -> tuple | None:
        """What ``_fused_forward`` hands to Numba, made once (numpy views of the weights); None: not applicable."""
        if self._fused is not False:
            return self._fused
        self._fused = None
        cfg = self.config
        if self.ops.rotary_store_kv is None or self.norm.weight.dtype is not torch.float32 or not self.rope.is_cpu:
            return None  # not the numba backend, or not float32 on CPU
        from rusteeze.kernels import numba_decoder as nd

        if self.rope.dtype is not torch.float32 or self.rope.dim() != 2 or self.rope.shape[1] > cfg.head_dim:
            return None
        layers = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            lins = [nd.linear_args(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)]
            if any(lin is None for lin in lins):
                return None
            norms = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            if attn.q_norm is not None:
                norms += [attn.q_norm.weight, attn.k_norm.weight]
            if any(w.dtype is not torch.float32 or not w.is_cpu for w in norms):
                return None
            arrays = [nd.array(w.contiguous()) for w in norms]
            if attn.q_norm is None:
                arrays += [np.empty(0, np.float32), np.empty(0, np.float32)]
            layers.append((*arrays, *lins))
        self._fused_norm = nd.array(self.norm.weight.contiguous())
        dims = np.array([cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size])
        scale = float(cfg.head_dim**-0.5)
        rope = nd.array(self.rope.contiguous())
        window = int(cfg.sliding_window or 0)
        q16 = all(lin[0] in (nd.KIND_INT4_Q16, nd.KIND_INT8_Q16) for layer in layers for lin in layer[4:])
        max_tokens = FUSED_MAX_TOKENS if q16 else FUSED_FLOAT_MAX_TOKENS
        self._fused = (nd, layers, rope, float(cfg.rms_norm_eps), dims.astype(np.int64), scale, window, max_tokens)
        return self._fused

    def _fused_caches(self, nd: ModuleType, kv_caches: list[KVCache]) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Numpy views of the per-layer caches, remade only when the cache tensors change; None: not float32."""
        key = self._fused_cache_key
        if key is not None and len(key) == len(kv_caches) and all(a is b for a, b in zip(key, kv_caches, strict=True)):
            return self._fused_cache_views
        if not all(nd.is_f32(k, 4) and nd.is_f32(v, 4) and k.shape == v.shape for k, v in kv_caches):
            return None
        self._fused_cache_key = list(kv_caches)
        self._fused_cache_views = [(k.numpy(), v.numpy()) for k, v in kv_caches]
        return self._fused_cache_views

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] → [N, V] float32 logits."""
        if self.lm_head is None and hasattr(self.embed_tokens, "logits"):  # quantized tied embedding
            return self.embed_tokens.logits(hidden).float()
        if self.lm_head is not None and not isinstance(self.lm_head, nn.Linear):  # quantized lm_head
            return self.lm_head(hidden).float()
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(hidden, weight).float()
