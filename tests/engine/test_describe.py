"""describe.speculation (chat's /show line) and the speculative-decoding metrics of /metrics."""

from rusteeze.chat_session import ChatSession
from rusteeze.chat_settings import ChatSettings
from rusteeze.engine.describe import speculation
from rusteeze.sampling import SamplingParams
from rusteeze.server.metrics import ServerMetrics


def test_show_says_whether_speculation_is_on_and_how_it_fares(make_engine):
    assert speculation(make_engine()) == "off"
    engine = make_engine(speculative={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1})
    assert speculation(engine) == "ngram (n 1..4), up to 3 tokens"
    show = ChatSession(engine, ChatSettings()).command("/show").text
    assert "Speculation ngram (n 1..4), up to 3 tokens" in show.splitlines()
    engine.speculator.record(_seq(engine), 4, 3)
    assert speculation(engine) == "ngram (n 1..4), up to 3 tokens; 75% of 4 drafts accepted"


def _seq(engine):
    request = engine.make_request([5, 6, 7], SamplingParams(max_tokens=2))
    return request.seqs[0]


def test_metrics_expose_the_draft_counters_only_with_speculation(make_engine):
    engine = make_engine(speculative={"method": "ngram"})
    engine.speculator.record(_seq(engine), 4, 1)
    metrics = ServerMetrics()
    metrics.attach(engine.stats)
    text = metrics.render().decode()
    assert "rusteeze:spec_decode_num_draft_tokens_total 4.0" in text
    assert "rusteeze:spec_decode_num_accepted_tokens_total 1.0" in text
    assert "rusteeze:spec_decode_num_verify_steps_total 1.0" in text
    plain = ServerMetrics()
    plain.attach(make_engine().stats)
    assert "spec_decode" not in plain.render().decode()
