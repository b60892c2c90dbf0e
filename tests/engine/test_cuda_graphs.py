"""CUDA graphs for decode: buckets, padding, fallbacks, and the padded path run eagerly on the CPU."""

import os
import random

import pytest
import torch
from engine_fakes import assert_all_free

from rusteeze.config import EngineConfig
from rusteeze.engine.cuda_graphs import (
    PAD_SLOT,
    DecodeGraphRunner,
    StaticInputs,
    bucket_for,
    build_decode_graphs,
    eager_reason,
    graph_buckets,
)
from rusteeze.models.attention import AttentionMetadata
from rusteeze.sampling import SamplingParams


@pytest.mark.parametrize(
    ("max_num_seqs", "buckets"),
    [
        (1, (1,)),
        (2, (1, 2)),
        (48, (1, 2, 4, 8, 16, 32, 48)),
        (64, (1, 2, 4, 8, 16, 32, 64)),
        (5000, (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
    ],
)
def test_buckets_double_up_to_max_num_seqs_capped_at_512(max_num_seqs, buckets):
    assert graph_buckets(max_num_seqs) == buckets


@pytest.mark.parametrize(
    ("tokens", "seqs", "bucket"),
    [(1, 1, 1), (3, 3, 4), (33, 33, 48), (48, 48, 48), (49, 49, None), (5, 3, None), (0, 0, None)],
)
def test_only_pure_decode_steps_within_the_largest_bucket_replay(tokens, seqs, bucket):
    assert bucket_for(tokens, seqs, (1, 2, 4, 8, 16, 32, 48)) == bucket


def test_eager_under_the_flag_on_the_cpu_and_off_the_triton_kernels(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cuda = torch.device("cuda")
    assert eager_reason(EngineConfig(), cuda, "triton") is None
    assert "enforce_eager" in eager_reason(EngineConfig(enforce_eager=True), cuda, "triton")
    assert "CUDA device" in eager_reason(EngineConfig(), torch.device("cpu"), "numba")
    assert "host" in eager_reason(EngineConfig(), cuda, "torch")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "interpreter" in eager_reason(EngineConfig(), cuda, "triton")


def decode_step(lens: list[int], tables: list[list[int]], block_size: int) -> tuple:
    """input_ids [B], positions [B] and metadata of one decode token per sequence (token b + 5)."""
    b = len(lens)
    positions = torch.tensor([n - 1 for n in lens])
    slots = torch.tensor(
        [tables[i][(n - 1) // block_size] * block_size + (n - 1) % block_size for i, n in enumerate(lens)]
    )
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(b + 1, dtype=torch.int32),
        seq_lens=torch.tensor(lens, dtype=torch.int32),
        slot_mapping=slots,
        block_tables=torch.tensor(tables, dtype=torch.int32),
    )
    return torch.arange(5, 5 + b), positions, meta


def test_padding_rows_write_nothing_and_point_at_the_unread_block():
    inputs = StaticInputs(max_batch=8, max_blocks=5, unread_block=99, device=torch.device("cpu"))
    ids, pos, meta = decode_step([6, 3, 9], [[0, 1, 2], [3, 99, 99], [4, 5, 6]], block_size=4)
    inputs.fill(ids, pos, meta, bucket=4)
    ids4, pos4, padded = inputs.view(4)
    assert ids4.tolist() == [5, 6, 7, 0] and pos4.tolist() == [5, 2, 8, 0]
    assert padded.slot_mapping.tolist() == [*meta.slot_mapping.tolist(), PAD_SLOT]
    assert padded.seq_lens.tolist() == [6, 3, 9, 1]
    assert padded.cu_seqlens_q.tolist() == [0, 1, 2, 3, 4]
    assert padded.block_tables.tolist() == [[0, 1, 2, 99, 99], [3, 99, 99, 99, 99], [4, 5, 6, 99, 99], [99] * 5]
    # A smaller step next: rows it no longer uses are padding again, not the last step's values.
    ids, pos, meta = decode_step([2], [[7]], block_size=4)
    inputs.fill(ids, pos, meta, bucket=2)
    ids2, _, padded = inputs.view(2)
    assert ids2.tolist() == [5, 0] and padded.slot_mapping.tolist() == [7 * 4 + 1, PAD_SLOT]
    assert padded.block_tables.tolist() == [[7, 99, 99, 99, 99], [99] * 5]


def test_steps_a_graph_cannot_take_run_eagerly(loaded_tiny):
    loaded = loaded_tiny("llama")
    runner = DecodeGraphRunner(loaded.model, [], (1, 2, 4), 2, 0, torch.device("cpu"), capture=False)
    ids, pos, meta = decode_step([3, 3, 3, 3, 3], [[0]] * 5, block_size=4)
    assert runner.forward(ids, pos, meta) is None  # five sequences: above the largest bucket
    ids, pos, meta = decode_step([9], [[0, 1, 2]], block_size=4)
    assert runner.forward(ids, pos, meta) is None  # a block table wider than the static one
    meta.cu_seqlens_q = torch.tensor([0, 2], dtype=torch.int32)
    assert runner.forward(torch.tensor([1, 2]), torch.tensor([7, 8]), meta) is None  # a prefill chunk


def test_build_decode_graphs_is_none_on_the_cpu(make_engine):
    engine = make_engine()
    assert engine.runner.decode_graphs is None
    assert build_decode_graphs(engine.config, "torch", engine.runner, engine.max_model_len) is None


def test_padded_decode_step_equals_the_unpadded_one(loaded_tiny):
    """One step through the padding path (bucket 4 for 3 sequences) and directly: same hidden states and cache."""
    model, cfg = loaded_tiny("llama").model, loaded_tiny("llama").config
    block_size, blocks = 4, 12
    shape = (blocks + 1, block_size, cfg.num_key_value_heads, cfg.head_dim)  # + the always-NaN block
    torch.manual_seed(0)
    caches = [(torch.randn(shape), torch.randn(shape)) for _ in range(cfg.num_hidden_layers)]
    for k, v in caches:
        k[blocks], v[blocks] = float("nan"), float("nan")
    lens, tables = [6, 3, 9], [[0, 1, 12], [3, 12, 12], [4, 5, 6]]
    ids, pos, meta = decode_step(lens, tables, block_size)
    eager_caches = [(k.clone(), v.clone()) for k, v in caches]
    before = [(k.clone(), v.clone()) for k, v in caches]
    with torch.inference_mode():
        expected = model(ids, pos, eager_caches, meta)  # [3, H]
        runner = DecodeGraphRunner(model, caches, (1, 2, 4, 8), 3, blocks, torch.device("cpu"), capture=False)
        got = runner.forward(ids, pos, meta)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    written = meta.slot_mapping  # [3] the only slots a step may change
    for (k, v), (ek, ev), (k0, v0) in zip(caches, eager_caches, before, strict=True):
        for got_cache, eager_cache, old in ((k, ek, k0), (v, ev, v0)):
            flat, eager_flat = got_cache.view(-1, *shape[2:]), eager_cache.view(-1, *shape[2:])  # [slots, Hk, D]
            torch.testing.assert_close(flat[written], eager_flat[written], rtol=1e-5, atol=1e-5)
            untouched = torch.ones(flat.shape[0], dtype=torch.bool)
            untouched[written] = False
            assert torch.equal(flat[untouched].nan_to_num(7.0), old.view(-1, *shape[2:])[untouched].nan_to_num(7.0))
        assert torch.isnan(k[blocks]).all() and torch.isnan(v[blocks]).all()


def test_engine_through_the_padded_path_gives_the_eager_tokens(make_engine):
    """Poisoned-KV mode on: every decode step goes through the padding path, greedy tokens unchanged, no leak."""
    rng = random.Random(3)
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randint(3, 17))] for _ in range(5)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    results = []
    for padded in (False, True):
        engine = make_engine(max_num_seqs=8)
        assert engine.runner.poison
        if padded:
            r = engine.runner
            buckets = graph_buckets(8)
            max_blocks = -(-engine.max_model_len // r.block_size)
            r.decode_graphs = DecodeGraphRunner(
                r.model, r.kv_caches, buckets, max_blocks, r.unread_block, r.device, capture=False
            )
            replayed = []  # batch size of each step the padding path took
            original = r.decode_graphs.forward

            def forward(input_ids, positions, meta, original=original, replayed=replayed):
                hidden = original(input_ids, positions, meta)
                if hidden is not None:
                    replayed.append(meta.num_seqs)
                return hidden

            r.decode_graphs.forward = forward
        ids = [engine.add_request(p, params) for p in prompts]
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0].token_ids
        assert_all_free(engine.block_manager)
        results.append([done[i] for i in ids])
    assert results[0] == results[1]
    assert replayed.count(5) == params.max_tokens - 1  # every decode step ran padded to bucket 8


@pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="captures CUDA graphs: needs a CUDA device and compiled Triton kernels (benches/gpu_check.py runs it)",
)
def test_captured_graphs_give_the_eager_tokens_on_cuda(tiny_llama_dir):
    from rusteeze.engine.engine import Engine

    rng = random.Random(5)
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randint(3, 17))] for _ in range(5)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    results = []
    for eager in (True, False):
        config = EngineConfig(
            model=str(tiny_llama_dir), device="cuda", dtype="float32", kernel_backend="triton", block_size=4,
            kv_cache_memory="8MiB", max_model_len=128, max_num_seqs=8, enforce_eager=eager,
        )  # fmt: skip
        engine = Engine(config)
        assert (engine.runner.decode_graphs is None) == eager
        if not eager:
            assert engine.runner.decode_graphs.buckets == (1, 2, 4, 8)
        ids = [engine.add_request(p, params) for p in prompts]
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out.outputs[0].token_ids
        assert_all_free(engine.block_manager)
        results.append([done[i] for i in ids])
    assert results[0] == results[1]
