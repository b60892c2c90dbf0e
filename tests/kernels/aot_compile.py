"""Compile every Triton kernel ahead of time for a CUDA target, no GPU needed.

The interpreter runs kernels as numpy code and accepts some programs that the
real compiler rejects (loop-carried type changes, bad ``tl.dot`` shapes,
register blow-ups). This script lowers each kernel, with the constexprs its
launcher uses, all the way to a cubin (for sm_90 and sm_80, or the compute
capabilities given as arguments: ``python aot_compile.py 90``). It must run without
``TRITON_INTERPRET`` (see test_kernel_compile.py, which starts it in a
subprocess). Exit status 0 means every kernel compiled.
"""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rusteeze.kernels import (
    triton_activation,
    triton_attention,
    triton_kv_cache,
    triton_quant_matmul,
    triton_rms_norm,
    triton_rotary,
)

FLOAT_ARGS = {"eps", "qk_scale"}


def signature(fn, constexprs: dict, pointers: dict, default_pointer: str) -> dict:
    """Triton type string per argument: pointers by name, floats, i32 for the rest."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, default_pointer)
        elif name in FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def cases():
    """(label, kernel, constexprs, pointer dtypes, default pointer dtype, num_warps)."""
    yield "rms_norm", triton_rms_norm._rms_norm_kernel, {"HAS_RESIDUAL": False, "BLOCK_H": 4096}, {}, "bf16", 8
    yield "fused_add_rms_norm", triton_rms_norm._rms_norm_kernel, {"HAS_RESIDUAL": True, "BLOCK_H": 2048}, {}, "fp16", 4
    rope = {"IS_NEOX": True, "HALF_R": 64, "BLOCK_H": 32, "BLOCK_R2": 64}
    yield "rotary", triton_rotary._rotary_kernel, rope, {"positions_ptr": "i64", "cache_ptr": "fp32"}, "bf16", 4
    yield "silu_and_mul", triton_activation._silu_and_mul_kernel, {"BLOCK": 1024}, {}, "bf16", 4
    kv = {"BLOCK_H": 8, "BLOCK_D": 128}
    yield "store_kv", triton_kv_cache._store_kv_kernel, kv, {"slot_ptr": "i64"}, "bf16", 4
    attn_ptrs = {
        "part_acc_ptr": "fp32",
        "part_m_ptr": "fp32",
        "part_l_ptr": "fp32",
        "cu_q_ptr": "i32",
        "seq_lens_ptr": "i32",
        "block_tables_ptr": "i32",
    }
    for label, dtype, extra in [
        ("attention-decode-split", "bf16", {"BLOCK_M": 16, "BLOCK_Q": 4, "G": 4, "NUM_SPLITS": 8, "USE_WINDOW": False}),
        (
            "attention-prefill-window",
            "fp16",
            {"BLOCK_M": 64, "BLOCK_Q": 64, "G": 1, "NUM_SPLITS": 1, "USE_WINDOW": True},
        ),
        ("attention-fp32", "fp32", {"BLOCK_M": 16, "BLOCK_Q": 16, "G": 1, "NUM_SPLITS": 1, "USE_WINDOW": False}),
    ]:
        consts = {"BLOCK_N": 32, "BLOCK_D": 128, "IEEE": dtype == "fp32", **extra}
        yield (
            label,
            triton_attention._paged_attention_kernel,
            consts,
            attn_ptrs,
            dtype,
            4 if extra["BLOCK_M"] <= 16 else 8,
        )
    reduce = {"NUM_SPLITS": 8, "SPLITS_P2": 8, "BLOCK_D": 128}
    yield "attention-reduce", triton_attention._reduce_splits_kernel, reduce, {"out_ptr": "bf16"}, "fp32", 4
    mm = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64, "IEEE": False}
    yield "int8_matmul", triton_quant_matmul._int8_matmul_kernel, mm, {"w_ptr": "i8"}, "bf16", 4
    mm4 = {"GROUP": 128, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "IEEE": False}
    yield "int4_matmul", triton_quant_matmul._int4_matmul_kernel, mm4, {"packed_ptr": "u8"}, "fp16", 4


def main(archs: list[int]) -> int:
    failures = 0
    for arch in archs:
        for label, fn, constexprs, pointers, default, num_warps in cases():
            src = ASTSource(fn=fn, signature=signature(fn, constexprs, pointers, default), constexprs=constexprs)
            try:
                triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
            except Exception as e:  # report every kernel, then fail
                failures += 1
                print(f"FAILED sm_{arch} {label}: {type(e).__name__}: {e}", file=sys.stderr)
            else:
                print(f"ok sm_{arch} {label}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90, 80]))
