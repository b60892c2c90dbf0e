"""Quantized stand-ins for nn.Linear / nn.Embedding and how they replace them in a model.

The modules hold the checkpoint's tensors as buffers (so ``load_weights`` fills
them by name, fused q/k/v and gate/up shards included) and run through
``rusteeze.kernels`` (Triton on CUDA). :func:`prepare_quantized` then moves CPU
layers onto torch's packed kernels (see ``cpu_matmul``), once, after loading.
"""

import torch
from torch import nn

from rusteeze.kernels import Ops
from rusteeze.quant import cpu_matmul
from rusteeze.quant.config import LayerQuant


class QuantLinear(nn.Module):
    """``y = x @ W.T (+ bias)`` with W stored int8 per channel or int4 per group.

    Buffers: int8 → ``weight`` [N, K] int8, ``weight_scale`` [N];
    int4 → ``qweight`` [N, K/2] uint8, ``scales`` [N, K/G], ``mins`` [N, K/G].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, quant: LayerQuant, ops: Ops) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method, self.group_size = quant.method, quant.group_size
        self.ops = ops
        n, k = out_features, in_features
        if self.method == "int8":
            self.register_buffer("weight", torch.empty(n, k, dtype=torch.int8))
            self.register_buffer("weight_scale", torch.empty(n))
        else:
            g = k // self.group_size
            self.register_buffer("qweight", torch.empty(n, k // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.empty(n, g))
            self.register_buffer("mins", torch.empty(n, g))
        self.bias = nn.Parameter(torch.empty(n)) if bias else None
        self.cpu_kernel = False  # set by prepare_cpu()
        self.kernel_scale = torch.empty(0)  # int8 scales in the CPU kernel's dtype, after prepare_cpu()

    def prepare_cpu(self) -> None:
        """Convert the buffers in place to the CPU kernel layout (idempotent; kept when unsupported)."""
        if self.cpu_kernel:
            return
        if self.method == "int8":
            self.kernel_scale = self.weight_scale.to(cpu_matmul.KERNEL_DTYPE)  # [N]; weight_scale stays exact
        elif cpu_matmul.int4_supported(self.out_features, self.in_features, self.group_size):
            self.qweight, self.scales = cpu_matmul.prepare_int4(self.qweight, self.scales, self.mins)
            self.mins = torch.empty(0)
        else:
            return
        self.cpu_kernel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, K] → [T, N]."""
        if self.method == "int8":
            mm = cpu_matmul.int8_matmul if self.cpu_kernel else self.ops.int8_matmul
            out = mm(x, self.weight, self.kernel_scale if self.cpu_kernel else self.weight_scale)
        elif self.cpu_kernel:
            out = cpu_matmul.int4_matmul(x, self.qweight, self.scales, self.group_size)
        else:
            out = self.ops.int4_matmul(x, self.qweight, self.scales, self.mins, self.group_size)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.method}, group_size={self.group_size}"


class QuantEmbedding(QuantLinear):
    """An int8 per-row embedding; with tied weights it is also the lm_head (rows = output channels)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, ops: Ops) -> None:
        super().__init__(embedding_dim, num_embeddings, False, LayerQuant("int8"), ops)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [T] → [T, H] float32 rows."""
        return self.weight[ids].float() * self.weight_scale[ids].float()[:, None]

    def logits(self, hidden: torch.Tensor, refine: int = 8) -> torch.Tensor:
        """hidden: [T, H] → [T, V] float32, the tied lm_head.

        The CPU kernel returns bf16 (about 3 significant digits), enough to tie
        or swap the top candidates; their ``refine`` largest logits are
        recomputed exactly in float32 so greedy choices match the exact path.
        """
        out = super().forward(hidden.float()).float()  # [T, V]
        if not self.cpu_kernel or refine <= 0:
            return out
        top = out.topk(min(refine, out.shape[-1]), dim=-1).indices  # [T, k]
        rows = self.weight[top].float() * self.weight_scale[top].float()[..., None]  # [T, k, H]
        exact = torch.einsum("tkh,th->tk", rows, hidden.float())
        return out.scatter_(-1, top, exact)


def quantize_modules(model: nn.Module, plan: dict[str, LayerQuant]) -> None:
    """Replace the modules named in ``plan`` by quantized ones (call on the meta device, before to_empty)."""
    for name, quant in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Embedding):
            new: nn.Module = QuantEmbedding(old.num_embeddings, old.embedding_dim, model.ops)
        else:
            new = QuantLinear(old.in_features, old.out_features, old.bias is not None, quant, model.ops)
        setattr(parent, child, new)


def prepare_quantized(model: nn.Module, kernel_backend: str) -> None:
    """After loading: move CPU quantized layers onto torch's packed kernels (backends "auto"/"torch")."""
    if kernel_backend not in ("auto", "torch"):
        return
    for module in model.modules():
        if isinstance(module, QuantLinear) and next(module.buffers()).device.type == "cpu":
            module.prepare_cpu()
