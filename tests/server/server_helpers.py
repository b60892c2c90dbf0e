"""Server test helpers: run an app's lifespan in process, or serve it live on uvicorn.

A module of its own (not conftest.py), so test files import it by a name no other
test directory shares.
"""

import asyncio
import contextlib
import threading

import httpx

from rusteeze.server.app import ServerApp
from rusteeze.server.uvicorn_server import bind_socket, make_server

MODEL = "tiny-llama"


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


@contextlib.contextmanager
def live_model_server(model: str, name: str, one_torch_thread: bool = False, **engine_kw):
    """Serve ``model`` (a path) as ``name`` on a live uvicorn server; yields (base URL, app).

    ``engine_kw`` are EngineConfig fields (device is the CPU); ``one_torch_thread``
    runs the engine on one torch thread for the block (restored after).
    """
    import torch

    from rusteeze.config import EngineConfig
    from rusteeze.engine.engine import Engine
    from rusteeze.server.app import create_app
    from rusteeze.server.settings import ServerSettings

    config = EngineConfig(model=model, device="cpu", **engine_kw)
    app = create_app(ServerSettings(), lambda: Engine(config), name)
    before = torch.get_num_threads()
    if one_torch_thread:
        torch.set_num_threads(1)
    try:
        with live_server(app) as base:
            yield base, app
    finally:
        torch.set_num_threads(before)
