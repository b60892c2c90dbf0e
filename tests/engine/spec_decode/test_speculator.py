"""Speculator: eligibility, draft limits, adaptive back-off and counters; SpeculativeConfig validation."""

import pytest

from rusteeze.config import EngineConfig, load_config_file
from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.engine.spec_decode.speculator import PAUSE, WINDOW, Speculator, best_num_drafts
from rusteeze.errors import ConfigError
from rusteeze.sampling import SamplingParams

REPEATS = [3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 3, 4]  # tail [3 4] continues with 5 6 7 3


def decoding(tokens=REPEATS, seq_id=0, **params) -> Sequence:
    """A running sequence with one uncomputed token (its last)."""
    p = SamplingParams(**({"temperature": 0, "max_tokens": 50} | params)).resolve({})
    seq = Sequence("r", tokens[:2], p)
    seq.token_ids = list(tokens)
    seq.num_computed_tokens = len(tokens) - 1
    seq.seq_id = seq_id
    return seq


def test_proposes_for_eligible_decodes_within_max_tokens():
    spec = Speculator(SpeculativeConfig(num_speculative_tokens=3), fixed_cost_tokens=256)  # a GPU's cost model
    plain, near_end = decoding(seq_id=0), decoding(seq_id=1, max_tokens=12)  # 10 of 12 generated
    prefill = decoding(seq_id=2)
    prefill.num_computed_tokens = 3
    penalized = decoding(seq_id=3, presence_penalty=0.5)
    waiting_min = decoding(seq_id=4, min_tokens=20)
    drafts = spec.propose([plain, near_end, prefill, penalized, waiting_min])
    assert drafts == {0: [5, 6, 7], 1: [5]}  # 10 + 1 draft + 1 bonus = max_tokens


def test_low_acceptance_pauses_a_sequence_then_it_retries():
    spec = Speculator(SpeculativeConfig(), fixed_cost_tokens=0.5)  # a CPU's cost model
    seq = decoding()
    attempts = 0  # rejected drafts: the estimate of the acceptance falls until drafting stops paying
    while (drafts := spec.propose([seq])) and attempts < 5:
        spec.record(seq, len(drafts[seq.seq_id]), 0)
        attempts += 1
    assert attempts == 3  # MIN_EVIDENCE proposals; the step that returned no drafts began the pause
    for _ in range(PAUSE):
        assert spec.propose([seq]) == {}
    assert seq.seq_id in spec.propose([seq])
    good = decoding(seq_id=1)
    sizes = []
    for _ in range(WINDOW):
        drafts = spec.propose([good])[good.seq_id]
        spec.record(good, len(drafts), len(drafts))
        sizes.append(len(drafts))
    assert sizes == sorted(sizes) and sizes[0] < 4 == sizes[-1]  # all accepted: more drafts, up to k
    s = spec.stats()
    assert s["spec_decode_acceptance_rate"] == s["spec_decode_num_accepted_tokens"] / s["spec_decode_num_draft_tokens"]
    steps = s["spec_decode_num_verify_steps"]
    assert s["spec_decode_mean_accepted_length"] == pytest.approx(1 + s["spec_decode_num_accepted_tokens"] / steps)


def test_the_cost_model_drafts_only_where_it_pays():
    assert best_num_drafts(0.95, beta=0.01, k_max=4) == 4  # GPU, one sequence: weight reads dominate
    assert best_num_drafts(0.3, beta=0.01, k_max=4) >= 1
    assert best_num_drafts(0.98, beta=0.67, k_max=4) >= 3  # CPU, one sequence, text being repeated
    assert best_num_drafts(0.4, beta=0.67, k_max=4) == 0  # CPU, free chat
    assert best_num_drafts(0.98, beta=0.99, k_max=4) == 0  # CPU, a big batch: every token costs the same
    assert best_num_drafts(0.99, beta=0.01, k_max=1) == 1


def test_a_big_cpu_batch_does_not_draft():
    spec = Speculator(SpeculativeConfig(), fixed_cost_tokens=0.5)
    batch = [decoding(seq_id=i) for i in range(64)]
    assert spec.propose(batch) == {}


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"method": "eagle"}, "speculative.method"),
        ({"num_speculative_tokens": 0}, "speculative.num_speculative_tokens"),
        ({"prompt_lookup_min": 4, "prompt_lookup_max": 2}, "speculative.prompt_lookup_min"),
        ({"lookup_max": 3}, "'lookup_max'"),
        ({"method": "draft"}, "speculative.method = 'draft' needs speculative.draft_model"),
        ("ngram", "speculative = 'ngram'"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_field(value, names):
    with pytest.raises(ConfigError, match=names):
        EngineConfig(speculative=value)


def test_toml_table_and_keyword(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('max_num_seqs = 4\n[speculative]\nmethod = "ngram"\nnum_speculative_tokens = 3\n')
    cfg, _ = load_config_file(path)
    assert cfg.speculative == SpeculativeConfig(num_speculative_tokens=3)
    assert EngineConfig().speculative is None
    assert cfg.replace(max_num_seqs=2).speculative == cfg.speculative
