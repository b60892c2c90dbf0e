"""Speculative decoding with the real SmolLM2 GGUF on the default (Numba, fused decode) path."""

import pytest
from engine_fakes import assert_all_free

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.sampling import SamplingParams

pytestmark = pytest.mark.slow

TEXT = (
    "The quick brown fox jumps over the lazy dog. A paged KV cache stores keys and values in blocks, "
    "and the scheduler mixes prefills with decodes in one step."
)
CHATS = [
    [{"role": "user", "content": "Repeat the following text exactly:\n\n" + TEXT}],
    [{"role": "user", "content": "Name three colors."}],
]


@pytest.fixture(scope="module")
def loaded(smollm2_gguf_path):
    return load_model_from_path(smollm2_gguf_path, device="cpu")  # auto: the Numba kernels


def run(engine, params):
    ids = [engine.add_request(None, params, messages=m) for m in CHATS]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    return [done[i].outputs[0] for i in ids]


def test_greedy_with_ngram_speculation_is_identical_and_accepts_repeated_text(loaded, smollm2_gguf_path):
    params = SamplingParams(temperature=0, max_tokens=48, logprobs=1)

    def engine(**kw):
        config = EngineConfig(model=smollm2_gguf_path, device="cpu", max_model_len=256, kv_cache_memory="32MiB", **kw)
        return Engine(config, loaded=loaded)

    plain = run(engine(), params)
    assert plain[0].text.startswith("The quick brown fox")  # the model does repeat the text
    spec_engine = engine(speculative={"method": "ngram", "num_speculative_tokens": 4})
    spec = run(spec_engine, params)
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    assert [c.text for c in spec] == [c.text for c in plain]
    for s, p in zip(spec, plain, strict=True):
        assert [e[t].logprob for e, t in zip(s.logprobs, s.token_ids, strict=True)] == pytest.approx(
            [e[t].logprob for e, t in zip(p.logprobs, p.token_ids, strict=True)], abs=1e-3
        )
    stats = spec_engine.stats()
    assert stats["spec_decode_num_accepted_tokens"] >= 20
    assert stats["spec_decode_acceptance_rate"] > 0.7
