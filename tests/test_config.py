"""EngineConfig: defaults, validation messages, sizes, TOML files."""

import pytest

from rusteeze.config import EngineConfig, load_config_file, parse_size
from rusteeze.errors import ConfigError


def test_defaults_are_valid_and_frozen():
    config = EngineConfig()
    assert config.kv_cache_memory is None  # 1 GiB on the CPU, profiled on CUDA (engine/kv_budget.py)
    assert (config.enforce_eager, config.gpu_memory_utilization) == (False, 0.9)
    assert config.enable_prefix_caching and config.kernel_backend == "auto"
    assert config.gguf_direct is True
    with pytest.raises(AttributeError):
        config.block_size = 32  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2GiB", 2 * 1024**3), ("512MB", 512_000_000), ("1.5 gib", int(1.5 * 1024**3)), (4096, 4096), ("100", 100)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["two gigs", "-1GiB", "0", 0, "5XB", True, 1.5])
def test_bad_sizes_name_the_key(bad):
    with pytest.raises(ConfigError, match="kv_cache_memory"):
        EngineConfig(kv_cache_memory=bad)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("dtype", "float64", "dtype = 'float64' is not valid; use one of: auto, float32, float16, bfloat16"),
        ("kernel_backend", "cuda", "kernel_backend = 'cuda' is not valid"),
        ("device", "tpu", "device = 'tpu' is not valid"),
        ("block_size", 12, "block_size = 12 must be a power of two"),
        ("block_size", 0, "block_size = 0 must be at least 1"),
        ("max_num_seqs", "8", "max_num_seqs = '8' must be an integer"),
        ("max_model_len", -5, "max_model_len = -5 must be at least 1"),
        ("enable_prefix_caching", "yes", "enable_prefix_caching = 'yes' must be true or false"),
        ("gguf_direct", "no", "gguf_direct = 'no' must be true or false"),
        ("gguf_direct", 0, "gguf_direct = 0 must be true or false"),
        ("model", "", "model = '' must be a non-empty string"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(field, value, fragment):
    with pytest.raises(ConfigError) as e:
        EngineConfig(**{field: value})
    assert fragment in str(e.value)


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown key 'max_num_seq' in config; did you mean 'max_num_seqs'"):
        EngineConfig.from_dict({"max_num_seq": 4})
    with pytest.raises(ConfigError, match="did you mean 'block_size'"):
        EngineConfig().replace(blocksize=32)


def test_replace_validates():
    assert EngineConfig().replace(block_size=32).block_size == 32
    with pytest.raises(ConfigError, match="block_size"):
        EngineConfig().replace(block_size=3)


def test_toml_file_with_sections(tmp_path):
    path = tmp_path / "rusteeze.toml"
    path.write_text(
        'model = "my-model"\nkv_cache_memory = "256MiB"\nmax_num_seqs = 8\n\n'
        '[server]\nport = 9000\n\n[chat]\nsystem = "Be brief."\n'
    )
    config, sections = load_config_file(path)
    assert (config.model, config.kv_cache_memory, config.max_num_seqs) == ("my-model", 256 * 1024**2, 8)
    assert sections == {"server": {"port": 9000}, "chat": {"system": "Be brief."}}


def test_toml_gguf_direct(tmp_path):
    path = tmp_path / "rusteeze.toml"
    path.write_text("gguf_direct = false\n")
    assert load_config_file(path)[0].gguf_direct is False
    path.write_text("gguf_direct = true\n")
    assert load_config_file(path)[0].gguf_direct is True


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("block_size = 3\n", "block_size = 3 must be a power of two"),
        ("blok_size = 16\n", "did you mean 'block_size'"),
        ("model = \n", "is not valid TOML"),
        ("[serve]\nport = 1\n", "unknown table [serve]"),
        ('gguf_direct = "off"\n', "gguf_direct = 'off' must be true or false"),
    ],
)
def test_bad_toml_names_the_file(tmp_path, content, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(path) in str(e.value) and fragment in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "nope.toml")
