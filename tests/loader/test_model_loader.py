"""load_model(EngineConfig): the config's gguf_direct picks the quantized or the float GGUF path."""

from rusteeze import LLM
from rusteeze.config import EngineConfig
from rusteeze.loader.model_loader import load_model
from rusteeze.quant.layers import QuantLinear


def _quant_linears(model) -> int:
    return sum(isinstance(m, QuantLinear) for m in model.modules())


def test_gguf_direct_false_loads_the_float_path_and_the_default_the_quantized_one(smollm2_gguf_path):
    common = dict(device="cpu", kernel_backend="torch", max_model_len=64)
    direct = load_model(EngineConfig(model=smollm2_gguf_path, **common))
    assert _quant_linears(direct.model) > 0
    del direct
    llm = LLM(smollm2_gguf_path, gguf_direct=False, kv_cache_memory="4MiB", max_num_seqs=1, **common)
    assert llm.config.gguf_direct is False
    loaded = llm.engine.loaded
    assert _quant_linears(loaded.model) == 0
    assert all(p.dtype == loaded.dtype for p in loaded.model.parameters())
