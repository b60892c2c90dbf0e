"""Dequantize GGUF tensor data to float32, vectorized (no Python loop per block).

Q8_0, Q4_0 and Q4_1 — the common llama.cpp formats — are decoded with torch
(multi-threaded, several times faster than numpy on this data); every other
supported type goes through gguf-py's vectorized numpy implementation.
"""

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

QT = GGMLQuantizationType


def _blocks(raw: np.ndarray, qtype: GGMLQuantizationType) -> torch.Tensor:
    """[rows, row_bytes] uint8 (read-only mmap view) → [rows, blocks, type_size] uint8 tensor (a copy)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    return torch.from_numpy(np.array(raw, dtype=np.uint8)).view(raw.shape[0], -1, type_size)


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 stored at byte ``start`` of every block, as [rows, blocks, 1] float32."""
    return blocks[..., start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[rows, blocks, 16] packed → [rows, blocks, 32]: low nibbles are elements 0-15, high 16-31."""
    return torch.cat((qs & 0x0F, qs >> 4), dim=-1).float()


def dequantize_q8_0(raw: np.ndarray) -> torch.Tensor:
    """Q8_0 (34-byte blocks: f16 scale d, 32 int8 q; w = d * q) → [rows, cols] float32."""
    b = _blocks(raw, QT.Q8_0)
    q = b[..., 2:].contiguous().view(torch.int8).float()  # [rows, blocks, 32]
    return (q * _f16(b, 0)).flatten(1)


def dequantize_q4_0(raw: np.ndarray) -> torch.Tensor:
    """Q4_0 (18-byte blocks: f16 d, 16 bytes of nibbles; w = d * (q - 8)) → [rows, cols] float32."""
    b = _blocks(raw, QT.Q4_0)
    return ((_nibbles(b[..., 2:]) - 8.0) * _f16(b, 0)).flatten(1)


def dequantize_q4_1(raw: np.ndarray) -> torch.Tensor:
    """Q4_1 (20-byte blocks: f16 d, f16 m, 16 bytes of nibbles; w = d * q + m) → [rows, cols] float32."""
    b = _blocks(raw, QT.Q4_1)
    return (_nibbles(b[..., 4:]) * _f16(b, 0) + _f16(b, 2)).flatten(1)


_TORCH_DEQUANT = {QT.Q8_0: dequantize_q8_0, QT.Q4_0: dequantize_q4_0, QT.Q4_1: dequantize_q4_1}


def dequantize(data: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Tensor data of any supported type → a float32 tensor of ``shape`` (HF order, slowest first)."""
    if qtype in _TORCH_DEQUANT:
        return _TORCH_DEQUANT[qtype](data.reshape(-1, data.shape[-1])).reshape(shape)
    if qtype in (QT.F32, QT.F16):
        return torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(gguf_dequantize(data, qtype), dtype=np.float32)).reshape(shape)
