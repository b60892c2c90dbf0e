"""The real SmolLM2-135M-Instruct GGUF through the whole engine."""

import pytest
import torch
from engine_fakes import assert_all_free

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.engine.kv_cache import bytes_per_block
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.sampling import SamplingParams

pytestmark = pytest.mark.slow

QUESTIONS = [
    "What is the capital of France?",
    "What is the capital of Germany?",
    "Name a planet.",
]


@pytest.fixture(scope="module", params=["torch", "numba"])
def smollm2_loaded(request, smollm2_gguf_path):
    """The model on the reference backend, and on the default CPU one (Numba: int16 activations, fused steps)."""
    return load_model_from_path(smollm2_gguf_path, device="cpu", kernel_backend=request.param)


def chat_all(engine, params):
    ids = [engine.add_request(None, params, messages=[{"role": "user", "content": q}]) for q in QUESTIONS]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    return [done[i] for i in ids]


def test_batched_cached_and_preempted_greedy_equals_one_at_a_time(smollm2_loaded, smollm2_gguf_path):
    params = SamplingParams(temperature=0, max_tokens=8)

    def engine(**kw):
        backend = smollm2_loaded.kernel_backend
        config = EngineConfig(model=smollm2_gguf_path, kernel_backend=backend, device="cpu", **kw)
        return Engine(config, loaded=smollm2_loaded)

    plain = engine(enable_prefix_caching=False, max_num_seqs=1, max_model_len=64, kv_cache_memory="16MiB")
    expected = chat_all(plain, params)
    assert "Paris" in expected[0].outputs[0].text
    assert "Berlin" in expected[1].outputs[0].text
    # 5 blocks of 16 for chats of ~40 tokens: they preempt each other; the
    # shared chat-template prefix comes from the prefix cache; prefill is chunked.
    tight_bytes = 5 * bytes_per_block(smollm2_loaded.config, 16, torch.float32)
    tight = engine(max_model_len=64, kv_cache_memory=tight_bytes, max_num_batched_tokens=40)
    got = chat_all(tight, params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in expected]
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in expected]
    assert tight.scheduler.num_preemptions > 0
    assert any(o.usage.cached_tokens > 0 for o in got)
