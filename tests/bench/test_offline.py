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


def test_speculation_figures_cover_the_timed_run(tiny_llama_dir):
    from rich.console import Console

    from rusteeze.bench.report import render

    config = EngineConfig(
        model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_num_seqs=4, speculative={"method": "ngram"}
    )
    spec_engine = Engine(config)
    # Draft the last token twice: the tiny random model takes some of them, rejects the rest.
    spec_engine.speculator.propose = lambda running: {s.seq_id: [s.token_ids[-1]] * 2 for s in running}
    result = run_offline(spec_engine, "tiny", num_prompts=3, input_len=8, output_len=6, seed=1)
    assert [r.output_tokens for r in result.records] == [6] * 3
    figures = result.figures()
    assert figures["spec_decode_num_draft_tokens"] > 0
    assert 0 <= figures["spec_decode_acceptance_rate"] <= 1
    assert 1 <= figures["spec_decode_mean_accepted_length"] <= 3
    console = Console(record=True, width=100)
    console.print(render(result))
    assert "Draft acceptance rate" in console.export_text()
    assert (
        "spec_decode_num_draft_tokens"
        not in run_offline(
            Engine(config.replace(speculative=None)), "tiny", num_prompts=1, input_len=8, output_len=2
        ).figures()
    )
