"""prepare_quantized: which math each dtype gets on the CPU kernels."""

import pytest

from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.quant import cpu_matmul
from rusteeze.quant.config import QuantConfig
from rusteeze.quant.convert import quantize_model
from rusteeze.quant.layers import QuantEmbedding, QuantLinear


@pytest.fixture(scope="module")
def int4_dir(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int4"
    quantize_model(tiny_llama_dir, out, QuantConfig("int4", 32, quantize_embeddings=True))
    return out


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_dtype_auto_takes_int16_activations_and_native_bf16_float32_does_not(int4_dir, dtype):
    model = load_model_from_path(int4_dir, kernel_backend="numba", dtype=dtype).model
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    layers = [m for name, m in quantized.items() if not isinstance(m, QuantEmbedding) and name != "lm_head"]
    assert layers and all(m.tiled is not None for m in layers)
    fast = dtype == "auto"
    assert all(m.tiled.activation_bits == (16 if fast else 0) for m in layers)
    assert all(m.tiled.kernel_max_tokens == cpu_matmul.NUMBA_MAX_TOKENS for m in layers)
    assert all(m.tiled.bf16_gemm == (fast and cpu_matmul.native_bf16()) for m in layers)
    logits_side = [m for name, m in quantized.items() if isinstance(m, QuantEmbedding) or name == "lm_head"]
    assert logits_side
    assert not any(m.tiled.bf16_gemm for m in logits_side)  # the logits layer keeps float32 GEMMs
    assert all(m.tiled.activation_bits == (16 if fast else 0) for m in logits_side)
    logits_rows = cpu_matmul.LOGITS_MAX_TOKENS if fast else cpu_matmul.NUMBA_MAX_TOKENS
    assert all(m.tiled.kernel_max_tokens == logits_rows for m in logits_side)


def test_torch_backend_keeps_the_checkpoint_layout(int4_dir):
    model = load_model_from_path(int4_dir, kernel_backend="torch").model
    assert all(m.tiled is None for m in model.modules() if isinstance(m, QuantLinear))
