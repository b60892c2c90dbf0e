"""`rusteeze quantize` through CliRunner: output, sizes, and one-line errors."""

from typer.testing import CliRunner

from rusteeze.commands.main import app


def test_quantize_command_writes_model_and_reports_sizes(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "int4", "-g", "32", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}\n" in result.stdout
    assert "source: safetensors float32 (" in result.stdout
    assert "→ int4 group 32 (quantized from float32)" in result.stdout
    assert "embeddings float16: " in result.stdout and "×) in" in result.stdout
    assert (out / "model.safetensors").exists()
    again = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "int8", "-o", str(out)])
    assert again.exit_code == 1
    assert "already exists; pass --force" in again.stderr


def test_quantize_command_rejects_unknown_method(tiny_llama_dir, tmp_path):
    result = CliRunner().invoke(app, ["quantize", str(tiny_llama_dir), "--method", "int2", "-o", str(tmp_path / "q")])
    assert result.exit_code == 1
    assert "unknown quantization method 'int2'" in result.stderr
    assert not (tmp_path / "q").exists()
