"""`rusteeze pull | list | rm`, through Typer's CliRunner and through the installed console script."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub, point_at, tiny_hf_files, write_gguf
from typer.testing import CliRunner

from rusteeze.commands.main import app
from rusteeze.errors import ModelNotFoundError
from rusteeze.loader.hub import hf_hub_cache

RUSTEEZE = str(Path(sys.executable).with_name("rusteeze"))
HEADER = "NAME       FORMAT  ARCH   PARAMS  QUANT  SIZE"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        server.env = point_at(server, monkeypatch, tmp_path)
        yield server


def cli(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def console_script(*args: str) -> subprocess.CompletedProcess:
    """Run the installed `rusteeze` script with this process's (patched) environment."""
    return subprocess.run([RUSTEEZE, *args], capture_output=True, text=True, timeout=120)


def test_list_on_an_empty_store(hub, tmp_path):
    result = cli("list")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        f"No models in {tmp_path / 'store'}. Pull one: rusteeze pull HuggingFaceTB/SmolLM2-135M-Instruct\n",
        "",
    )


def test_pull_list_rm_round_trip(hub, tmp_path):
    gguf = write_gguf(tmp_path / "tiny.Q8_0.gguf")
    result = cli("pull", str(gguf))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Imported tiny.Q8_0 (llama, 48 parameters, Q8_0, 416 B) from {gguf}",
        "Chat with it: rusteeze chat tiny.Q8_0",
    ]
    commit = hub.add_repo("acme/tiny", tiny_hf_files())
    result = cli("pull", "acme/tiny")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Pulled acme/tiny (llama, 1.04K parameters, F32, 4.6 KB, commit {commit[:7]})",
        "Chat with it: rusteeze chat acme/tiny",
    ]
    assert result.stderr == ""
    result = cli("list")
    assert (result.exit_code, result.stdout.splitlines()) == (
        0,
        [
            HEADER,
            "acme/tiny  hf      llama  1.04K   F32    4.6 KB",
            "tiny.Q8_0  gguf    llama  48      Q8_0   416 B",
        ],
    )
    result = cli("rm", "acme/tiny", input="n\n")
    assert result.exit_code == 1
    assert result.stdout == "Delete acme/tiny (4.6 KB) from the Hugging Face cache? [y/N]: n\n"
    assert result.stderr == "Aborted.\n"
    result = cli("rm", "acme/tiny", input="y\n")
    assert (result.exit_code, result.stdout.splitlines()[-1]) == (0, "Deleted acme/tiny")
    assert not (hf_hub_cache() / "models--acme--tiny").exists()
    result = cli("rm", "--yes", "tiny.Q8_0")
    assert (result.exit_code, result.stdout) == (0, "Deleted tiny.Q8_0\n")
    assert cli("list").stdout.startswith("No models in ")


def test_errors_are_one_red_line_and_exit_1(hub, tmp_path):
    write_gguf(tmp_path / "a.gguf")
    cli("pull", str(tmp_path / "a.gguf"), "--name", "tiny")
    result = cli("rm", "tiyn", "--yes")
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: no model named 'tiyn' in the store {tmp_path / 'store'}; did you mean tiny?\n"
    result = cli("pull", str(tmp_path / "a.gguf"), "--name", "tiny")
    assert result.stderr == "Error: 'tiny' is already in the store; use --force to replace it or --name to rename\n"
    result = cli("pull", "not a model")
    assert result.stderr == (
        "Error: 'not a model' is not an existing file or directory, nor a Hugging Face id (organization/repository, "
        "like HuggingFaceTB/SmolLM2-135M-Instruct)\n"
    )
    assert result.exit_code == 1


def test_debug_shows_the_exception(hub):
    result = cli("rm", "nope", "--yes", "--debug")
    assert result.exit_code == 1
    assert isinstance(result.exception, ModelNotFoundError)


def test_usage_errors_exit_2(hub):
    result = cli("rm")
    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.stderr


# --- the installed console script ----------------------------------------------------------------


def test_ctrl_c_at_the_rm_question_deletes_nothing_and_exits_130(hub, tmp_path):
    import os

    import pexpect

    assert cli("pull", str(write_gguf(tmp_path / "tiny.Q8_0.gguf"))).exit_code == 0
    child = pexpect.spawn(RUSTEEZE, ["rm", "tiny.Q8_0"], env=dict(os.environ), encoding="utf-8", timeout=60)
    child.expect_exact("[y/N]: ")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    shown = re.sub(r"\x1b\[[0-9;]*m", "", child.before).replace("\r", "").replace("^C", "")
    assert shown.strip().splitlines()[-1] == "Interrupted."
    assert "Traceback" not in child.before and "Aborted" not in child.before
    assert [e for e in cli("list").stdout.splitlines() if e.startswith("tiny.Q8_0")]


def test_script_pull_list_rm(hub, tmp_path):
    files = tiny_hf_files()
    commit = hub.add_repo("acme/tiny", files)
    done = console_script("pull", "acme/tiny")
    assert (done.returncode, done.stdout.splitlines(), done.stderr) == (
        0,
        [
            f"Pulled acme/tiny (llama, 1.04K parameters, F32, 4.6 KB, commit {commit[:7]})",
            "Chat with it: rusteeze chat acme/tiny",
        ],
        "",
    )
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / commit
    assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (snapshot / "pytorch_model.bin").exists()
    done = console_script("list")
    assert (done.returncode, done.stdout.splitlines()) == (
        0,
        [HEADER, "acme/tiny  hf      llama  1.04K   F32    4.6 KB"],
    )
    done = console_script("rm", "acme/tiny", "--yes")
    assert (done.returncode, done.stdout) == (0, "Deleted acme/tiny\n")


def test_script_interrupted_pull_resumes(hub, tmp_path):
    files = tiny_hf_files()
    hub.add_repo("acme/tiny", files)
    hub.fail["model.safetensors"] = 503
    done = console_script("pull", "acme/tiny")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"Error: {hub.url} answered HTTP 503 while pulling 'acme/tiny'; run the same pull again to resume\n"
    )
    del hub.fail["model.safetensors"]
    hub.requests.clear()
    done = console_script("pull", "acme/tiny")
    assert done.returncode == 0, done.stderr
    assert [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path] == [
        f"/acme/tiny/resolve/{hub.repos['acme/tiny'].commit}/model.safetensors"
    ]
    snapshot = tmp_path / "hf" / "hub" / "models--acme--tiny" / "snapshots" / hub.repos["acme/tiny"].commit
    assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_script_missing_and_unauthorized_repos(hub):
    hub.add_repo("acme/private", tiny_hf_files(), token="hf_secret")
    done = console_script("pull", "acme/nope")
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        f"Error: 'acme/nope' not found on {hub.url}: check the repository id\n",
    )
    done = console_script("pull", "acme/private")
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        f"Error: {hub.url} refused access to 'acme/private' (HTTP 401): it is private or gated, or does not exist; "
        "set HF_TOKEN to a token that can read it\n",
    )


def test_ctrl_c_and_bugs_are_one_line_too(hub, monkeypatch):
    import rusteeze.commands.pull as pull_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pull_command, "pull_model", interrupted)
    result = cli("pull", "acme/tiny")
    assert (result.exit_code, result.stdout, result.stderr) == (130, "", "Interrupted.\n")

    def buggy(*args, **kwargs):
        raise TypeError("'NoneType' object is not iterable")

    monkeypatch.setattr(pull_command, "pull_model", buggy)
    result = cli("pull", "acme/tiny")
    assert (result.exit_code, result.stderr) == (
        1,
        "Error: unexpected TypeError: 'NoneType' object is not iterable (this is a bug; rerun with --debug for the "
        "traceback)\n",
    )
    monkeypatch.setenv("RUSTEEZE_DEBUG", "1")
    assert isinstance(cli("pull", "acme/tiny").exception, TypeError)
