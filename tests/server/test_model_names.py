"""Several served model names (aliases): all listed, all accepted, the client's own reported back."""

import json

import pytest
from server_helpers import run_app

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.server.app import create_app
from rusteeze.server.settings import ServerSettings

NAMES = ("smol", "gpt-4o-mini", "team/alias")


@pytest.fixture
def aliased(tiny_loaded, tiny_llama_dir):
    """call(fn): run ``fn(client)`` against an app serving the tiny Llama under NAMES."""
    config = EngineConfig(
        model=str(tiny_llama_dir), device="cpu", kernel_backend="torch", max_model_len=128, kv_cache_memory="8MiB"
    )

    def call(fn):
        app = create_app(ServerSettings(), lambda: Engine(config, loaded=tiny_loaded), NAMES)
        return run_app(app, fn)

    return call


def sse_models(text: str) -> set[str]:
    """The ``model`` of every JSON chunk of an event stream."""
    chunks = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    return {json.loads(c)["model"] for c in chunks if c != "[DONE]"}


def test_models_lists_every_alias_in_order(aliased):
    async def fn(c):
        data = (await c.get("/v1/models")).json()["data"]
        assert [m["id"] for m in data] == list(NAMES)
        assert all(m["max_model_len"] == 128 and m["object"] == "model" for m in data)

    aliased(fn)


def test_every_alias_is_accepted_and_reported_back(aliased):
    completion = {"prompt": "Hi", "max_tokens": 2, "temperature": 0}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}

    async def fn(c):
        for name in NAMES:
            r = await c.post("/v1/completions", json={**completion, "model": name})
            assert r.status_code == 200 and r.json()["model"] == name
            r = await c.post("/v1/chat/completions", json={**chat, "model": name})
            assert r.status_code == 200 and r.json()["model"] == name
            assert (await c.post("/tokenize", json={"prompt": "Hi", "model": name})).status_code == 200
        r = await c.post("/v1/chat/completions", json={**chat, "model": "gpt-4o-mini", "stream": True})
        assert sse_models(r.text) == {"gpt-4o-mini"}
        r = await c.post("/v1/completions", json={**completion, "stream": True})
        assert sse_models(r.text) == {"smol"}  # no model named: the first name (vLLM's rule)
        assert (await c.post("/v1/completions", json=completion)).json()["model"] == "smol"

    aliased(fn)


def test_an_unknown_model_names_every_alias(aliased):
    async def fn(c):
        r = await c.post("/v1/completions", json={"prompt": "Hi", "model": "SMOL"})  # case matters, as in vLLM
        assert r.status_code == 404
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("model", "model_not_found")
        assert error["message"] == (
            "model 'SMOL' does not exist; this server serves 'smol' or 'gpt-4o-mini' or 'team/alias'"
        )

    aliased(fn)
