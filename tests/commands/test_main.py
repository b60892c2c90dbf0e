"""The `rusteeze` app itself: a light start-up (no torch for --version / --help) and Ctrl-C at any moment."""

import importlib
import inspect
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_models import build_model_dir
from typer.testing import CliRunner

from rusteeze.commands.main import COMMANDS, app

RUSTEEZE = str(Path(sys.executable).with_name("rusteeze"))
HEAVY = ("torch", "numba", "numpy", "triton", "huggingface_hub", "httpx", "jinja2", "tokenizers", "prompt_toolkit")


def imported_modules(*args: str) -> set[str]:
    """The modules the console script imports for `rusteeze ARGS` (from `python -X importtime`)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", RUSTEEZE, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["list", "--help"], ["pull", "--help"]])
def test_version_and_help_import_no_heavy_module(args):
    modules = imported_modules(*args)
    assert "typer" in modules  # the measurement works
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == [], f"`rusteeze {' '.join(args)}` imports {heavy[:5]}"


def test_help_lists_every_command_with_its_docstring_summary():
    result = CliRunner().invoke(app, ["--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name, (where, summary) in COMMANDS.items():
        module, function = where.split(":")
        doc = inspect.getdoc(getattr(importlib.import_module(f"rusteeze.commands.{module}"), function))
        assert doc.split("\n\n")[0].replace("\n", " ") == summary, f"COMMANDS[{name!r}] is out of date"
        assert f"{name:<10}{summary}" in result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_loads_on_demand(name):
    result = CliRunner().invoke(app, [name, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"Usage: rusteeze {name}" in result.stdout


def test_unknown_command_and_no_command_are_usage_errors():
    assert CliRunner().invoke(app, ["chta"]).exit_code == 2
    bare = CliRunner().invoke(app, [])
    assert bare.exit_code == 2 and "chat" in bare.output


# --- Ctrl-C -------------------------------------------------------------------------------------


def run_with_ctrl_c_on_import(module: str, *args: str) -> subprocess.CompletedProcess:
    """The console script's code, with Ctrl-C pressed the moment `module` starts importing."""
    code = textwrap.dedent(
        f"""
        import sys

        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == {module!r}:
                    raise KeyboardInterrupt

        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["rusteeze", *{list(args)!r}]
        from rusteeze.commands.main import app
        sys.exit(app())
        """
    )
    env = {**os.environ, "RUSTEEZE_DEBUG": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("typer", ["--version"]),  # the CLI's own imports
        ("rusteeze.commands.quantize", ["quantize", "m", "-o", "out"]),  # a command module
        ("torch", ["chat", "-p", "Hi"]),  # the engine, inside the command
    ],
)
def test_ctrl_c_while_importing_is_one_line_and_exit_130(module, args):
    done = run_with_ctrl_c_on_import(module, *args)
    assert (done.returncode, done.stderr, done.stdout) == (130, "Interrupted.\n", "")


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a 4096-token context: a reply long enough to be interrupted."""
    return build_model_dir(tmp_path_factory.mktemp("long") / "tiny-long", "llama", seed=3, max_position_embeddings=4096)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_a_one_shot_reply_is_one_line_and_exit_130(long_model, tmp_path, presses):
    env = {**os.environ, "RUSTEEZE_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "RUSTEEZE_DEBUG": ""}
    args = ["chat", str(long_model), "-p", "Tell a story", "--max-tokens", "4000", "--temperature", "0"]
    child = subprocess.Popen(
        [RUSTEEZE, *args, "--kv-cache-memory", "8MiB", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert child.stdout.read(1)  # the reply streams
        for _ in range(presses):  # the second press lands while the first is being handled
            child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    lines = err.decode().splitlines()
    assert child.returncode == 130, lines
    assert lines[0].startswith("Loaded tiny-long") and lines[1:] == ["Interrupted."]
