"""Speculator: eligibility, draft limits, adaptive back-off and counters; SpeculativeConfig validation."""

import pytest

from rusteeze.config import EngineConfig, load_config_file
from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.engine.spec_decode.speculator import MIN_ACCEPTANCE, PAUSE, WINDOW, Speculator
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
    spec = Speculator(SpeculativeConfig(num_speculative_tokens=3))
    plain, near_end = decoding(seq_id=0), decoding(seq_id=1, max_tokens=12)  # 10 of 12 generated
    prefill = decoding(seq_id=2)
    prefill.num_computed_tokens = 3
    penalized = decoding(seq_id=3, presence_penalty=0.5)
    waiting_min = decoding(seq_id=4, min_tokens=20)
    drafts = spec.propose([plain, near_end, prefill, penalized, waiting_min])
    assert drafts == {0: [5, 6, 7], 1: [5]}  # 10 + 1 draft + 1 bonus = max_tokens


def test_low_acceptance_pauses_a_sequence_then_it_retries():
    spec = Speculator(SpeculativeConfig())
    seq = decoding()
    for _ in range(WINDOW):
        assert seq.seq_id in spec.propose([seq])
        spec.record(seq, 4, int(4 * MIN_ACCEPTANCE) - 1)
    for _ in range(PAUSE):
        assert spec.propose([seq]) == {}
    assert seq.seq_id in spec.propose([seq])
    good = decoding(seq_id=1)
    for _ in range(3 * WINDOW):
        assert good.seq_id in spec.propose([good])
        spec.record(good, 4, 3)
    s = spec.stats()
    assert s["spec_decode_num_draft_tokens"] == 4 * 4 * WINDOW
    assert s["spec_decode_num_verify_steps"] == 4 * WINDOW
    assert s["spec_decode_mean_accepted_length"] == pytest.approx(
        1 + s["spec_decode_num_accepted_tokens"] / (4 * WINDOW)
    )


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"method": "eagle"}, "speculative.method"),
        ({"num_speculative_tokens": 0}, "speculative.num_speculative_tokens"),
        ({"prompt_lookup_min": 4, "prompt_lookup_max": 2}, "speculative.prompt_lookup_min"),
        ({"lookup_max": 3}, "'lookup_max'"),
        ({"method": "draft", "draft_model": "x"}, "speculative.method = 'draft'"),
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
