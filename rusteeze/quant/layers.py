"""Quantized stand-ins for nn.Linear / nn.Embedding and how they replace them in a model.

The modules hold the checkpoint's tensors as buffers (so ``load_weights`` fills
them by name, fused q/k/v and gate/up shards included) and run through
``rusteeze.kernels`` (Triton on CUDA, the torch reference elsewhere).
:func:`prepare_quantized` then moves CPU layers onto the Numba kernels (see
``cpu_matmul``), once, after loading: their weights are repacked into tiles and
the checkpoint-layout buffers are dropped.
"""

import torch
import torch.nn.functional as F
from torch import nn

from rusteeze.kernels import Ops
from rusteeze.quant import cpu_matmul
from rusteeze.quant.config import LayerQuant


class QuantLinear(nn.Module):
    """``y = x @ W.T (+ bias)`` with W stored int8 (per channel or per group) or int4 per group.

    Buffers: int8 → ``weight`` [N, K] int8, ``weight_scale`` [N] (per channel)
    or [N, K/G] (per group, e.g. GGUF Q8_0); int4 → ``qweight`` [N, K/2] uint8,
    ``scales`` [N, K/G], ``mins`` [N, K/G].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, quant: LayerQuant, ops: Ops) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = quant.method, quant.group_size
        self.ops = ops
        n, k = out_features, in_features
        if self.method == "int8":
            self.register_buffer("weight", torch.empty(n, k, dtype=torch.int8))
            shape = (n,) if self.group_size is None else (n, k // self.group_size)
            self.register_buffer("weight_scale", torch.empty(shape))
        else:
            g = k // self.group_size
            self.register_buffer("qweight", torch.empty(n, k // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.empty(n, g))
            self.register_buffer("mins", torch.empty(n, g))
        self.bias = nn.Parameter(torch.empty(n)) if bias else None
        self.tiled: cpu_matmul.TiledInt4 | cpu_matmul.TiledInt8 | None = None  # set by prepare_cpu()

    def prepare_cpu(
        self, activation_bits: int = 0, bf16_gemm: bool = False, kernel_max_tokens: int = cpu_matmul.NUMBA_MAX_TOKENS
    ) -> None:
        """Repack the weight into the Numba kernels' tiles and drop the checkpoint buffers (idempotent).

        ``activation_bits`` (16 or 8; 0 keeps float32): calls of up to ``kernel_max_tokens`` rows
        quantize their input to that many bits; ``bf16_gemm``: larger calls multiply in bfloat16
        (see ``cpu_matmul``).
        """
        if self.tiled is not None:
            return
        empty = torch.empty(0)
        if self.method == "int8":
            self.tiled = cpu_matmul.TiledInt8.from_int8(self.weight, self.weight_scale, activation_bits, bf16_gemm)
            self.weight, self.weight_scale = empty.to(torch.int8), empty
        else:
            self.tiled = cpu_matmul.TiledInt4.from_packed(
                self.qweight, self.scales, self.mins, activation_bits, bf16_gemm
            )
            self.qweight, self.scales, self.mins = empty.to(torch.uint8), empty, empty
        self.tiled.kernel_max_tokens = kernel_max_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, K] → [T, N]."""
        if self.tiled is not None:
            out = self.tiled.matmul(x).to(x.dtype)
        elif self.method == "int4":
            out = self.ops.int4_matmul(x, self.qweight, self.scales, self.mins, self.group_size)
        elif self.weight_scale.dim() == 1:
            out = self.ops.int8_matmul(x, self.weight, self.weight_scale)
        else:
            out = F.linear(x, self.dequantized().to(x.dtype))
        return out if self.bias is None else out + self.bias

    def dequantized(self) -> torch.Tensor:
        """The float32 [N, K] weight of an int8 layer in checkpoint layout (before prepare_cpu)."""
        n, k = self.weight.shape
        scale = self.weight_scale.float().reshape(n, -1, 1)  # [N, K/G or 1, 1]
        return (self.weight.float().reshape(n, scale.shape[1], -1) * scale).reshape(n, k)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.method}, group_size={self.group_size}"


class QuantEmbedding(QuantLinear):
    """An int8 embedding (per row or per group); with tied weights it is also the lm_head."""

    def __init__(self, num_embeddings: int, embedding_dim: int, ops: Ops, group_size: int | None = None) -> None:
        super().__init__(embedding_dim, num_embeddings, False, LayerQuant("int8", group_size), ops)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [T] → [T, H] float32 rows."""
        if self.tiled is not None:
            return self.tiled.rows(ids)
        rows = self.weight[ids].float()  # [T, H]
        scale = self.weight_scale[ids].float().reshape(len(ids), -1, 1)  # [T, H/G or 1, 1]
        return (rows.reshape(len(ids), scale.shape[1], -1) * scale).reshape(rows.shape)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] → [T, V] float32, the tied lm_head."""
        return super().forward(hidden.float()).float()


def quantize_modules(model: nn.Module, plan: dict[str, LayerQuant]) -> None:
    """Replace the modules named in ``plan`` by quantized ones (call on the meta device, before to_empty)."""
    for name, quant in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Embedding):
            new: nn.Module = QuantEmbedding(old.num_embeddings, old.embedding_dim, model.ops, quant.group_size)
        else:
            new = QuantLinear(old.in_features, old.out_features, old.bias is not None, quant, model.ops)
        setattr(parent, child, new)


def prepare_quantized(model: nn.Module, kernel_backend: str, reduced_precision: bool = False) -> None:
    """After loading: move CPU quantized layers onto the Numba kernels (the "numba" backend).

    ``reduced_precision`` (the loader sets it for ``dtype="auto"``): calls of up to
    ``cpu_matmul.NUMBA_MAX_TOKENS`` rows (decode; the logits layer up to
    ``LOGITS_MAX_TOKENS``) quantize activations to int16 per block and use
    integer dot products (int8 blocks, llama.cpp's choice, flip SmolLM2's
    answers: see ``numba_q8_matmul``), and the decoder layers' larger calls
    (prefill, batches) multiply in bfloat16 where the CPU has it natively
    (``cpu_matmul.native_bf16``); the logits layer (a tied embedding or
    ``lm_head``) keeps float32 GEMMs. False keeps float32 math everywhere
    (``dtype="float32"``). Other backends keep the checkpoint layout (the torch
    reference ops, Triton).
    """
    if kernel_backend != "numba":
        return
    bits = 16 if reduced_precision else 0
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and next(module.buffers()).device.type == "cpu":
            if isinstance(module, QuantEmbedding) or name == "lm_head":
                rows = cpu_matmul.LOGITS_MAX_TOKENS if reduced_precision else cpu_matmul.NUMBA_MAX_TOKENS
                module.prepare_cpu(bits, False, rows)
            else:
                module.prepare_cpu(bits, reduced_precision and cpu_matmul.native_bf16())
