"""`rusteeze bench`, offline on a tiny model and online against a tiny streaming server."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_openai_server import FakeOpenAIServer
from typer.testing import CliRunner

from rusteeze.commands.main import app

RUSTEEZE = str(Path(sys.executable).with_name("rusteeze"))
SMALL = ["--num-prompts", "4", "--input-len", "12", "--output-len", "3"]
FAST = ["--kv-cache-memory", "8MiB", "--device", "cpu"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def cli(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def table_rows(stdout: str) -> dict[str, list[str]]:
    """{metric: [cells]} from the rich tables' body rows."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) >= 2:
            rows[cells[0]] = cells[1:]
    return rows


def test_offline_prints_the_tables_and_writes_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = cli(str(tiny_llama_dir), *SMALL, "--max-num-seqs", "2", "--json", str(out), *FAST)
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert rows["Requests completed / failed"] == ["4 / 0"]
    assert rows["Input / output tokens"] == ["48 / 12"]
    assert re.fullmatch(r"[\d,.]+ tok/s", rows["Prefill throughput"][0])
    assert re.fullmatch(r"[\d.]+ [KMG]?B", rows["Peak memory (process RSS)"][0])
    assert set(rows) >= {"TTFT", "TPOT", "ITL", "E2E latency"} and len(rows["ITL"]) == 3
    assert "rusteeze bench · offline · llama" in result.stdout
    data = json.loads(out.read_text())
    assert (data["mode"], data["model"], data["completed"], data["total_output_tokens"]) == ("offline", "llama", 4, 12)
    assert data["settings"] == {"num_prompts": 4, "input_len": 12, "output_len": 3, "seed": 0}
    assert data["p99_itl_ms"] >= data["median_itl_ms"] > 0 and data["peak_memory_bytes"] > 0
    assert f"{data['output_throughput']:,.1f} tok/s" == rows["Output token throughput"][0]  # same figures
    stderr = result.stderr.splitlines()
    assert stderr[0].startswith("Loaded llama from local directory") and stderr[-1] == f"Wrote {out}"


def test_online_drives_a_server(tmp_path):
    out = tmp_path / "online.json"
    with FakeOpenAIServer() as server:
        result = cli("--url", server.url, *SMALL, "--concurrency", "2", "--request-rate", "1000", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "rusteeze bench · online · fake-model" in result.stdout
    assert table_rows(result.stdout)["Requests completed / failed"] == ["4 / 0"]
    assert table_rows(result.stdout)["Peak memory (server side)"] == ["n/a"]
    data = json.loads(out.read_text())
    assert data["settings"]["concurrency"] == 2 and data["settings"]["request_rate"] == 1000
    assert (data["total_input_tokens"], data["total_output_tokens"]) == (48, 12)
    assert result.stderr == f"Wrote {out}\n"  # no model is loaded for an online run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-len", "0"], "Error: --input-len 0 must be at least 1\n"),
        (["--max-num-seqs", "0"], "Error: --max-num-seqs 0 must be at least 1\n"),
        (["--json", "no/such/dir/b.json"], "Error: --json no/such/dir/b.json: the folder no/such/dir does not exist\n"),
        (["--url", "localhost:8000"], "Error: --url 'localhost:8000' must start with http:// or https://\n"),
        (["--url", "http://127.0.0.1:9", "--concurrency", "0"], "Error: --concurrency 0 must be at least 1\n"),
    ],
)
def test_user_mistakes_are_one_red_line(args, message):
    result = cli(*args)
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", message)


def test_a_workload_beyond_the_context_is_refused(tiny_llama_dir):
    result = cli(str(tiny_llama_dir), "--input-len", "500", "--output-len", "100", *FAST)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: --input-len 500 + --output-len 100 exceeds the context of 512 tokens (max_model_len)"
    )


def test_console_script_offline_in_a_pipe(tiny_llama_dir):
    done = subprocess.run(
        [RUSTEEZE, "bench", str(tiny_llama_dir), *SMALL, *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout + done.stderr  # no colours, no progress bar in a pipe
    assert table_rows(done.stdout)["Requests completed / failed"] == ["4 / 0"]
    assert done.stderr.startswith("Loaded llama from local directory")


def test_long_names_and_paths_are_never_wrapped_in_a_pipe(tiny_llama_dir, tmp_path):
    """Rich broke lines at 80 columns when stdout/stderr were not terminals (a pipe, a log)."""
    name = "a-tiny-llama-with-a-model-name-much-longer-than-eighty-columns-of-a-pipe-or-a-log-file"
    model = shutil.copytree(tiny_llama_dir, tmp_path / name)
    out = tmp_path / ("a-folder-with-a-long-name-" * 4) / "figures.json"
    out.parent.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    done = subprocess.run(
        [RUSTEEZE, "bench", str(model), *SMALL, *FAST, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert f"rusteeze bench · offline · {name}" in done.stdout.splitlines()
    loaded, wrote = done.stderr.splitlines()
    assert loaded.startswith(f"Loaded {name} from local directory {model} in ") and loaded.endswith(", float32)")
    assert wrote == f"Wrote {out}"


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_json_file_is_as_readable_as_the_umask_says(tiny_llama_dir, tmp_path, mask, expected):
    out = tmp_path / "bench.json"
    before = os.umask(mask)
    try:
        result = cli(
            str(tiny_llama_dir),
            "--num-prompts",
            "1",
            "--input-len",
            "4",
            "--output-len",
            "1",
            "--json",
            str(out),
            *FAST,
        )
    finally:
        os.umask(before)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == expected
