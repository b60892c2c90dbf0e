"""The shared engine options: declared once, on every engine command, precedence flag > file > defaults."""

import dataclasses
import inspect

import pytest
from typer.testing import CliRunner

from rusteeze.commands import options as options_module
from rusteeze.commands.main import app
from rusteeze.commands.options import NO_FLAGS, EngineOptions, engine_config, engine_options, flag_name
from rusteeze.config import EngineConfig
from rusteeze.errors import ConfigError, RusteezeError

SHARED = (
    "--config",
    "--dtype",
    "--device",
    "--max-model-len",
    "--kv-cache-memory",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--no-prefix-caching",
    "--kernel-backend",
    "--no-gguf-direct",
    "--enforce-eager",
    "--gpu-memory-utilization",
    "--speculative",
    "--draft-model",
    "--num-speculative-tokens",
    "--debug",
)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "rusteeze.toml"
    path.write_text(
        'model = "from-file"\ndtype = "float16"\nmax_num_seqs = 8\nenable_prefix_caching = false\n'
        "gguf_direct = false\n"
        '[chat]\nsystem = "Be brief."\n'
    )
    return path


def test_defaults_without_file_or_flags():
    config, sections = engine_config(None)
    assert config == EngineConfig()
    assert sections == {"server": {}, "chat": {}}


def test_the_file_overrides_defaults_and_given_flags_override_the_file(config_file):
    config, sections = engine_config(None, config_file)
    assert (config.model, config.dtype, config.max_num_seqs, config.enable_prefix_caching) == (
        "from-file",
        "float16",
        8,
        False,
    )
    assert config.gguf_direct is False
    assert config.max_num_batched_tokens == EngineConfig().max_num_batched_tokens
    assert sections["chat"] == {"system": "Be brief."}
    config, _ = engine_config("my-model", config_file, dtype="bfloat16", kv_cache_memory="512MiB", max_model_len=64)
    assert (config.model, config.dtype, config.max_num_seqs) == ("my-model", "bfloat16", 8)
    assert (config.kv_cache_memory, config.max_model_len) == (512 * 2**20, 64)


def test_no_prefix_caching_only_turns_caching_off():
    assert engine_config(None, no_prefix_caching=True)[0].enable_prefix_caching is False
    assert engine_config(None, no_prefix_caching=False)[0].enable_prefix_caching is True


def test_no_gguf_direct_only_turns_gguf_direct_off():
    config = engine_config(None, no_gguf_direct=True)[0]
    assert config.gguf_direct is False
    assert config == EngineConfig(gguf_direct=False)
    assert engine_config(None, no_gguf_direct=False)[0].gguf_direct is True


def test_enforce_eager_and_gpu_memory_utilization_flags():
    assert engine_config(None)[0] == EngineConfig()
    config = engine_config(None, enforce_eager=True, gpu_memory_utilization=0.5)[0]
    assert (config.enforce_eager, config.gpu_memory_utilization) == (True, 0.5)


def test_not_typing_no_gguf_direct_keeps_the_files_value(tmp_path):
    path = tmp_path / "rusteeze.toml"
    path.write_text("gguf_direct = false\n")
    assert engine_config(None, path)[0].gguf_direct is False


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"dtype": "float8"}, "--dtype 'float8' is not valid; use one of: auto, float32, float16, bfloat16"),
        ({"device": "tpu"}, "--device 'tpu' is not valid; use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"max_model_len": 0}, "--max-model-len 0 must be at least 1"),
        ({"kv_cache_memory": "-1GiB"}, "--kv-cache-memory '-1GiB' is not a size; use bytes or a string like"),
        ({"max_num_batched_tokens": -5}, "--max-num-batched-tokens -5 must be at least 1"),
        ({"kernel_backend": "cuda"}, "--kernel-backend 'cuda' is not valid; use one of: auto, triton, numba, torch"),
        ({"gpu_memory_utilization": 1.5}, "--gpu-memory-utilization 1.5 must be a number in (0, 1], e.g. 0.9"),
    ],
)
def test_bad_flag_values_name_the_flag(flags, message):
    with pytest.raises(ConfigError) as e:
        engine_config(None, **flags)
    assert str(e.value).startswith(message)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("max_num_seqs = 'many'\n")
    with pytest.raises(ConfigError, match=f"{bad}: max_num_seqs = 'many' must be an integer"):
        engine_config(None, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        engine_config(None, tmp_path / "missing.toml")


def test_flag_names():
    assert flag_name("max_num_seqs") == "--max-num-seqs"
    assert flag_name("enable_prefix_caching") == "--no-prefix-caching"
    assert flag_name("gguf_direct") == "--no-gguf-direct"


@pytest.mark.parametrize("command", ["chat", "bench", "serve"])
def test_every_engine_command_takes_the_shared_options(command):
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in SHARED:
        assert flag in result.stdout, f"{command} lacks {flag}"


def test_invalid_config_file_is_one_line_and_wrong_types_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is not toml")
    result = CliRunner().invoke(app, ["chat", "--config", str(bad), "-p", "Hi"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: config file {bad} is not valid TOML") and result.stderr.count("\n") == 1
    usage = CliRunner().invoke(app, ["bench", "--max-model-len", "long"])
    assert usage.exit_code == 2 and "Invalid value for '--max-model-len'" in usage.stderr


@pytest.mark.parametrize("command", ["chat", "bench", "serve"])
def test_no_gguf_direct_flag_reaches_the_engine_config(command, monkeypatch):
    """The real engine_config runs; the command stops right after it, before any model loads."""
    seen: list[EngineConfig] = []

    def capture(*args, **kwargs):
        seen.append(engine_config(*args, **kwargs)[0])
        raise RusteezeError("stopped after engine_config")

    monkeypatch.setattr(options_module, "engine_config", capture)
    extra = ["-p", "Hi"] if command == "chat" else []
    for flags, expected in (([], True), (["--no-gguf-direct"], False)):
        result = CliRunner().invoke(app, [command, "some-model", *extra, *flags])
        assert result.exit_code == 1 and "stopped after engine_config" in result.stderr
        assert seen[-1].gguf_direct is expected and seen[-1].model == "some-model"
    assert len(seen) == 2


def test_the_shared_flags_are_the_fields_of_one_options_object():
    flags = [
        flag_name(f.name) if f.name.startswith("no_") else "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(EngineOptions)
    ]
    assert flags == list(SHARED[:-1])  # --debug belongs to every command, not to the engine


def test_engine_options_hands_the_command_one_object_built_from_the_typed_flags(tmp_path):
    got = []

    @engine_options
    def command(model: str | None = None, options: EngineOptions = NO_FLAGS, debug: bool = False) -> None:
        got.append((model, options, debug))

    names = list(inspect.signature(command).parameters)
    assert names == ["model", *(f.name for f in dataclasses.fields(EngineOptions)), "debug"]
    command(model="m", dtype="float16", no_prefix_caching=True, debug=True)
    assert got == [("m", EngineOptions(dtype="float16", no_prefix_caching=True), True)]
    config, _ = got[0][1].engine_config("m", seed=3)
    assert (config.dtype, config.enable_prefix_caching, config.seed) == ("float16", False, 3)
    with pytest.raises(TypeError, match="needs an `options: EngineOptions` parameter"):
        engine_options(lambda model=None: None)
