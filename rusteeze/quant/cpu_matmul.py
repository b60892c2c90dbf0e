"""The CPU path of the quantized layers: torch's packed weight-only kernels, bf16 activations.

Measured on this machine class (AVX2, no native bf16; ``benches/quant_kernels.py``
holds the script and the figures) for SmolLM2 shapes, batch 1 and 32:

* ``_weight_int4pack_mm_for_cpu`` / ``_weight_int8pack_mm`` with **bf16**
  activations are the fastest correct kernels at batch 1: 1.0–3.7× faster
  than a float32 ``F.linear`` on the float weight (lm_head 49152×576: 9 ms
  int4, 18 ms int8 vs 35 ms float32) and 2–10× faster than dequantizing the
  layer per call. With float32 or float16 activations the same ops fall back to
  slow reference loops (10–200× slower): activations are cast to bf16.
* At batch 32 they stay within ~1.6× of float32 ``F.linear`` and beat
  dequantize-then-matmul for int4 by 3–6×, so they serve every batch size.

* From ``DEQUANT_MIN_TOKENS`` rows (prefill) the int4 kernel loses to float32:
  unpacking the layer to float32 (~4 ms for gate_up 3072×576) and running
  ``F.linear`` takes 1024 tokens through gate_up in 39 ms instead of 72
  (256 tokens: 14 vs 19 ms; 64 tokens: 8 vs 5 ms, so decode keeps the kernel).

Weights are converted once, at load time, into the kernels' layouts:
int4 → ``_convert_weight_to_int4pack_for_cpu`` (needs N % 16 == 0) plus
``scales_and_zeros [K/G, N, 2]`` where the kernel's zero is the value of
q == 8, i.e. ``min + 8 · scale``; int8 keeps its ``[N, K]`` weight and a bf16
copy of the [N] scales. Layers whose shapes a kernel rejects keep the portable
``rusteeze.kernels`` op.
"""

import torch
import torch.nn.functional as F

from rusteeze.quant.tensors import unpack_int4

KERNEL_DTYPE = torch.bfloat16
DEQUANT_MIN_TOKENS = 256  # from this many rows, unpack to float32 and use F.linear
PACK_ROWS = 32  # the CPU int4pack layout interleaves blocks of 32 output rows


def int4_supported(n: int, k: int, group_size: int) -> bool:
    """Whether torch's packed int4 CPU kernel takes an [N, K] weight with this group size."""
    has_ops = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    return has_ops and n % 16 == 0 and k % group_size == 0 and group_size in (32, 64, 128, 256)


def prepare_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed [N, K/2], scales/mins [N, K/G]) → (int4pack weight, scales_and_zeros [K/G, N, 2] bf16)."""
    q = unpack_int4(packed).to(torch.int32)  # [N, K]
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    s, m = scales.float(), mins.float()
    scales_zeros = torch.stack((s.T, (m + 8.0 * s).T), dim=-1).to(KERNEL_DTYPE).contiguous()
    return weight, scales_zeros


def int4_matmul(x: torch.Tensor, weight: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """x: [T, K] → [T, N] in x's dtype, through the packed int4 kernel (prepared by prepare_int4).

    Prefill-sized inputs (``DEQUANT_MIN_TOKENS`` rows or more) unpack the
    weight to float32 instead and use ``F.linear`` (faster there, and exact in
    the activations rather than bf16).
    """
    n = scales_zeros.shape[1]
    if x.shape[0] >= DEQUANT_MIN_TOKENS and n % PACK_ROWS == 0:
        return F.linear(x.float(), dequantize_int4pack(weight, scales_zeros, group_size)).to(x.dtype)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(KERNEL_DTYPE), weight, group_size, scales_zeros)
    return out.to(x.dtype)


def dequantize_int4pack(weight: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float32 [N, K] weight held by prepare_int4's outputs (N a multiple of PACK_ROWS).

    Layout of ``_convert_weight_to_int4pack_for_cpu`` (checked in the tests):
    byte ``[b, k, j]`` of the [N/32, K, 16] view holds row ``32b + j`` of
    column k in its low nibble and row ``32b + 16 + j`` in its high nibble.
    """
    groups, n = scales_zeros.shape[:2]
    k = groups * group_size
    b = weight.view(n // PACK_ROWS, k, PACK_ROWS // 2)
    q = torch.stack((b & 0x0F, b >> 4), dim=2).reshape(n // PACK_ROWS, k, PACK_ROWS)  # [N/32, K, 32]
    q = q.transpose(1, 2).reshape(n, groups, group_size).float()  # [N, K/G, G]
    scale = scales_zeros[..., 0].T.float().unsqueeze(-1)  # [N, K/G, 1]
    zero = scales_zeros[..., 1].T.float().unsqueeze(-1)  # the value of q == 8
    return ((q - 8.0) * scale + zero).reshape(n, k)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: [T, K], weight [N, K] int8, scale [N] bf16 → [T, N] in x's dtype."""
    return torch.ops.aten._weight_int8pack_mm(x.to(KERNEL_DTYPE), weight, scale).to(x.dtype)
