"""The app in process (httpx.ASGITransport): routing, errors, auth, CORS, limits, loading, small endpoints."""

import asyncio
import json
import threading

import pytest
from server_helpers import MODEL, run_app

from rusteeze.errors import ModelLoadError
from rusteeze.tokenizer import Tokenizer


def error(r, status: int, param=None) -> dict:
    """Check an OpenAI-shaped error response; returns its ``error`` object."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    return body["error"]


def test_routes_methods_and_unknown_model(call):
    async def fn(c):
        error(await c.get("/nope"), 404)
        assert error(await c.get("/v1/completions"), 405)["code"] == "method_not_allowed"
        r = await c.post("/v1/completions", json={"model": "gpt-4", "prompt": "hi"})
        e = error(r, 404, "model")
        assert e["code"] == "model_not_found" and MODEL in e["message"]
        assert (await c.get("/v1/models")).json()["data"][0]["id"] == MODEL
        assert (await c.get("/version")).json()["version"]

    call(fn)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "not valid JSON"), (b"", "not valid")],
)
def test_malformed_bodies_are_400(call, content, message):
    async def fn(c):
        for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
            e = error(await c.post(path, content=content), 400)
            assert message in e["message"]

    call(fn)


def test_prompt_problems_the_engine_finds_are_400(make_app):
    app = make_app()

    async def fn(c):
        e = error(await c.post("/v1/completions", json={"prompt": list(range(1, 200))}), 400, "prompt")
        assert "199" in e["message"] and "128" in e["message"]  # both numbers
        long_chat = {"messages": [{"role": "user", "content": "hello " * 200}]}
        assert "128" in error(await c.post("/v1/chat/completions", json=long_chat), 400, "messages")["message"]
        error(await c.post("/v1/completions", json={"prompt": [10**6]}), 400, "prompt")
        error(await c.post("/v1/completions", json={"prompt": ""}), 400, "prompt")
        error(await c.post("/v1/completions", json={"prompt": "x", "stop_token_ids": [10**6]}), 400, "stop_token_ids")
        error(await c.post("/v1/completions", json={"prompt": "x", "logit_bias": {"999999": 1}}), 400, "logit_bias")
        # a bad prompt among good ones: nothing is queued, the engine stays idle
        error(await c.post("/v1/completions", json={"prompt": ["ok", "", "ok"]}), 400, "prompt")
        assert not app.state.engine.has_unfinished_requests() and app.state.engine.block_manager.usage == 0

    run_app(app, fn)


def test_body_limit_is_413(call):
    async def chunks():
        for _ in range(8):
            yield b" " * 100

    async def fn(c):
        big = {"prompt": "x" * 2000}
        assert error(await c.post("/v1/completions", json=big), 413)["code"] == "body_too_large"
        r = await c.post("/v1/completions", content=chunks())  # no Content-Length: counted while reading
        error(r, 413)
        assert (await c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).status_code == 200

    call(fn, max_body_bytes=500)


def test_too_many_waiting_requests_is_503(call):
    async def fn(c):
        r = await c.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 1})
        assert error(r, 503)["code"] == "overloaded"
        assert (await c.post("/v1/completions", json={"prompt": ["a", "b"], "max_tokens": 1})).status_code == 200

    call(fn, max_waiting_requests=2)


def test_api_key_guards_v1_only(call):
    async def fn(c):
        assert error(await c.get("/v1/models"), 401)["code"] == "invalid_api_key"
        error(await c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        error(await c.get("/v1/models", headers={"Authorization": "Basic sekrit"}), 401)
        error(await c.post("/v1/completions", json={"prompt": "x"}), 401)
        assert (await c.get("/v1/models", headers={"Authorization": "Bearer sekrit"})).status_code == 200
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200

    call(fn, api_key="sekrit")


def test_cors_is_off_by_default(call):
    async def fn(c):
        r = await c.get("/v1/models", headers={"Origin": "http://a.example"})
        assert "access-control-allow-origin" not in r.headers
        error(await c.options("/v1/models", headers={"Origin": "http://a.example"}), 405)

    call(fn)


def test_cors_with_allowed_origins(call):
    preflight = {"Origin": "http://a.example", "Access-Control-Request-Method": "POST"}

    async def fn(c):
        r = await c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "http://a.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await c.get("/v1/models", headers={"Origin": "http://a.example"})
        assert r.headers["access-control-allow-origin"] == "http://a.example"
        r = await c.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        error(await c.options("/v1/models", headers={**preflight, "Origin": "http://evil.example"}), 400)

    call(fn, allowed_origins=("http://a.example",), api_key="k")  # preflights need no key


def test_health_is_503_while_loading_then_200(make_app):
    gate = threading.Event()
    app = make_app()
    factory = app.state.engine_factory
    app.state.engine_factory = lambda: gate.wait() and factory()

    async def fn(c):
        assert error(await c.get("/health"), 503)["code"] == "model_loading"
        error(await c.post("/v1/completions", json={"prompt": "x"}), 503)
        assert (await c.get("/metrics")).status_code == 200
        gate.set()
        for _ in range(2000):
            if (await c.get("/health")).status_code == 200:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("never became healthy")

    run_app(app, fn, ready=False)


def test_a_failed_load_is_reported_and_stops_the_server(make_app):
    app = make_app()
    app.state.engine_factory = lambda: (_ for _ in ()).throw(ModelLoadError("model.gguf is truncated"))
    failures = []
    app.state.on_load_error = failures.append

    async def fn(c):
        for _ in range(2000):
            if failures:
                break
            await asyncio.sleep(0.005)
        e = error(await c.get("/health"), 503)
        assert e["code"] == "model_load_failed" and "truncated" in e["message"]

    run_app(app, fn, ready=False)
    assert isinstance(failures[0], ModelLoadError)


def test_tokenize_and_detokenize(call):
    async def fn(c):
        r = (await c.post("/tokenize", json={"prompt": "Hello world"})).json()
        assert r["count"] == len(r["tokens"]) > 0 and r["max_model_len"] == 128
        assert (await c.post("/detokenize", json={"tokens": r["tokens"]})).json()["prompt"].endswith("Hello world")
        chat = (await c.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})).json()
        assert chat["count"] > 2
        error(await c.post("/tokenize", json={}), 400, "prompt")
        error(await c.post("/tokenize", json={"prompt": 5}), 400, "prompt")
        error(await c.post("/tokenize", json={"messages": []}), 400, "messages")
        error(await c.post("/detokenize", json={"tokens": "abc"}), 400, "tokens")
        error(await c.post("/detokenize", json={"tokens": [10**7]}), 400, "tokens")

    call(fn)


def test_each_prompt_is_tokenized_once(call, monkeypatch):
    """Validation tokenizes the prompt; running the request reuses those ids."""
    calls: list[str] = []
    for name in ("encode", "encode_chat"):
        original = getattr(Tokenizer, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Tokenizer, name, counted)

    async def fn(c):
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (await c.post("/v1/chat/completions", json=chat)).status_code == 200
        assert calls == ["encode_chat"]
        calls.clear()
        r = await c.post("/v1/completions", json={"prompt": ["a b", "c d"], "max_tokens": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
        assert calls == ["encode", "encode"]

    call(fn)


JUNK = [None, True, -1, 1e309, "x", [], {}, [None], {"a": [1, {"b": None}]}, "\u0000", 2**70, [[-5]], [[0.5]]]


def test_no_junk_field_value_is_a_500(call):
    fields = "prompt messages n max_tokens temperature stop logit_bias stream stream_options logprobs top_logprobs"
    fields = [*fields.split(), "seed", "chat_template_kwargs", "stop_token_ids", "echo", "model"]

    async def fn(c):
        statuses = set()
        for field in fields:
            for value in JUNK:
                for path, base in (("/v1/completions", {"prompt": "a"}), ("/v1/chat/completions", {"messages": []})):
                    body = {**base, "max_tokens": 1, field: value}
                    r = await c.post(path, content=json.dumps(body, allow_nan=True))
                    assert r.status_code < 500, (path, body, r.text)
                    statuses.add(r.status_code)
        assert statuses >= {200, 400, 404}

    call(fn)
