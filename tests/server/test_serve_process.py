"""`rusteeze serve` as a process: port in use is one line and exit 1; SIGTERM during streams exits 0."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

ENGINE_FLAGS = ["--device", "cpu", "--kernel-backend", "torch", "--max-model-len", "128", "--kv-cache-memory", "8MiB"]


def rusteeze(*args: str) -> list[str]:
    """The console script, as a user runs it."""
    return [str(Path(sys.executable).parent / "rusteeze"), *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "RUSTEEZE_DEBUG": "", "NO_COLOR": "1"}


def serve_cli(*args: str):
    """`rusteeze serve ARGS` in process (CliRunner)."""
    from typer.testing import CliRunner

    from rusteeze.commands.main import app

    return CliRunner().invoke(app, ["serve", *args])


def test_a_busy_port_is_one_line_and_exit_1(tiny_llama_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = serve_cli(str(tiny_llama_dir), "--port", str(port), *ENGINE_FLAGS)
    assert r.exit_code == 1
    assert r.stderr == f"Error: port {port} on 127.0.0.1 is already in use; pick another with --port\n"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "Error: --port 70000 must be an integer in [0, 65535]\n"),
        (["--max-waiting-requests", "0"], "Error: --max-waiting-requests 0 must be an integer >= 1\n"),
        (["--shutdown-timeout", "-1"], "Error: --shutdown-timeout -1.0 must be a number of seconds >= 0\n"),
    ],
)
def test_bad_server_flags_are_one_line_naming_the_flag(tiny_llama_dir, flags, message):
    r = serve_cli(str(tiny_llama_dir), *flags, *ENGINE_FLAGS)
    assert r.exit_code == 1 and r.stderr == message


def test_an_unknown_model_is_one_line(tmp_path):
    r = serve_cli(str(tmp_path / "missing.gguf"), "--port", "0", *ENGINE_FLAGS)
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1


def _stream(url: str, max_tokens: int, first_chunk: threading.Event, results: list) -> None:
    body = {"prompt": "Hello", "max_tokens": max_tokens, "stream": True, "temperature": 0, "ignore_eos": True}
    events = []
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                first_chunk.set()
    results.append(events)


def test_sigterm_during_streams_exits_0_and_ends_every_stream(tiny_llama_dir):
    proc = subprocess.Popen(
        # A 512-token context so the 500-token streams cannot finish within the 0.5 s grace period.
        rusteeze("serve", str(tiny_llama_dir), "--port", "0", "--shutdown-timeout", "0.5", *ENGINE_FLAGS,
                 "--max-model-len", "512", "--trust-request-chat-template"),
        stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    log: list[str] = []
    try:
        url = None
        for line in proc.stderr:
            log.append(line)
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
            if "ready" in line:
                break
        assert url is not None, "".join(log)
        reader = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)
        reader.start()
        own = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "chat_template_kwargs": {
            "chat_template": "{{ messages[0].content }}"}}  # fmt: skip
        assert httpx.post(url + "/v1/chat/completions", json=own, timeout=120).status_code == 200  # the flag took
        results: list = []
        started = [threading.Event() for _ in range(4)]
        threads = [
            threading.Thread(target=_stream, args=(url, tokens, ev, results))
            for tokens, ev in zip((3, 500, 500, 500), started, strict=True)
        ]
        for t in threads:
            t.start()
        for ev in started:
            assert ev.wait(120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        for t in threads:
            t.join(120)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(results) == 4
    for events in results:
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        if "error" in last:
            assert last["error"]["code"] == "shutting_down"
        else:
            assert last["choices"][0]["finish_reason"] == "length"
    assert any("error" in json.loads(ev[-2]) for ev in results)  # the long ones outlived the grace period
    assert "Shutting down" in "".join(log)
