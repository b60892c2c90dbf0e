"""`rusteeze quantize` through its entry point: progress in layer order, refusals first, modes by the umask."""

import contextlib
import os
import stat

import pytest
from tiny_models import build_model_dir
from typer.testing import CliRunner

from rusteeze.commands.main import app


@contextlib.contextmanager
def umask(mask: int):
    """Run the block under ``mask`` (the process's umask), then restore it."""
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def quantize(*args: str):
    return CliRunner().invoke(app, ["quantize", *args])


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def twelve_layers(tmp_path_factory):
    """A tiny Llama with 12 layers: the file stores them in text order (0, 1, 10, 11, 2, …)."""
    return build_model_dir(tmp_path_factory.mktemp("twelve"), "llama", num_hidden_layers=12)


def test_progress_lists_layers_in_numeric_order(twelve_layers, tmp_path):
    result = quantize(str(twelve_layers), "--method", "int8", "-o", str(tmp_path / "q"))
    assert result.exit_code == 0, result.output
    layers = [line.strip() for line in result.stderr.splitlines() if line.startswith("  layer ")]
    assert layers == [f"layer {i}" for i in range(12)]


def test_an_existing_output_is_refused_before_the_header(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    result = quantize(str(tiny_llama_dir), "--method", "int8", "-o", str(out))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {out} already exists; pass --force to replace it\n"  # no "Quantizing …" first
    assert result.stdout == ""


@pytest.mark.parametrize(("mask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_written_files_follow_the_umask(tiny_llama_dir, tmp_path, mask, dir_mode, file_mode):
    out = tmp_path / "q"
    with umask(mask):
        result = quantize(str(tiny_llama_dir), "--method", "int8", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert mode(out) == dir_mode
    files = list(out.iterdir())
    assert {f.name for f in files} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert {f.name: mode(f) for f in files} == {f.name: file_mode for f in files}
