"""prepare_quantized: which math each dtype gets on the CPU kernels."""

import pytest

from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.quant import cpu_matmul
from rusteeze.quant import layers as layers_module
from rusteeze.quant.config import QuantConfig
from rusteeze.quant.convert import quantize_model
from rusteeze.quant.layers import QuantEmbedding, QuantLinear


@pytest.fixture(scope="module")
def int4_dir(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int4"
    quantize_model(tiny_llama_dir, out, QuantConfig("int4", 32, quantize_embeddings=True))
    return out


@pytest.mark.parametrize("int8_decode", [False, True])  # layers.INT8_DECODE_ACTIVATIONS (off by default)
@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_dtype_auto_takes_int8_activations_and_native_bf16_float32_does_not(int4_dir, dtype, int8_decode, monkeypatch):
    monkeypatch.setattr(layers_module, "INT8_DECODE_ACTIVATIONS", int8_decode)
    model = load_model_from_path(int4_dir, kernel_backend="numba", dtype=dtype).model
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    layers = [m for name, m in quantized.items() if not isinstance(m, QuantEmbedding) and name != "lm_head"]
    assert layers and all(m.tiled is not None for m in layers)
    fast = dtype == "auto"
    assert all(m.tiled.int8_activations == (fast and int8_decode) for m in layers)
    assert all(m.tiled.bf16_gemm == (fast and cpu_matmul.native_bf16()) for m in layers)
    logits_side = [m for name, m in quantized.items() if isinstance(m, QuantEmbedding) or name == "lm_head"]
    assert logits_side  # the embedding / logits layer keeps float32 math
    assert not any(m.tiled.int8_activations or m.tiled.bf16_gemm for m in logits_side)
    assert all(m.tiled.int16_activations == fast for m in logits_side)  # int8 weights: near-float32 int16 path


def test_torch_backend_keeps_the_checkpoint_layout(int4_dir):
    model = load_model_from_path(int4_dir, kernel_backend="torch").model
    assert all(m.tiled is None for m in model.modules() if isinstance(m, QuantLinear))
