"""Over real HTTP: no code from requests, nothing slow on the event loop, a dead engine is a 503 with its cause."""

import asyncio
import json
import socket
import threading

import httpx
from server_helpers import live_server

from rusteeze.server.uvicorn_server import bind_socket
from rusteeze.tokenizer import Tokenizer

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
INJECTED = {"chat_template": "INJECTED {{ 6 * 7 }}"}


def _events(text: str) -> list:
    return [json.loads(b[6:]) if b[6:] != "[DONE]" else "[DONE]" for b in text.split("\n\n") if b]


def test_a_request_cannot_bring_its_own_chat_template(make_app):
    app = make_app()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": INJECTED})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "chat_template_kwargs.chat_template"
        assert "--trust-request-chat-template" in error["message"]
        ok = client.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": {"enable_thinking": False}})
        assert ok.status_code == 200


def test_with_trust_a_request_template_renders_in_the_bounded_sandbox(make_app):
    app = make_app(trust_request_chat_template=True)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "chat_template_kwargs": INJECTED})
        assert r.status_code == 200, r.text
        want = app.state.engine.tokenizer.encode_chat([], chat_template="INJECTED 42")
        assert r.json()["usage"]["prompt_tokens"] == len(want)
        templates = {
            "{{ ''.__class__.__mro__ }}": "unsafe",
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}": "rendered more than",
            "{{ 'x' * 10**12 }}": "larger than",
            "{% for m in messages %}": "does not parse",
        }
        for template, message in templates.items():
            body = {**CHAT, "chat_template_kwargs": {"chat_template": template}}
            r = client.post("/v1/chat/completions", json=body)
            assert r.status_code == 400 and message in r.json()["error"]["message"], (template, r.text)
        assert client.get("/health").status_code == 200


def test_a_slow_tokenization_does_not_delay_other_streams(make_app, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    encode = Tokenizer.encode

    def slow_encode(self, text, *args, **kwargs):
        if "SLOW" in text:
            entered.set()
            assert release.wait(60), "never released"
        return encode(self, text, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode", slow_encode)
    app = make_app()

    async def main(url: str):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            slow = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "SLOW", "max_tokens": 2}))
            while not entered.is_set():  # the slow request sits in its tokenizer
                await asyncio.sleep(0.005)
            body = {"prompt": "Hello", "max_tokens": 20, "temperature": 0, "ignore_eos": True, "stream": True}
            fast = await client.post("/v1/completions", json=body)  # a whole stream meanwhile
            health = await client.get("/health")
            tokenized = await client.post("/tokenize", json={"prompt": "Hello"})
            assert not slow.done()
            release.set()
            return (await slow), fast, health, tokenized

    try:
        with live_server(app) as url:
            slow, fast, health, tokenized = asyncio.run(main(url))
    finally:
        release.set()
    evs = _events(fast.text)
    assert evs[-1] == "[DONE]" and evs[-2]["choices"][0]["finish_reason"] == "length"
    assert health.status_code == 200 and tokenized.status_code == 200
    assert slow.status_code == 200 and slow.json()["usage"]["completion_tokens"] == 2


class _Killed(BaseException):
    """Escapes every `except Exception`: the engine thread dies of it."""


def test_a_dead_engine_is_a_503_with_its_cause_everywhere(make_app):
    app = make_app()
    body = {"prompt": "Hello", "max_tokens": 100, "temperature": 0, "ignore_eos": True}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        engine, steps = app.state.engine, {"n": 0}
        real_step = engine.step

        def dying_step():
            steps["n"] += 1
            if steps["n"] == 10:
                raise _Killed("the GPU fell off the bus")
            return real_step()

        engine.step = dying_step
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            evs = _events(r.read().decode())
        assert evs[-1] == "[DONE]" and len(evs) > 3  # some tokens, then the error
        error = evs[-2]["error"]
        assert error["code"] == "engine_dead" and "the GPU fell off the bus" in error["message"]
        for r in (client.get("/health"), client.post("/v1/completions", json=body)):
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "engine_dead" and "fell off the bus" in r.json()["error"]["message"]
        assert client.get("/metrics").status_code == 200


def test_a_dead_engine_fails_a_waiting_whole_request_with_503(make_app):
    app = make_app()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        engine = app.state.engine
        real_step = engine.step

        def dying_step():
            if engine.requests and all(r.seqs[0].num_output_tokens >= 3 for r in engine.requests.values()):
                raise _Killed("killed mid-request")
            return real_step()

        engine.step = dying_step
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 50, "ignore_eos": True})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
        assert "killed mid-request" in r.json()["error"]["message"]


def test_a_runtime_error_is_not_disguised_as_a_shutdown(make_app, monkeypatch):
    app = make_app()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:

        async def broken_run(request, cumulative=True):
            raise RuntimeError("a real bug")
            yield

        monkeypatch.setattr(app.state.aengine, "run", broken_run)
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 500 and r.json()["error"]["code"] != "shutting_down"
        monkeypatch.undo()
        assert client.get("/health").status_code == 200


def test_accepted_connections_send_small_writes_at_once():
    """TCP_NODELAY on every connection: an SSE event or a response body never waits for an ACK (40 ms)."""
    sock = bind_socket("127.0.0.1", 0)

    async def main():
        nodelay = asyncio.get_running_loop().create_future()

        def on_connection(reader, writer):
            nodelay.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connection, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        value = await nodelay
        writer.close()
        server.close()
        return value

    assert asyncio.run(main()) != 0
