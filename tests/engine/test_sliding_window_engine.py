"""Mistral's sliding window through the engine: chunked prefill and decode over released blocks.

With a window of 8 and blocks of 4, a sequence's early blocks are released
while its prompt is still being prefilled in chunks; in the poisoned-KV mode
(tests/conftest.py) their table entries point at an all-NaN block, so any read
of them shows as NaN logits (the runner raises). Greedy tokens must equal
transformers' on the whole prompt.
"""

import pytest
import torch
from engine_fakes import assert_all_free
from tiny_models import load_hf_model

from rusteeze.sampling import SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def hf_greedy(model_dir, prompt: list[int], n: int) -> list[int]:
    hf = load_hf_model(model_dir)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("chunk", [5, 12])  # tokens per step: chunks shorter and longer than the window
def test_chunked_prefill_past_released_blocks_matches_transformers(make_engine, tiny_model_dirs, chunk):
    engine = make_engine("mistral", max_num_batched_tokens=chunk, enable_prefix_caching=False)
    assert engine.model_config.sliding_window == 8 and engine.runner.poison
    prompts = [list(range(3, 3 + n)) for n in (29, 18)]  # several windows long; a second one decoding alongside
    ids = [engine.add_request(p, PARAMS) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    got = [done[i].outputs[0].token_ids for i in ids]
    assert got == [hf_greedy(tiny_model_dirs["mistral"], p, PARAMS.max_tokens) for p in prompts]
