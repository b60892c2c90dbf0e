"""Streams and whole responses in process: chunk shapes, usage, echo/logprobs, disconnects, shutdown."""

import asyncio
import json

from server_helpers import lifespan, run_app

GREEDY = {"temperature": 0, "ignore_eos": True}


def events(text: str) -> list:
    """The decoded ``data:`` events of an SSE body; ``[DONE]`` stays a string."""
    out = []
    for block in text.split("\n\n"):
        if block:
            assert block.startswith("data: "), block
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def asgi_post(app, path: str, body: dict, on_chunk) -> list[bytes]:
    """POST straight into the ASGI app; ``on_chunk(count, disconnect_event)`` runs for each body chunk sent."""
    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": [], "client": None}
    disconnect = asyncio.Event()
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    chunks = []

    async def send(message):
        if message["type"] == "http.response.body" and message["body"]:
            chunks.append(message["body"])
            on_chunk(len(chunks), disconnect)

    await app(scope, receive, send)
    return chunks


def test_completion_stream_matches_the_whole_response(call):
    body = {"prompt": "Hello world", "max_tokens": 12, **GREEDY}

    async def fn(c):
        whole = (await c.post("/v1/completions", json=body)).json()
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        r = await c.post("/v1/completions", json=stream)
        assert r.headers["content-type"].startswith("text/event-stream")
        return whole, events(r.text)

    whole, evs = call(fn)
    assert evs[-1] == "[DONE]"
    chunks, usage = evs[:-2], evs[-2]
    assert usage["choices"] == []
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [usage["usage"][k] for k in counts] == [whole["usage"][k] for k in counts]
    assert usage["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the second time, the prefix cache hits
    assert whole["usage"]["completion_tokens"] == 12 and whole["choices"][0]["finish_reason"] == "length"
    assert all(ch["usage"] is None and ch["object"] == "text_completion" for ch in chunks)
    assert "".join(ch["choices"][0]["text"] for ch in chunks) == whole["choices"][0]["text"]
    assert [ch["choices"][0]["finish_reason"] for ch in chunks][-1] == "length"


def test_chat_stream_n2_role_first_and_finish_per_choice(call):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "n": 2, "seed": 3, "stream": True}

    async def fn(c):
        return events((await c.post("/v1/chat/completions", json=body)).text)

    evs = call(fn)
    assert evs[-1] == "[DONE]"
    for index in (0, 1):
        mine = [e["choices"][0] for e in evs[:-1] if e["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert all("role" not in m["delta"] for m in mine[1:])
        assert [m["finish_reason"] for m in mine][-1] in ("stop", "length")
        assert all(m["finish_reason"] is None for m in mine[:-1])
    assert all(e["object"] == "chat.completion.chunk" and "usage" not in e for e in evs[:-1])


def test_completions_several_prompts_n_echo_and_logprobs(call):
    body = {"prompt": ["Hello", "Paris is"], "max_tokens": 3, "n": 2, "echo": True, "logprobs": 2, **GREEDY}

    async def fn(c):
        return (await c.post("/v1/completions", json=body)).json()

    r = call(fn)
    assert [ch["index"] for ch in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"].startswith("Hello") and r["choices"][2]["text"].startswith("Paris is")
    assert r["choices"][0]["text"] == r["choices"][1]["text"]  # greedy: the n copies agree
    for ch in r["choices"]:
        lp = ch["logprobs"]
        n = len(lp["tokens"])
        assert len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
        assert lp["token_logprobs"][0] is None  # the first prompt token has no logprob
        assert all(v <= 0 for v in lp["token_logprobs"][1:])
        assert all(len(top) <= 3 for top in lp["top_logprobs"][1:])  # 2 alternatives + the chosen token
        assert lp["text_offset"] == sorted(lp["text_offset"])
    usage = r["usage"]
    assert usage["completion_tokens"] == 4 * 3 and usage["total_tokens"] == usage["prompt_tokens"] + 12


def test_chat_logprobs_shape(call):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "logprobs": True, "top_logprobs": 3}

    async def fn(c):
        return (await c.post("/v1/chat/completions", json={**body, **GREEDY})).json()

    content = call(fn)["choices"][0]["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"]  # greedy picks the most likely
        assert entry["bytes"] == list(entry["token"].encode())


def _idle(app) -> None:
    engine = app.state.engine
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert not app.state.inflight and app.state.num_waiting == 0


async def _until_idle(app) -> None:
    for _ in range(2000):
        if not app.state.engine.has_unfinished_requests() and not app.state.inflight:
            return
        await asyncio.sleep(0.005)


def test_a_client_that_disconnects_mid_stream_frees_its_blocks(make_app):
    app = make_app()
    body = {"prompt": "Hello", "max_tokens": 100, "stream": True, **GREEDY}

    def leave_after_two(count, disconnect):
        if count == 2:
            disconnect.set()

    async def main():
        async with lifespan(app):
            chunks = await asgi_post(app, "/v1/completions", body, leave_after_two)
            await _until_idle(app)
            _idle(app)
            metrics = app.state.metrics.render().decode()
            return chunks, metrics

    chunks, metrics = asyncio.run(main())
    assert 2 <= len(chunks) < 100 and b"[DONE]" not in b"".join(chunks)
    assert "rusteeze:num_requests_running 0.0" in metrics
    assert 'rusteeze:request_success_total{finished_reason="abort"} 1.0' in metrics


def test_a_client_that_disconnects_while_waiting_for_a_whole_response(make_app):
    app = make_app()
    body = {"prompt": "Hello", "max_tokens": 100, **GREEDY}

    async def main():
        async with lifespan(app):
            scope = {"type": "http", "method": "POST", "path": "/v1/completions", "query_string": b"",
                     "headers": [], "client": None}  # fmt: skip
            gone = asyncio.Event()
            body_sent = []

            async def receive():
                if not body_sent:
                    body_sent.append(True)
                    return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
                await gone.wait()
                return {"type": "http.disconnect"}

            sent = []

            async def send(message):
                sent.append(message)

            task = asyncio.ensure_future(app(scope, receive, send))
            for _ in range(5000):  # wait until it is generating, then hang up
                if app.state.inflight and app.state.num_waiting == 0:
                    break
                await asyncio.sleep(0.001)
            assert app.state.inflight
            gone.set()
            await task
            await _until_idle(app)
            _idle(app)
            return sent

    assert asyncio.run(main()) == []  # nobody to answer: nothing sent


def test_shutdown_ends_running_streams_with_an_error_event(make_app):
    app = make_app(shutdown_timeout=0)
    body = {"prompt": "Hello", "max_tokens": 100, "stream": True, **GREEDY}

    def shut_down_after_one(count, disconnect):
        if count == 1:
            app.state.begin_shutdown()

    async def main():
        async with lifespan(app):
            chunks = await asgi_post(app, "/v1/completions", body, shut_down_after_one)
            await _until_idle(app)
            _idle(app)
            return chunks

    evs = events(b"".join(asyncio.run(main())).decode())
    assert evs[-1] == "[DONE]"
    assert evs[-2]["error"]["code"] == "shutting_down"
    assert all(e["choices"][0]["finish_reason"] is None for e in evs[:-2])


def test_requests_after_shutdown_began_get_503(make_app):
    app = make_app()

    async def fn(c):
        app.state.begin_shutdown()
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert (await c.get("/health")).status_code == 503

    run_app(app, fn)


def test_a_stream_reader_that_falls_behind_gets_merged_chunks_with_the_same_content(make_app):
    """The reader blocks on its first chunk until the engine is done: the rest comes merged, complete."""
    app = make_app()
    body = {"prompt": ["Hello", "The sky"], "max_tokens": 60, "n": 2, "stream": True, "logprobs": 1, **GREEDY}

    def per_choice(chunks: list[bytes]) -> dict:
        evs = events(b"".join(chunks).decode())
        assert evs[-1] == "[DONE]"
        out = {}
        for e in evs[:-1]:
            c = e["choices"][0]
            text, tokens, reasons = out.setdefault(c["index"], ("", [], []))
            out[c["index"]] = (text + c["text"], tokens + c["logprobs"]["tokens"], [*reasons, c["finish_reason"]])
        return out

    async def main():
        async with lifespan(app):
            normal = await asgi_post(app, "/v1/completions", body, lambda count, disconnect: None)
            scope = {"type": "http", "method": "POST", "path": "/v1/completions", "query_string": b"",
                     "headers": [], "client": None}  # fmt: skip
            sent, chunks = [], []

            async def receive():
                if not sent:
                    sent.append(True)
                    return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
                await asyncio.Event().wait()  # never disconnects

            async def send(message):
                if message["type"] == "http.response.body" and message["body"]:
                    chunks.append(message["body"])
                    while len(chunks) == 1 and app.state.engine.has_unfinished_requests():
                        await asyncio.sleep(0.005)  # a reader that does not read

            await app({**scope}, receive, send)
            await _until_idle(app)
            _idle(app)
            return normal, chunks

    normal, stalled = asyncio.run(main())
    want, got = per_choice(normal), per_choice(stalled)
    assert sorted(got) == sorted(want) == [0, 1, 2, 3]
    for index in want:
        assert got[index][:2] == want[index][:2] and len(want[index][1]) == 60
        assert got[index][2][-1] == "length" and all(r is None for r in got[index][2][:-1])
    # However long the reply: the first chunk; the outputs in the bounded queue (2), in each pump's
    # hand (2) and merged in each engine slot (2), each a chunk per choice (n=2); [DONE].
    assert len(stalled) <= 1 + (2 + 2 + 2) * 2 + 1 < len(normal)
