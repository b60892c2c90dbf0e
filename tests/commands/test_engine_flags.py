"""Engine flags the engine rejects once the model is known: one line naming the flag, the value and what works."""

import re

import pytest
import torch
from typer.testing import CliRunner

from rusteeze.commands.main import app

PER_TOKEN = 512  # KV bytes per token of the tiny llama (512-token context)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


def chat(model, *flags: str):
    args = ["chat", str(model), "-p", "Hello", "--temperature", "0", "--max-tokens", "2", "--device", "cpu", *flags]
    return CliRunner().invoke(app, args)


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    line = result.stderr.splitlines()[-1]
    assert line.startswith("Error: ") and "Traceback" not in result.stderr
    assert not any(s.startswith("Error") for s in result.stderr.splitlines()[:-1])
    return line


@pytest.mark.parametrize(
    ("flags", "message", "works"),
    [
        (
            ["--kv-cache-memory", "1KiB"],  # was: unexpected AssertionError (this is a bug)
            "Error: --kv-cache-memory 1KiB holds no block of 16 tokens of this model (512 per token); "
            "use --kv-cache-memory 1MiB for 512 tokens, or more (1MiB holds the model's whole 512-token context)",
            ["--kv-cache-memory", "1MiB"],
        ),
        (
            ["--kv-cache-memory", "100KiB"],  # was: the context silently shrank to 192 tokens
            "Error: --kv-cache-memory 100KiB holds only 192 tokens of this model (512 per token); "
            "use --kv-cache-memory 1MiB for 512 tokens, or more (1MiB holds the model's whole 512-token context)",
            ["--kv-cache-memory", "1MiB"],
        ),
        (
            ["--max-model-len", "100000"],  # was: a complaint about KV memory
            "Error: --max-model-len 100000 exceeds the model's context of 512 tokens; use at most 512, "
            "or leave --max-model-len unset",
            ["--max-model-len", "512"],
        ),
        (
            ["--max-model-len", "512", "--kv-cache-memory", "100KiB"],
            "Error: --kv-cache-memory 100KiB holds 192 tokens of this model (512 per token), fewer than "
            "--max-model-len 512; use --kv-cache-memory 1MiB or more, or a --max-model-len of at most 192",
            ["--max-model-len", "192", "--kv-cache-memory", "100KiB"],
        ),
    ],
)
def test_kv_budget_and_context_errors_name_the_flag_and_what_works(tiny_llama_dir, flags, message, works):
    assert one_error_line(chat(tiny_llama_dir, *flags)) == message
    fixed = chat(tiny_llama_dir, *works)
    assert fixed.exit_code == 0, fixed.output


def test_a_budget_beyond_memory_is_one_line(tiny_llama_dir):
    """Was: a raw allocator RuntimeError (`DefaultCPUAllocator: can't allocate memory`)."""
    line = one_error_line(chat(tiny_llama_dir, "--kv-cache-memory", "500TiB"))
    assert re.fullmatch(
        r"Error: --kv-cache-memory 500TiB is more than the [\d.]+[KMGT]iB of (this machine's memory|memory this "
        r"container may use); use less: 1MiB holds the model's whole 512-token context",
        line,
    )


def test_a_context_shortened_by_the_budget_is_said(tmp_path):
    from tiny_models import build_model_dir

    model = build_model_dir(tmp_path / "tiny-4k", "llama", seed=1, max_position_embeddings=4096)
    result = chat(model, "--kv-cache-memory", "1MiB")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[1] == (
        "Context shortened to 2048 of the model's 4096 tokens to fit --kv-cache-memory 1MiB; "
        "2MiB holds the model's whole 4096-token context"
    )


@pytest.mark.slow
def test_smollm2_budget_errors_say_what_works(smollm2_gguf_path):
    """The issue's cases on the real model (8192-token context, 45 KiB of KV per token in float32)."""
    line = one_error_line(chat(smollm2_gguf_path, "--kv-cache-memory", "1MiB"))
    assert line == (
        "Error: --kv-cache-memory 1MiB holds only 16 tokens of this model (45KiB per token); use --kv-cache-memory "
        "23MiB for 512 tokens, or more (360MiB holds the model's whole 8192-token context)"
    )
    line = one_error_line(chat(smollm2_gguf_path, "--max-model-len", "100000"))
    assert line.startswith("Error: --max-model-len 100000 exceeds the model's context of 8192 tokens")
    assert chat(smollm2_gguf_path, "--kv-cache-memory", "23MiB").exit_code == 0
