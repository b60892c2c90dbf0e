"""Differential engine fuzzer: batched, chunked, cached, preempted and aborted runs vs each prompt alone.

Every architecture's tiny model in float32, the tiny Llama in every weight format
(int8, int4, GGUF Q8_0 / Q4_0 / Q4_1 loaded directly) and the real SmolLM2 GGUF.
See ``fuzz_workload.py`` for the workloads and the oracle, ``fuzz_models.py``
for the formats. The KV cache is poisoned (tests/conftest.py), so a read of a
slot never written for the reading sequence raises at once (NaN logits).

Profiles (tests/conftest.py): ``ci`` (default: few examples, derandomized) and
``long`` (``HYPOTHESIS_PROFILE=long python -m pytest tests/engine/test_fuzz_engine.py``).
"""

from __future__ import annotations

import os

import pytest
from fuzz_models import GGUF_FORMATS, HF_FORMATS, gguf_pair, load, quantized_pair
from fuzz_workload import MARGIN, REDUCED_MARGIN, Alone, check_against, make_engine, run_workload, workloads
from hypothesis import event, given, settings
from hypothesis import strategies as st

from rusteeze.engine.engine import Engine

FORMATS = (*HF_FORMATS, *GGUF_FORMATS)
FUZZ = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))  # registered in tests/conftest.py
EXAMPLES = FUZZ.max_examples


def _engine_for(loaded, wl) -> Engine:
    spec = {"method": "ngram", "num_speculative_tokens": wl.speculate, "prompt_lookup_min": 1}
    engine = make_engine(
        loaded,
        block_size=wl.block_size,
        kv_tokens=wl.kv_tokens,
        prefix_caching=True,
        max_num_batched_tokens=wl.max_num_batched_tokens,
        max_num_seqs=wl.max_num_seqs,
        speculative=spec if wl.speculate else None,
    )
    if engine.speculator is not None:
        engine.speculator.fixed_cost_tokens = 1e9  # drafts are free: draft whenever the n-gram finds one
    return engine


def check_workload(loaded, alone: Alone, wl, tolerance: float = MARGIN) -> list[str]:
    """Run ``wl`` batched; failures of any completion against its prompt run alone."""
    errors, seen = [], set()
    engine = _engine_for(loaded, wl)
    results = run_workload(engine, wl, seen)
    if engine.speculator is not None:
        seen.add("speculation: drafts verified" if engine.speculator.num_draft_tokens else "speculation: no drafts")
    for what in sorted(seen):
        event(what)  # coverage: python -m pytest ... --hypothesis-show-statistics
    for req, completions, aborted in results:
        want, margins = alone(req.prompt, req.max_tokens)
        for i, got in enumerate(completions):
            what = f"batched vs alone ({'aborted ' if aborted else ''}completion {i} of {req})"
            error = check_against(what, req.prompt, got, want, margins, not aborted, tolerance)
            if error:
                errors.append(error)
    return errors


def check_formats(alone: Alone, twin: Alone, wl, tolerance: float = MARGIN) -> list[str]:
    """Each prompt alone in the format vs alone on the same weights dequantized to float32."""
    longest: dict[tuple[int, ...], int] = {}
    for reqs in wl.passes:
        for r in reqs:
            longest[tuple(r.prompt)] = max(longest.get(tuple(r.prompt), 0), r.max_tokens)
    errors = []
    for prompt, m in longest.items():
        got, _ = alone(list(prompt), m)
        want, margins = twin(list(prompt), m)
        error = check_against("format vs float32 twin", list(prompt), got, want, margins, True, tolerance)
        if error:
            errors.append(error)
    return errors


@pytest.fixture(scope="module")
def float_models(loaded_tiny, tiny_model_dirs):
    """{(arch, backend): (loaded, Alone, float32 torch twin's Alone or None)}, built on first use."""
    cache: dict[tuple[str, str], tuple] = {}

    def get(arch: str, backend: str) -> tuple:
        if (arch, backend) not in cache:
            loaded = loaded_tiny(arch) if backend == "torch" else load(tiny_model_dirs[arch], backend)
            twin = None if backend == "torch" else get(arch, "torch")[1]
            cache[arch, backend] = (loaded, Alone(loaded), twin)
        return cache[arch, backend]

    return get


@pytest.fixture(scope="module")
def format_models(tiny_llama_dir, tiny_plain_llama_dir, tmp_path_factory):
    """{(format, backend, dtype): (loaded, Alone, float32 torch twin's Alone)}, built on first use."""
    cache: dict[tuple[str, str, str], tuple] = {}

    def get(fmt: str, backend: str, dtype: str) -> tuple:
        if (fmt, backend, dtype) not in cache:
            tmp = tmp_path_factory.mktemp(f"fuzz-{fmt}-{backend}-{dtype}")
            if fmt in HF_FORMATS:
                loaded, twin = quantized_pair(tiny_llama_dir, fmt, tmp, backend, dtype)
            else:
                loaded, twin = gguf_pair(tiny_plain_llama_dir, fmt, tmp, backend, dtype)
            cache[fmt, backend, dtype] = (loaded, Alone(loaded), Alone(twin))
        return cache[fmt, backend, dtype]

    return get


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@settings(FUZZ)
@given(data=st.data())
def test_fuzz_float_engine_matches_each_prompt_alone(float_models, arch, backend, data):
    loaded, alone, twin = float_models(arch, backend)
    wl = data.draw(workloads(vocab=loaded.config.vocab_size), label="workload")
    errors = (check_formats(alone, twin, wl) if twin else []) + check_workload(loaded, alone, wl)
    assert not errors, "\n".join(errors)


# Backend "auto" is the default kernels (Numba on CPU), "torch" the reference quantized ops. At dtype
# float32 every path computes in float32: batched must equal alone (near-ties excepted). The default
# dtype "auto" quantizes small steps' activations to int8 and runs big ones in bf16 where native, so
# there a token may depend on its step's size: checked with REDUCED_MARGIN (see fuzz_workload.py).
@pytest.mark.parametrize(
    ("fmt", "backend", "dtype", "tolerance"),
    [
        *((f, "auto", "float32", MARGIN) for f in FORMATS),
        ("int4", "torch", "auto", MARGIN),
        ("q4_1", "torch", "auto", MARGIN),
        *((f, "auto", "auto", REDUCED_MARGIN) for f in ("int4", "q8_0", "q4_1")),
    ],
)
@settings(FUZZ)
@given(data=st.data())
def test_fuzz_quantized_engine_matches_alone_and_its_float32_twin(format_models, fmt, backend, dtype, tolerance, data):
    loaded, alone, twin = format_models(fmt, backend, dtype)
    wl = data.draw(workloads(vocab=loaded.config.vocab_size, long_first=True), label="workload")
    errors = check_formats(alone, twin, wl, tolerance) + check_workload(loaded, alone, wl, tolerance)
    assert not errors, "\n".join(errors)


@pytest.fixture(scope="module")
def smollm2_models(smollm2_gguf_path):
    """SmolLM2 GGUF loaded directly on the default kernels and dtype (the default path), and dequantized to float32."""
    direct = load(smollm2_gguf_path, "auto", gguf_direct=True)
    return direct, Alone(direct, min_tokens=4), Alone(load(smollm2_gguf_path, gguf_direct=False), min_tokens=4)


@pytest.mark.slow
@settings(FUZZ, max_examples=2 if EXAMPLES < 20 else 6)
@given(data=st.data())
def test_fuzz_smollm2_gguf(smollm2_models, data):
    direct, alone, twin = smollm2_models
    wl = data.draw(
        workloads(vocab=direct.config.vocab_size, max_requests=3, max_total=700, long_first=True, max_new=4),
        label="workload",
    )
    errors = check_formats(alone, twin, wl, REDUCED_MARGIN) + check_workload(direct, alone, wl, REDUCED_MARGIN)
    assert not errors, "\n".join(errors)
