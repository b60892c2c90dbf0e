"""The numba backend's fused decode path (one ``decoder_layer`` call per layer) against the per-op path."""

import pytest
import torch
from tiny_models import kv_caches_for, paged_greedy

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_decoder
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import AttentionMetadata
from rusteeze.quant.config import QuantConfig
from rusteeze.quant.convert import quantize_model

PROMPTS = [[5, 9, 30, 7, 100, 17, 3], [3, 44, 12], [8, 21]]


def _step(model, caches, tables, lens_before, q_lens, ids, fused: bool, block_size: int = 4):
    """One forward over sequences with ``lens_before`` cached tokens and ``q_lens`` new ones."""
    positions = torch.cat([torch.arange(n, n + q) for n, q in zip(lens_before, q_lens, strict=True)])
    slots = torch.cat(
        [
            tables[b].long()[p // block_size] * block_size + p % block_size
            for b, p in enumerate(torch.arange(n, n + q) for n, q in zip(lens_before, q_lens, strict=True))
        ]
    )
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    lens = torch.tensor([n + q for n, q in zip(lens_before, q_lens, strict=True)], dtype=torch.int32)
    meta = AttentionMetadata(cu, lens, slots, tables)
    saved = model._fused
    model._fused = saved if fused else None  # None: the per-op path
    try:
        with torch.no_grad():
            return model(ids, positions, caches, meta)
    finally:
        if not fused:
            model._fused = saved


def _compare_paths(model, tol: float = 1e-5) -> None:
    """Prefill three prompts (per-op path), then decode / small-chunk steps through both paths from equal caches.

    ``tol``: 1e-5 for float32 math (summation order only); int16-rounded activations (dtype "auto")
    need more: an input that differs by float32 rounding can round to the neighbouring int16 value.
    """
    block_size, blocks = 4, 24
    g = torch.Generator().manual_seed(1)
    tables = torch.randperm(blocks, generator=g).to(torch.int32).view(3, 8)  # shuffled blocks
    caches = kv_caches_for(model, blocks, block_size)
    for k, v in caches:  # every slot not written by this test is NaN
        k.fill_(float("nan"))
        v.fill_(float("nan"))
    lens = [len(p) for p in PROMPTS]
    _step(model, caches, tables, [0, 0, 0], lens, torch.tensor([t for p in PROMPTS for t in p]), fused=False)
    vocab = model.config.vocab_size
    for q_lens in ([1, 1, 1], [1, 3, 2], [2, 1, 1], [5, 4, 3]):  # 12 tokens: int16 layers' larger fused steps
        ids = torch.randint(3, vocab, (sum(q_lens),), generator=g)
        ref_caches = [(k.clone(), v.clone()) for k, v in caches]
        ref = _step(model, ref_caches, tables, lens, q_lens, ids, fused=False)
        got = _step(model, caches, tables, lens, q_lens, ids, fused=True)
        assert isinstance(model._fused, tuple), "the fused path did not apply"
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        for (k, v), (rk, rv) in zip(caches, ref_caches, strict=True):
            torch.testing.assert_close(k, rk, rtol=tol, atol=tol, equal_nan=True)  # NaN where unwritten
            torch.testing.assert_close(v, rv, rtol=tol, atol=tol, equal_nan=True)
        caches = ref_caches  # go on from the reference state
        lens = [n + q for n, q in zip(lens, q_lens, strict=True)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_float_models_fused_matches_per_op(tiny_model_dirs, arch):
    model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="numba").model
    _compare_paths(model)


@pytest.mark.parametrize(
    ("arch", "method", "group"), [("llama", "int4", 32), ("llama", "int8", None), ("qwen2", "int4", 32)]
)
@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_quantized_models_fused_matches_per_op(tiny_model_dirs, tmp_path, arch, method, group, dtype):
    out = tmp_path / "q"
    quantize_model(tiny_model_dirs[arch], out, QuantConfig(method, group, quantize_embeddings=True))
    model = load_model_from_path(out, kernel_backend="numba", dtype=dtype).model
    assert model.layers[0].self_attn.qkv_proj.tiled.activation_bits == (16 if dtype == "auto" else 0)
    _compare_paths(model, 1e-5 if dtype == "float32" else 1e-3)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "mistral"])
def test_greedy_identical_to_torch_backend(tiny_model_dirs, arch):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    torch_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="torch").model
    numba_model = load_model_from_path(tiny_model_dirs[arch], kernel_backend="numba").model
    calls = []
    layer = numba_decoder.decoder_layer

    def spy(*args):
        calls.append(1)
        return layer(*args)

    numba_decoder.decoder_layer = spy
    try:
        got = paged_greedy(numba_model, prompts, steps=12)
    finally:
        numba_decoder.decoder_layer = layer
    assert got == paged_greedy(torch_model, prompts, steps=12)
    assert len(calls) == 12 * numba_model.config.num_hidden_layers  # every step (7 prompt tokens too), per layer


def test_large_steps_and_bad_slots_take_the_per_op_path(tiny_llama_dir):
    model = load_model_from_path(tiny_llama_dir, kernel_backend="numba").model
    caches = kv_caches_for(model, 8, 4)
    tables = torch.arange(8, dtype=torch.int32).view(1, 8)
    ids = torch.arange(3, 12)
    out = _step(model, caches, tables, [0], [9], ids, fused=True)  # 9 tokens: per-op path
    assert out.shape == (9, model.config.hidden_size)
    meta = AttentionMetadata(
        torch.tensor([0, 1], dtype=torch.int32),
        torch.tensor([10], dtype=torch.int32),
        torch.tensor([999]),  # past the cache
        tables,
    )
    with pytest.raises(KernelError, match="past the cache"), torch.no_grad():
        model(torch.tensor([5]), torch.tensor([9]), caches, meta)


def test_smollm2_greedy_identical_to_torch_backend(smollm2_gguf_path):
    numba_model = load_model_from_path(smollm2_gguf_path, kernel_backend="numba", dtype="float32")  # float32 math
    torch_model = load_model_from_path(smollm2_gguf_path, kernel_backend="torch")
    prompts = [numba_model.tokenizer.encode_chat([{"role": "user", "content": p}]) for p in ("Name a fruit.", "2+2?")]
    got = paged_greedy(numba_model.model, prompts, steps=16, block_size=16)
    assert isinstance(numba_model.model._fused, tuple)
    assert got == paged_greedy(torch_model.model, prompts, steps=16, block_size=16)


def test_fused_rows_are_batch_invariant(tiny_model_dirs, tmp_path):
    """A sequence's decode row is bit-identical whether it runs alone or beside other sequences."""
    out = tmp_path / "q"
    quantize_model(tiny_model_dirs["qwen2"], out, QuantConfig("int4", 32))
    model = load_model_from_path(out, kernel_backend="numba").model
    tables = torch.arange(24, dtype=torch.int32).view(3, 8)
    caches = kv_caches_for(model, 24, 4)
    lens = [len(p) for p in PROMPTS]
    _step(model, caches, tables, [0, 0, 0], lens, torch.tensor([t for p in PROMPTS for t in p]), fused=False)
    alone_caches = [(k.clone(), v.clone()) for k, v in caches]
    batch = _step(model, caches, tables, lens, [1, 2, 1], torch.tensor([40, 41, 42, 43]), fused=True)
    alone = _step(model, alone_caches, tables[:1], lens[:1], [1], torch.tensor([40]), fused=True)
    assert torch.equal(batch[0], alone[0])


def test_smollm2_int16_decode_activations_answer(smollm2_gguf_path):
    """dtype "auto" (int16 decode activations in the fused layers) answers as float32 after a whole-prompt prefill."""
    loaded = load_model_from_path(smollm2_gguf_path, kernel_backend="numba")
    model, tok = loaded.model, loaded.tokenizer
    questions = {"What is the capital of France?": "Paris", "What color is the sky on a clear day?": "blue",
                 "Name a fruit.": "Banana"}  # fmt: skip
    prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in questions]
    got = paged_greedy(model, prompts, steps=20, block_size=16)
    kinds = {lin[0] for layer in model._fused[1] for lin in layer[-4:]}
    assert kinds == {numba_decoder.KIND_INT4_Q16}  # every SmolLM2 decoder linear is Q4_1
    assert model.embed_tokens.tiled.activation_bits == 16  # the tied logits layer: int16 too
    for answer, ids in zip(questions.values(), got, strict=True):
        assert answer in tok.decode(ids), tok.decode(ids)


def test_smollm2_default_path_answers_when_the_prompt_is_read_in_decode_sized_steps(smollm2_gguf_path):
    """The prompt's tail read in steps of <= 8 tokens (prefix-cache hits, every later chat turn) answers
    as a whole-prompt prefill does: int8 decode activations (llama.cpp's q8, whose llama-simple answers
    the same) said "L'Étoile, la Marseillaise" here; int16 ones answer as float32."""
    from rusteeze import LLM, SamplingParams

    llm = LLM(smollm2_gguf_path, enable_prefix_caching=False, max_num_batched_tokens=8, max_num_seqs=1)
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(temperature=0))
    assert "Paris" in out[0].outputs[0].text, out[0].outputs[0].text
