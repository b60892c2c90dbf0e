"""Junk in every field of every endpoint, over real HTTP: never a 5xx, and the server stays healthy.

Bodies are sent as raw text so they can hold what Python's json would write but JSON does not
allow (NaN, Infinity), numbers no float or 64-bit integer holds, and nesting of any depth.
"""

import threading

import httpx
import pytest
from server_helpers import live_server

# JSON texts, not Python values: each is spliced into a body as is.
JUNK = [
    "null", "true", "false", "0", "-1", "1.5", "-1e308", "1e308", "1e400", "-1e400", "2e-320",
    "NaN", "-NaN", "Infinity", "-Infinity", "9" * 30, "-" + "9" * 5000, "18446744073709551615",
    '""', '"x"', '"\\u0000"', '"' + "x" * 5000 + '"', "[]", "{}", "[null]", "[[-5]]", "[[0.5]]", '["a", 1]',
    '{"a": [1, {"b": null}]}', '{"0": 1}', "[" * 40 + "]" * 40, "[" * 300 + "]" * 300,
    '{"a":' * 100 + "1" + "}" * 100, "[1e400]", "[NaN]", '{"1": NaN}',
]  # fmt: skip

SAMPLING = [
    *["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stream_options", "stop"],
    *["stop_token_ids", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "min_tokens"],
    *["ignore_eos", "include_stop_str_in_output", "skip_special_tokens", "logit_bias", "best_of", "user"],
]
CHAT = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
ENDPOINTS = {
    "/v1/completions": ('{"prompt": "a", "max_tokens": 1', [*SAMPLING, "prompt", "suffix", "echo", "logprobs"]),
    "/v1/chat/completions": (
        CHAT,
        [
            *SAMPLING,
            *["messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "functions", "tool_choice"],
            *["response_format", "modalities", "audio", "chat_template_kwargs", "add_generation_prompt"],
            "parallel_tool_calls",
        ],
    ),
    "/tokenize": ('{"prompt": "a"', ["model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"]),
    "/detokenize": ('{"tokens": [1, 2]', ["model", "tokens"]),
}
# Junk one level down: (endpoint, body with {} where the junk goes).
NESTED = [
    ("/v1/chat/completions", '{"messages": [{}], "max_tokens": 1}'),
    ("/v1/chat/completions", '{"messages": [{"role": {}, "content": "hi"}], "max_tokens": 1}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": {}}], "max_tokens": 1}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi", "name": {}}], "max_tokens": 1}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": {}}]}]}'),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{}]}], "max_tokens": 1}'),
    ("/v1/chat/completions", CHAT + ', "chat_template_kwargs": {"enable_thinking": {}}}'),
    ("/v1/chat/completions", CHAT + ', "chat_template_kwargs": {"chat_template": {}}}'),
    ("/v1/chat/completions", CHAT + ', "chat_template_kwargs": {"template": {}, "self": {}, "documents": {}}}'),
    ("/v1/chat/completions", CHAT + ', "response_format": {"type": {}}}'),
    ("/v1/chat/completions", CHAT + ', "tools": [{}]}'),
    ("/v1/chat/completions", CHAT + ', "tools": [{"type": "function", "function": {}}]}'),
    ("/v1/chat/completions", CHAT + ', "tools": [{"type": "function", "function": {"name": {}}}]}'),
    ("/v1/chat/completions", CHAT + ', "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}'),
    ("/v1/chat/completions", CHAT + ', "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {}}'),
    (
        "/v1/chat/completions",
        CHAT + ', "tools": [{"type": "function", "function": {"name": "f"}}], '
        '"tool_choice": {"type": "function", "function": {"name": {}}}}',
    ),
    (
        "/v1/chat/completions",
        CHAT + ', "tools": [{"type": "function", "function": {"name": "f", '
        '"parameters": {"type": "object", "properties": {"a": {}}}}}], "tool_choice": "required"}',
    ),
    ("/v1/chat/completions", '{"messages": [{"role": "assistant", "tool_calls": {}}], "max_tokens": 1}'),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}], "max_tokens": 1}',
    ),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", '
        '"arguments": {}}}]}, {"role": "tool", "tool_call_id": {}, "content": "r"}], "max_tokens": 1}',
    ),
    ("/v1/completions", '{"prompt": "a", "max_tokens": 1, "stream": true, "stream_options": {"include_usage": {}}}'),
    ("/v1/completions", '{"prompt": "a", "max_tokens": 1, "logit_bias": {"5": {}}}'),
    ("/v1/completions", '{"prompt": {}, "max_tokens": 1}'),
    ("/v1/completions", '{"prompt": [{}], "max_tokens": 1}'),
    ("/v1/completions", '{"prompt": ["a", {}], "max_tokens": 1}'),
    ("/v1/completions", '{"prompt": "a", "max_tokens": 1, "stop": [{}]}'),
    ("/detokenize", '{"tokens": [1, {}]}'),
    ("/tokenize", '{"messages": [{"role": "user", "content": {}}]}'),
]


def _check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], what


def _healthy(client: httpx.Client, app) -> None:
    assert client.get("/health").status_code == 200
    r = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    for _ in range(2000):  # every request finished or aborted: nothing left behind
        if not app.state.engine.has_unfinished_requests() and not app.state.inflight:
            break
        threading.Event().wait(0.005)
    assert app.state.num_waiting == 0 and app.state.num_preparing == 0
    assert app.state.engine.block_manager.usage == 0


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_junk_in_every_field_is_never_a_5xx(make_app, path):
    app = make_app()
    base, fields = ENDPOINTS[path]
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        statuses = set()
        for field in fields:
            for junk in JUNK:
                body = f'{base}, "{field}": {junk}}}'
                r = client.post(path, content=body, headers={"content-type": "application/json"})
                _check(r, f"{path} {field}={junk[:60]}")
                statuses.add(r.status_code)
        assert 400 in statuses and 200 in statuses
        _healthy(client, app)


def test_junk_one_level_down_is_never_a_5xx(make_app):
    app = make_app()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for path, template in NESTED:
            for junk in JUNK:
                body = template.replace("{}", junk)
                r = client.post(path, content=body, headers={"content-type": "application/json"})
                _check(r, f"{path} {body[:120]}")
        _healthy(client, app)


def test_deep_nesting_nan_and_huge_numbers_are_400_naming_the_problem(make_app):
    app = make_app()
    deep = "[" * 100_000 + "]" * 100_000  # 200 KB: used to be a RecursionError, HTTP 500
    cases = [
        ('{"prompt": ' + deep + "}", "deeper than 64 levels"),
        ('{"prompt": "a", "metadata": ' + '{"a":' * 65 + "1" + "}" * 65 + "}", "deeper than 64 levels"),
        (deep, "deeper than 64 levels"),
        ('{"prompt": "a", "temperature": NaN}', "NaN is not a JSON number"),
        ('{"prompt": "a", "temperature": -Infinity}', "-Infinity is not a JSON number"),
        ('{"prompt": "a", "temperature": 1e999}', "1e999 is too large"),
        ('{"prompt": "a", "seed": ' + "7" * 5000 + "}", "does not fit in 64 bits"),
    ]
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for body, message in cases:
            for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"):
                r = client.post(path, content=body, headers={"content-type": "application/json"})
                assert r.status_code == 400, (path, body[:80], r.text[:300])
                assert message in r.json()["error"]["message"]
        ok = '{"prompt": ' + "[" * 63 + "1" + "]" * 63 + "}"  # 64 levels with the body: allowed, then a bad prompt
        r = client.post("/v1/completions", content=ok, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        _healthy(client, app)
