"""End to end with the official openai client against a live uvicorn on 127.0.0.1 (tiny model)."""

import asyncio
import time

import httpx
import pytest
from server_helpers import MODEL, live_server

openai = pytest.importorskip("openai")

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tiny_loaded, tiny_llama_dir):
    """One live server for the module: (base URL, app)."""
    import torch

    from rusteeze.config import EngineConfig
    from rusteeze.engine.engine import Engine
    from rusteeze.server.app import create_app
    from rusteeze.server.settings import ServerSettings

    config = EngineConfig(
        model=str(tiny_llama_dir), device="cpu", kernel_backend="torch", max_model_len=128, block_size=4,
        kv_cache_memory="16MiB", max_num_seqs=64,
    )  # fmt: skip
    app = create_app(ServerSettings(api_key="k"), lambda: Engine(config, loaded=tiny_loaded), MODEL)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with live_server(app) as url:
        yield url, app
    torch.set_num_threads(before)


@pytest.fixture
def client(server):
    with openai.OpenAI(base_url=server[0] + "/v1", api_key="k", max_retries=0) as c:
        yield c


@pytest.fixture
def aclient_factory(server):
    return lambda: openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key="k", max_retries=0)


def test_models_and_auth(client, server):
    assert [m.id for m in client.models.list()] == [MODEL]
    with (
        openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError),
    ):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", temperature=-1)
    assert info.value.body["param"] == "temperature"


def test_completion_whole_and_streamed(client):
    whole = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=10, **GREEDY)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 10
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="Hello world", max_tokens=10, stream=True, stream_options={"include_usage": True},
            **GREEDY,
        )
    )  # fmt: skip
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert "".join(c.choices[0].text for c in chunks[:-1]) == whole.choices[0].text


def test_chat_whole_and_streamed(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=8, **GREEDY)
    assert whole.choices[0].message.role == "assistant" and whole.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_n2_stop_and_seed(client):
    two = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=2, max_tokens=6, seed=5, temperature=1.0
    )
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens <= 12

    text = client.completions.create(model=MODEL, prompt="Paris is", max_tokens=12, **GREEDY).choices[0].text
    stop = text[4:6]
    assert len(stop) == 2
    cut = client.completions.create(model=MODEL, prompt="Paris is", max_tokens=12, stop=[stop], **GREEDY)
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"

    def sample(seed):
        r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=20, temperature=1.0, seed=seed)
        return r.choices[0].text

    assert sample(11) == sample(11)
    assert sample(11) != sample(12)


def test_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logprobs=2, **GREEDY)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4 and all(v <= 0 for v in lp.token_logprobs)
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, logprobs=True, top_logprobs=2, **GREEDY
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 2 for t in content)


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _wait_idle(url: str, app) -> None:
    for _ in range(4000):
        if _metric(url, "rusteeze:num_requests_running") == 0 and not app.state.inflight:
            return
        time.sleep(0.005)
    raise AssertionError("requests still running")


def test_64_concurrent_streams_complete_with_correct_usage(server, aclient_factory):
    url, app = server
    generated_before = _metric(url, "rusteeze:generation_tokens_total")

    async def one(c, i):
        stream = await c.completions.create(
            model=MODEL, prompt=f"Hello {i}", max_tokens=8, stream=True, stream_options={"include_usage": True},
            **GREEDY,
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        return chunks

    async def main():
        async with aclient_factory() as c:
            return await asyncio.gather(*(one(c, i) for i in range(64)))

    results = asyncio.run(main())
    for chunks in results:
        usage = chunks[-1].usage
        assert usage.completion_tokens == 8 and usage.total_tokens == usage.prompt_tokens + 8
        assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == "length"
    _wait_idle(url, app)
    assert _metric(url, "rusteeze:generation_tokens_total") - generated_before == 64 * 8


def test_20_clients_that_disconnect_mid_stream_leave_it_healthy(server, aclient_factory):
    url, app = server

    async def leave_early(c, i):
        stream = await c.completions.create(model=MODEL, prompt=f"Bye {i}", max_tokens=100, stream=True, **GREEDY)
        n = 0
        async for _ in stream:
            n += 1
            if n == 2:
                break
        await stream.close()
        return n

    async def main():
        async with aclient_factory() as c:
            return await asyncio.gather(*(leave_early(c, i) for i in range(20)))

    assert asyncio.run(main()) == [2] * 20
    _wait_idle(url, app)
    assert _metric(url, "rusteeze:kv_cache_usage_perc") == 0
    bm = app.state.engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and all(r == 0 for r in bm.ref_counts)
    assert httpx.get(url + "/health").status_code == 200
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
        assert c.completions.create(model=MODEL, prompt="still here?", max_tokens=3).usage.completion_tokens <= 3
