"""--speculative, --draft-model and --num-speculative-tokens: into the [speculative] table, errors name the flag."""

import pytest
import torch
from typer.testing import CliRunner

from rusteeze.commands.main import app
from rusteeze.commands.options import engine_config
from rusteeze.engine.spec_decode.config import SpeculativeConfig
from rusteeze.errors import ConfigError


def test_flags_fill_and_override_the_table(tmp_path):
    assert engine_config(None)[0].speculative is None
    assert engine_config(None, speculative="ngram")[0].speculative == SpeculativeConfig()
    path = tmp_path / "r.toml"
    path.write_text("[speculative]\nmethod = 'ngram'\nprompt_lookup_max = 6\n")
    spec = engine_config(None, path, num_speculative_tokens=7)[0].speculative
    assert spec == SpeculativeConfig(num_speculative_tokens=7, prompt_lookup_max=6)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"speculative": "eagle"}, "--speculative 'eagle' is not valid; use one of: ngram, draft"),
        ({"speculative": "ngram", "num_speculative_tokens": 0}, "--num-speculative-tokens 0 must be between 1 and 16"),
        ({"num_speculative_tokens": 3}, "--num-speculative-tokens needs --speculative ngram"),
        ({"speculative": "ngram", "draft_model": "m"}, "--draft-model is only used with method = 'draft'"),
    ],
)
def test_bad_flags_are_config_errors_naming_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message):
        engine_config(None, **flags)


def test_chat_with_speculation_answers_and_bad_flags_are_one_line(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTEEZE_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)
    base = ["chat", str(tiny_llama_dir), "-p", "Hello", "--temperature", "0", "--max-tokens", "4", "--device", "cpu"]
    ok = CliRunner().invoke(app, [*base, "--speculative", "ngram", "--num-speculative-tokens", "3"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(app, [*base, "--speculative", "eagle"])
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines()[-1] == "Error: --speculative 'eagle' is not valid; use one of: ngram, draft"
