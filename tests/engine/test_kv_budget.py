"""The KV budget against the model's context and the device's memory: one ConfigError naming what works."""

import re

import pytest
import torch

from rusteeze.config import EngineConfig, parse_size
from rusteeze.engine import engine as engine_module
from rusteeze.engine import kv_budget
from rusteeze.engine.engine import Engine
from rusteeze.engine.kv_budget import check_usable, plan_kv_cache, size, size_up
from rusteeze.errors import ConfigError

CPU = torch.device("cpu")
PER_TOKEN = 512  # the tiny llama: 2 layers × (keys + values) × 2 KV heads × 16 dims × 4 bytes


@pytest.fixture
def model(loaded_tiny):
    cfg = loaded_tiny("llama").config
    assert cfg.max_position_embeddings == 512
    return cfg


def plan(model, **kw):
    return plan_kv_cache(model, EngineConfig(block_size=16, **kw), torch.float32, CPU)


def suggested(message: str, key: str) -> str:
    """The value a message suggests for `key` (`use kv_cache_memory = 23MiB`)."""
    return re.search(rf"use {key} = (\S+)", message).group(1)


def test_unset_max_model_len_is_the_models_context_or_what_the_budget_holds(model):
    full = plan(model, kv_cache_memory="8MiB")
    assert (full.max_model_len, full.shortened, full.bytes_per_token) == (512, False, PER_TOKEN)
    assert full.num_blocks == 8 * 2**20 // (16 * PER_TOKEN)
    short = plan(model, kv_cache_memory=100 * PER_TOKEN)  # 100 tokens: 6 whole blocks
    assert (short.max_model_len, short.shortened, short.num_blocks) == (96, True, 6)


def test_max_model_len_beyond_the_models_context_names_the_limit(model):
    with pytest.raises(ConfigError) as e:
        plan(model, max_model_len=100_000)
    assert str(e.value) == (
        "max_model_len = 100000 exceeds the model's context of 512 tokens; "
        "use at most 512, or leave max_model_len unset"
    )
    assert plan(model, max_model_len=512).max_model_len == 512


def test_a_budget_below_max_model_len_says_what_is_enough(model):
    with pytest.raises(ConfigError) as e:
        plan(model, max_model_len=512, kv_cache_memory="100KiB")
    message = str(e.value)
    assert message.startswith(
        "kv_cache_memory = 100KiB holds 192 tokens of this model (512 per token), fewer than max_model_len = 512; "
    )
    assert message.endswith("or a max_model_len of at most 192")
    enough = suggested(message, "kv_cache_memory")
    assert enough == "1MiB" and plan(model, max_model_len=512, kv_cache_memory=enough).max_model_len == 512
    assert plan(model, max_model_len=192, kv_cache_memory="100KiB").max_model_len == 192


def test_a_budget_without_one_block_is_refused_with_what_works(model):
    """`--kv-cache-memory 1KiB` used to fail on an assert in the block manager."""
    with pytest.raises(ConfigError) as e:
        plan(model, kv_cache_memory="1KiB")
    message = str(e.value)
    assert message.startswith("kv_cache_memory = 1KiB holds no block of 16 tokens of this model (512 per token); ")
    assert "1MiB holds the model's whole 512-token context" in message
    assert plan(model, kv_cache_memory=suggested(message, "kv_cache_memory")).max_model_len == 512


def test_a_budget_beyond_the_devices_memory_is_refused(model, monkeypatch):
    """`--kv-cache-memory 500TiB` used to be a raw allocator error."""
    with pytest.raises(ConfigError) as e:
        plan(model, kv_cache_memory="500TiB")
    assert re.fullmatch(
        r"kv_cache_memory = 500TiB is more than the [\d.]+[KMGT]iB of (this machine's memory|memory this container "
        r"may use); use less: 1MiB holds the model's whole 512-token context",
        str(e.value),
    )
    monkeypatch.setattr(kv_budget, "memory_limit", lambda device: (4 * 2**20, "free memory on cuda:0"))
    with pytest.raises(ConfigError, match=r"^kv_cache_memory = 8MiB is more than the 4MiB of free memory on cuda:0"):
        plan(model, kv_cache_memory="8MiB")


def test_an_allocation_failure_is_a_config_error(loaded_tiny, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine_module, "allocate_kv_caches", out_of_memory)
    with pytest.raises(ConfigError) as e:
        Engine(EngineConfig(kv_cache_memory="8MiB", device="cpu"), loaded=loaded_tiny("llama"))
    assert str(e.value).startswith(
        "kv_cache_memory = 8MiB cannot be allocated on cpu (CUDA out of memory. Tried to allocate 2.00 GiB)"
    )
    assert str(e.value).endswith("; use a smaller kv_cache_memory")


def test_check_usable_refuses_a_context_the_budget_cut_below_512_tokens(model):
    config = EngineConfig(block_size=16, kv_cache_memory=100 * PER_TOKEN)
    with pytest.raises(ConfigError) as e:
        check_usable(plan_kv_cache(model, config, torch.float32, CPU), config)
    message = str(e.value)
    assert message.startswith("kv_cache_memory = 50KiB holds only 96 tokens of this model (512 per token); ")
    assert plan(model, kv_cache_memory=suggested(message, "kv_cache_memory")).max_model_len == 512
    # Between 512 tokens and the model's context: allowed, and said.
    config = EngineConfig(block_size=16, kv_cache_memory=600 * PER_TOKEN, max_model_len=None)
    long_model = type(model)(**{**model.__dict__, "max_position_embeddings": 4096})
    note = check_usable(plan_kv_cache(long_model, config, torch.float32, CPU), config)
    assert note == (
        "Context shortened to 592 of the model's 4096 tokens to fit kv_cache_memory = 300KiB; "
        "2MiB holds the model's whole 4096-token context"
    )
    full = EngineConfig(block_size=16, kv_cache_memory="8MiB")
    assert check_usable(plan_kv_cache(model, full, torch.float32, CPU), full) is None


@pytest.mark.parametrize(
    ("n", "text", "up"),
    [(1024, "1KiB", "1MiB"), (3 * 2**19, "1.5MiB", "2MiB"), (500 * 2**40, "500TiB", "500TiB"), (700, "700", "1MiB")],
)
def test_sizes_read_back_as_sizes(n, text, up):
    assert (size(n), size_up(n)) == (text, up)
    assert parse_size(size_up(n)) >= n


# --- kv_cache_memory unset: 1 GiB on the CPU, gpu_memory_utilization of the GPU on CUDA -------------

GIB = 1024**3


def test_cuda_budget_is_the_utilization_share_less_what_is_used_and_the_activation_peak():
    # 0.9 × 100 GiB allowed; 10 GiB already in use (weights, context); 5 GiB of activations.
    assert kv_budget.cuda_kv_budget(100 * GIB, 90 * GIB, 5 * GIB, 0.9) == 75 * GIB
    assert kv_budget.cuda_kv_budget(100 * GIB, 90 * GIB, 5 * GIB, 1.0) == 85 * GIB
    # Another process holding 50 GiB counts against the share, as in vLLM.
    assert kv_budget.cuda_kv_budget(100 * GIB, 40 * GIB, 5 * GIB, 0.9) == 25 * GIB


def test_cuda_budget_with_nothing_left_says_what_to_change():
    with pytest.raises(ConfigError) as e:
        kv_budget.cuda_kv_budget(80 * GIB, 20 * GIB, 2 * GIB, 0.5)
    message = str(e.value)
    assert message.startswith("gpu_memory_utilization = 0.5 allows 40GiB of the GPU's 80GiB, but 60GiB is in use")
    assert "activations take 2GiB" in message and "set kv_cache_memory" in message


def test_unset_budget_is_one_gib_on_the_cpu_and_a_set_one_is_kept(loaded_tiny):
    model = loaded_tiny("llama").model
    assert EngineConfig().kv_cache_memory is None
    assert kv_budget.resolve_kv_cache_memory(EngineConfig(), model, CPU).kv_cache_memory == GIB
    assert (
        kv_budget.resolve_kv_cache_memory(EngineConfig(kv_cache_memory="3MiB"), model, CPU).kv_cache_memory == 3 * 2**20
    )
    assert plan_kv_cache(loaded_tiny("llama").config, EngineConfig(), torch.float32, CPU).budget == GIB


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_gpu_memory_utilization_must_be_a_fraction(bad):
    with pytest.raises(ConfigError, match=r"gpu_memory_utilization = .* must be a number in \(0, 1\]"):
        EngineConfig(gpu_memory_utilization=bad)


def test_profile_batch_is_the_largest_step_writing_nothing():
    ids, positions, meta, rows = kv_budget.profile_batch(
        EngineConfig(max_num_batched_tokens=100, max_num_seqs=8, block_size=16), 64, CPU
    )
    assert ids.shape == positions.shape == meta.slot_mapping.shape == (100,)
    assert meta.seq_lens.tolist() == [13, 13, 13, 13, 12, 12, 12, 12]
    assert meta.cu_seqlens_q.tolist() == [0, 13, 26, 39, 52, 64, 76, 88, 100]
    assert (meta.slot_mapping == -1).all() and meta.block_tables.shape == (8, 1) and not meta.block_tables.any()
    assert positions[:13].tolist() == list(range(13)) and rows == 100
    # Longer than the model's context: positions stay inside the rotary table.
    _, positions, _, rows = kv_budget.profile_batch(EngineConfig(max_num_batched_tokens=600, max_num_seqs=1), 512, CPU)
    assert int(positions.max()) == 511 and rows == 256


def test_profile_step_runs_the_model_over_a_one_block_cache(loaded_tiny):
    loaded = loaded_tiny("llama")
    config = EngineConfig(max_num_batched_tokens=70, max_num_seqs=4, block_size=16)
    logprobs = kv_budget.run_profile_step(loaded.model, config, CPU)
    assert logprobs.shape == (70, loaded.config.vocab_size) and torch.isfinite(logprobs).all()
