"""load_model(EngineConfig): the config's gguf_direct picks the quantized or the float GGUF path; what a load keeps."""

import weakref

from rusteeze import LLM
from rusteeze.config import EngineConfig
from rusteeze.loader import model_loader
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


def test_the_gguf_reader_is_gone_before_the_repack_and_after_the_load(smollm2_gguf_path, monkeypatch):
    """The reader (the vocabulary as Python strings, the mapped file) never overlaps the repacked weights."""
    readers, alive_at_repack = [], []
    real_open = model_loader.open_gguf

    def open_and_watch(path):
        reader = real_open(path)
        readers.append(weakref.ref(reader))
        return reader

    monkeypatch.setattr(model_loader, "open_gguf", open_and_watch)
    monkeypatch.setattr(
        model_loader, "prepare_quantized", lambda *args, **kwargs: alive_at_repack.append(readers[0]() is not None)
    )
    loaded = model_loader.load_model_from_path(smollm2_gguf_path, device="cpu", kernel_backend="torch")
    assert _quant_linears(loaded.model) > 0
    assert alive_at_repack == [False]
    assert readers[0]() is None
