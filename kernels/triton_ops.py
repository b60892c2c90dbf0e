"""The Triton backend: one launcher per op, under the names of ``torch_ops``.

Importing this module imports ``triton`` (compiling nothing and querying no
driver); ``rusteeze.kernels`` loads it lazily, on the first Triton op call.
Each launcher has the same signature and semantics as its torch twin (a few
take extra keyword-only tuning arguments) and lives in its own file.
"""

from rusteeze.kernels.triton_activation import silu_and_mul
from rusteeze.kernels.triton_attention import paged_attention
from rusteeze.kernels.triton_kv_cache import store_kv
from rusteeze.kernels.triton_quant_matmul import int4_matmul, int8_matmul
from rusteeze.kernels.triton_rms_norm import fused_add_rms_norm, rms_norm
from rusteeze.kernels.triton_rotary import rotary_embedding

__all__ = [
    "fused_add_rms_norm",
    "int4_matmul",
    "int8_matmul",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
    "store_kv",
]
