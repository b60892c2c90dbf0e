"""Server fixtures: apps over the tiny random Llama, in process (httpx) or live on uvicorn."""

import asyncio
import contextlib
import threading

import httpx
import pytest
import torch

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.server.app import ServerApp, create_app
from rusteeze.server.runner import bind_socket, make_server
from rusteeze.server.settings import ServerSettings

MODEL = "tiny-llama"


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


async def wait_ready(app: ServerApp) -> None:
    """Wait (bounded) until the app's engine has loaded; fail on a load error."""
    for _ in range(2000):
        if app.state.ready:
            return
        if app.state.load_error is not None:
            raise app.state.load_error
        await asyncio.sleep(0.005)
    raise AssertionError("the engine never became ready")


@contextlib.asynccontextmanager
async def lifespan(app: ServerApp, ready: bool = True):
    """Run the app's lifespan protocol around the block (httpx's ASGITransport does not)."""
    inbox: asyncio.Queue = asyncio.Queue()
    outbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    if ready:
        await wait_ready(app)
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


def run_app(app: ServerApp, fn, ready: bool = True):
    """Run ``await fn(client)`` with an in-process httpx client, inside the app's lifespan."""

    async def main():
        async with lifespan(app, ready):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await fn(client)

    return asyncio.run(main())


@pytest.fixture
def call(make_app):
    """call(fn, **settings): run ``fn(client)`` against a fresh in-process app; returns its result."""

    def run(fn, engine_kw: dict | None = None, **settings):
        return run_app(make_app(engine_kw, **settings), fn)

    return run


@contextlib.contextmanager
def live_server(app: ServerApp):
    """Serve ``app`` on uvicorn in a thread on 127.0.0.1 and a free port; yields the base URL."""
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(app, sock, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(4000):
            if server.started and app.state.ready:
                break
            if not thread.is_alive() or app.state.load_error is not None:
                raise AssertionError(f"the server did not start: {app.state.load_error}")
            threading.Event().wait(0.005)
        else:
            raise AssertionError("the server never became ready")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
