"""Engine fixtures: engines over the tiny random models (torch kernels, CPU)."""

import pytest
import torch

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.engine.kv_cache import bytes_per_block
from rusteeze.loader.model_loader import load_model_from_path


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run ~10x faster on one thread than on two contended ones (no OpenMP spinning).

    Numba's parallel kernels (the quantized matmuls) too: on a loaded 2-core machine a 1×576×1536
    int4 matmul took 12 ms on two Numba threads against 0.28 ms on one.
    """
    import numba

    before, numba_before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    numba.set_num_threads(numba_before)


@pytest.fixture(scope="session")
def loaded_tiny(tiny_model_dirs):
    """{arch: LoadedModel}, loaded once per session and shared by the engines (weights are read-only)."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            cache[arch] = load_model_from_path(tiny_model_dirs[arch], device="cpu", kernel_backend="torch")
        return cache[arch]

    return get


@pytest.fixture
def make_engine(loaded_tiny, tiny_model_dirs):
    """make_engine(arch="llama", kv_tokens=None, **config) → a fresh Engine.

    ``kv_tokens`` sizes the KV cache to exactly that many tokens (rounded up to blocks).
    """

    def make(arch: str = "llama", kv_tokens: int | None = None, **kw) -> Engine:
        loaded = loaded_tiny(arch)
        kw.setdefault("max_model_len", 128)
        kw.setdefault("block_size", 4)
        if kv_tokens is not None:
            blocks = -(-kv_tokens // kw["block_size"])
            kw["kv_cache_memory"] = blocks * bytes_per_block(loaded.config, kw["block_size"], torch.float32)
        kw.setdefault("kv_cache_memory", "8MiB")
        config = EngineConfig(model=str(tiny_model_dirs[arch]), device="cpu", kernel_backend="torch", **kw)
        engine = Engine(config, loaded=loaded)
        return engine

    return make
