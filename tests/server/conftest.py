"""Server fixtures: apps over the tiny random Llama, in process (httpx) or live on uvicorn."""

import pytest
import torch
from server_helpers import MODEL, run_app

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.server.app import ServerApp, create_app
from rusteeze.server.settings import ServerSettings


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run much faster on one torch thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_llama_dir):
    """The tiny Llama, loaded once (weights are read-only; each app gets its own engine and KV cache)."""
    return load_model_from_path(tiny_llama_dir, device="cpu", kernel_backend="torch")


@pytest.fixture
def make_app(tiny_loaded, tiny_llama_dir):
    """make_app(engine_kw=None, **settings) → a ServerApp over a fresh tiny-Llama engine."""

    def make(engine_kw: dict | None = None, **settings) -> ServerApp:
        kw = {"max_model_len": 128, "block_size": 4, "kv_cache_memory": "8MiB", **(engine_kw or {})}
        config = EngineConfig(model=str(tiny_llama_dir), device="cpu", kernel_backend="torch", **kw)
        return create_app(ServerSettings(**settings), lambda: Engine(config, loaded=tiny_loaded), MODEL)

    return make


@pytest.fixture
def call(make_app):
    """call(fn, **settings): run ``fn(client)`` against a fresh in-process app; returns its result."""

    def run(fn, engine_kw: dict | None = None, **settings):
        return run_app(make_app(engine_kw, **settings), fn)

    return run
