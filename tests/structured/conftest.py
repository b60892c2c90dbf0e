"""Structured-output fixtures: the real SmolLM2 behind the Python API."""

import pytest


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_gguf_path):
    """LLM over the bundled SmolLM2-135M-Instruct GGUF (the default CPU kernels)."""
    from rusteeze import LLM

    return LLM(smollm2_gguf_path, device="cpu", max_model_len=1024, kv_cache_memory="128MiB")
