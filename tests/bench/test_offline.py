"""The offline benchmark on a tiny random model: exact token counts, a clean engine afterwards."""

import pytest
import torch

from rusteeze.bench.offline import random_prompts, run_offline
from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.errors import ConfigError


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    torch.set_num_threads(1)
    return Engine(EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_num_seqs=4))


def test_random_prompts_are_seeded_and_avoid_special_tokens(engine):
    prompts = random_prompts(engine, 3, 50, seed=1)
    assert [len(p) for p in prompts] == [50, 50, 50]
    assert prompts == random_prompts(engine, 3, 50, seed=1)
    assert prompts != random_prompts(engine, 3, 50, seed=2)
    specials = engine.tokenizer.special_token_ids()
    assert specials and not specials & {t for p in prompts for t in p}


def test_every_request_generates_exactly_output_len_tokens(engine):
    phases = []
    result = run_offline(
        engine,
        "tiny",
        num_prompts=6,
        input_len=20,
        output_len=5,
        seed=3,
        on_progress=lambda phase, done, total: phases.append((phase, done, total)),
    )
    assert [r.output_tokens for r in result.records] == [5] * 6  # ignore_eos: no early stops
    assert all(len(r.token_times) == 5 and r.token_times == sorted(r.token_times) for r in result.records)
    figures = result.figures()
    assert (figures["completed"], figures["total_input_tokens"], figures["total_output_tokens"]) == (6, 120, 30)
    assert figures["prefill_throughput"] > 0 and result.prefill_tokens == 120
    assert result.memory_kind == "process RSS" and result.peak_memory_bytes > 0
    assert [p for p in phases if p[0] == "prefill"][-1] == ("prefill", 6, 6)
    assert [p for p in phases if p[0] == "generate"] == [("generate", d, 6) for d in range(1, 7)]
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_sizes_are_checked(engine):
    with pytest.raises(ConfigError, match="--num-prompts 0 must be at least 1"):
        run_offline(engine, "tiny", 0, 8, 8)
    with pytest.raises(ConfigError, match="--input-len 500 \\+ --output-len 100 exceeds the context of 512 tokens"):
        run_offline(engine, "tiny", 1, 500, 100)
