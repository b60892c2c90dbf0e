"""The online benchmark against a tiny OpenAI-compatible streaming server on 127.0.0.1."""

import math
import socket

import pytest
from fake_openai_server import FakeOpenAIServer

from rusteeze.bench.online import api_base, arrival_gaps, random_text_prompts, run_online
from rusteeze.errors import ConfigError, RusteezeError


def test_requests_are_streamed_completions_with_usage_and_ignore_eos():
    with FakeOpenAIServer() as server:
        result = run_online(server.url + "/v1/", None, num_prompts=5, input_len=7, output_len=3, concurrency=2)
    assert result.model == "fake-model" and result.settings["url"] == server.url
    timed = server.bodies[-5:]
    assert all(b["max_tokens"] == 3 and b["stream"] and b["ignore_eos"] and b["model"] == "fake-model" for b in timed)
    assert all(b["stream_options"] == {"include_usage": True} and len(b["prompt"].split()) == 7 for b in timed)
    assert [b["max_tokens"] for b in server.bodies[1:6]] == [1] * 5  # the prefill run (after one warm-up)
    assert server.max_in_flight <= 2
    f = result.figures()
    assert (f["completed"], f["failed"], f["total_input_tokens"], f["total_output_tokens"]) == (5, 0, 35, 15)
    assert result.prefill_tokens == 35 and f["prefill_throughput"] > 0
    assert all(len(r.token_times) == 3 for r in result.records)
    assert f["p99_itl_ms"] >= f["median_itl_ms"] > 0 and f["peak_memory_bytes"] is None


def test_without_usage_output_tokens_are_counted_as_chunks():
    with FakeOpenAIServer(send_usage=False) as server:
        result = run_online(server.url, "named-model", num_prompts=2, input_len=4, output_len=6)
    assert [r.output_tokens for r in result.records] == [6, 6]
    assert {b["model"] for b in server.bodies} == {"named-model"}


def test_api_key_is_sent():
    with FakeOpenAIServer(api_key="sesame") as server:
        assert run_online(server.url, None, 1, 2, 2, api_key="sesame").figures()["completed"] == 1
        with pytest.raises(RusteezeError, match="/v1/models answered 401"):
            run_online(server.url, None, 1, 2, 2)


def test_a_server_that_refuses_everything_is_one_error():
    with FakeOpenAIServer(status=400) as server, pytest.raises(RusteezeError) as e:
        run_online(server.url, "m", num_prompts=3, input_len=2, output_len=2)
    assert (
        str(e.value) == f"all 3 requests to {server.url}/v1/completions failed; the first: HTTP 400: refused with 400"
    )


def test_nothing_listening():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RusteezeError, match=f"cannot reach http://127.0.0.1:{port}"):
        run_online(f"http://127.0.0.1:{port}", None, 1, 2, 2)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--url 'localhost:8000' must start with http"):
        api_base("localhost:8000")
    with pytest.raises(ConfigError, match="--concurrency 0 must be at least 1"):
        run_online("http://127.0.0.1:1", None, 1, 1, 1, concurrency=0)
    with pytest.raises(ConfigError, match="--request-rate 0"):
        run_online("http://127.0.0.1:1", None, 1, 1, 1, request_rate=0)


def test_poisson_arrivals():
    assert arrival_gaps(3, math.inf, 0) == [0.0, 0.0, 0.0]
    gaps = arrival_gaps(20001, 4.0, seed=5)
    assert gaps[0] == 0.0 and all(g > 0 for g in gaps[1:])
    assert sum(gaps) / 20000 == pytest.approx(0.25, rel=0.03)  # mean gap 1/rate
    assert gaps == arrival_gaps(20001, 4.0, seed=5)
    assert random_text_prompts(2, 5, 1) == random_text_prompts(2, 5, 1)
