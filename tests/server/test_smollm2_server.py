"""The real SmolLM2-135M-Instruct GGUF behind a live server, through the openai client."""

import asyncio

import pytest
from server_helpers import live_model_server

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

NAME = "smollm2"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def url(smollm2_gguf_path):
    kw = {"kernel_backend": "torch", "max_model_len": 512}
    with live_model_server(smollm2_gguf_path, NAME, one_torch_thread=True, **kw) as (base, _app):
        yield base


@pytest.fixture
def client(url):
    with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
        yield c


def test_chat_knows_the_capital_of_france(client):
    assert [m.id for m in client.models.list()] == [NAME]
    r = client.chat.completions.create(model=NAME, messages=FRANCE, max_tokens=12, temperature=0)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model=NAME, messages=FRANCE, max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens


def test_completion_stop_logprobs_and_seeded_n2(client):
    prompt = "The capital of France is"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0, stop=["."])
    assert r.choices[0].text.strip() == "Paris" and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=NAME, prompt=prompt, max_tokens=1, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp.tokens == [" Paris"] and max(lp.top_logprobs[0].values()) == lp.token_logprobs[0]

    def sample():
        return client.chat.completions.create(model=NAME, messages=FRANCE, max_tokens=10, n=2, seed=1, temperature=1.0)

    a, b = sample(), sample()
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_eight_concurrent_chats(url):
    async def one(c, i):
        r = await c.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": f"Count to {i + 2}."}], max_tokens=6, temperature=0
        )
        return r.usage.completion_tokens

    async def main():
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
            return await asyncio.gather(*(one(c, i) for i in range(8)))

    assert all(1 <= n <= 6 for n in asyncio.run(main()))
