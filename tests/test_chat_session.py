"""ChatSession, its slash commands, settings and multi-line input, on a tiny random model (no terminal)."""

import dataclasses

import pytest
import torch

from rusteeze.chat_session import ChatSession, MultilineInput, ReplyStats
from rusteeze.chat_settings import CHAT_FALLBACKS, ChatSettings
from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.errors import ConfigError, InvalidRequestError
from rusteeze.sampling import SamplingParams

GREEDY = ChatSettings(temperature=0.0, max_tokens=6)


@pytest.fixture(scope="module")
def engine(tiny_llama_dir):
    torch.set_num_threads(1)
    return Engine(EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu"))


@pytest.fixture
def session(engine):
    return ChatSession(engine, GREEDY, "tiny-llama", "local directory /models/tiny")


def greedy_text(engine, messages, max_tokens=6) -> str:
    request = engine.add_request(None, SamplingParams(temperature=0, max_tokens=max_tokens), messages=messages)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished and out.request_id == request:
                return out.outputs[0].text
    raise AssertionError("no output")


def test_replies_stream_and_the_history_carries_the_conversation(session, engine):
    first = list(session.reply("Hello"))
    assert "".join(first) == greedy_text(engine, [{"role": "user", "content": "Hello"}])
    assert session.history == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "".join(first)}]
    second = "".join(session.reply("And then?"))
    expected = greedy_text(engine, [*session.history[:2], {"role": "user", "content": "And then?"}])
    assert second == expected
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    stats = session.last_stats
    assert (stats.completion_tokens, stats.finish_reason) == (6, "length")
    assert stats.prompt_tokens == len(engine.tokenizer.encode_chat(session.history[:3]))
    assert stats.cached_tokens > 0  # the first exchange's blocks were reused
    assert 0 < stats.ttft <= stats.duration


def test_the_system_prompt_leads_every_request(session):
    session.settings = dataclasses.replace(session.settings, system="Be brief.")
    list(session.reply("Hi"))
    assert session.messages()[0] == {"role": "system", "content": "Be brief."}
    assert session.messages()[1:] == session.history


def test_a_stopped_reply_is_aborted_and_left_out_of_the_history(session, engine):
    free_before = engine.block_manager.num_free_blocks
    session.settings = dataclasses.replace(session.settings, max_tokens=200)
    seen = []
    for delta in session.reply("Tell me a long story", should_stop=lambda: len(seen) >= 2):
        seen.append(delta)
    assert len(seen) == 2
    assert session.history == []
    assert session.last_stats.finish_reason == "abort"
    assert session.last_stats.completion_tokens < 200
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_free_blocks == free_before


def test_on_prefill_reports_a_long_prompt_chunk_by_chunk(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_num_batched_tokens=16)
    session = ChatSession(Engine(config), GREEDY)
    calls = []
    reply = "".join(
        session.reply("The quick brown fox jumps over the lazy dog. " * 4, on_prefill=lambda *a: calls.append(a))
    )
    total = session.last_stats.prompt_tokens
    assert total > 48 and reply
    assert calls == [(done, total) for done in range(0, total, 16)]  # before each step until the first token


def test_leaving_the_stream_early_aborts_the_request(session, engine):
    session.settings = dataclasses.replace(session.settings, max_tokens=200)
    stream = session.reply("Tell me a long story")
    next(stream)
    stream.close()
    assert not engine.has_unfinished_requests()
    assert session.last_stats.finish_reason == "abort"
    assert session.history == []


def test_old_turns_are_dropped_to_fit_the_context(tiny_llama_dir):
    small = Engine(EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_model_len=96))
    session = ChatSession(small, GREEDY)
    for _ in range(4):
        "".join(session.reply("Paris is the capital of France. Berlin is the capital of Germany."))
    assert session.dropped_messages > 0
    assert session.history[-2]["content"].startswith("Paris")
    assert len(small.tokenizer.encode_chat(session.messages())) <= 96


def test_a_message_longer_than_the_context_is_refused(tiny_llama_dir):
    small = Engine(EngineConfig(model=str(tiny_llama_dir), kv_cache_memory="8MiB", device="cpu", max_model_len=32))
    session = ChatSession(small, GREEDY)
    with pytest.raises(InvalidRequestError, match="max_model_len is 32"):
        list(session.reply("The quick brown fox jumps over the lazy dog. " * 4))
    assert session.history == []


def test_set_validates_and_applies(session):
    assert session.command("/set temperature 0.25").text == "Set temperature to 0.25."
    assert session.settings.temperature == 0.25
    assert session.command("/set top_k 5").text == "Set top_k to 5."
    assert session.command("/set seed default").text == "Set seed to default."
    bad = {
        "/set temperature hot": "temperature must be a number, got 'hot'",
        "/set temperature -1": "temperature must be a number >= 0, got -1.0",
        "/set top_p 1.5": "top_p must be in (0, 1], got 1.5",
        "/set max_tokens 0": "max_tokens must be an integer >= 1, got 0",
        "/set top_k 2.5": "top_k must be an integer, got '2.5'",
        "/set colour blue": "cannot set 'colour'; settable: temperature, top_p, top_k, max_tokens, seed",
    }
    for line, message in bad.items():
        result = session.command(line)
        assert (result.is_error, result.text) == (True, message)
    assert session.command("/set").is_error
    assert session.settings.temperature == 0.25  # unchanged by the bad values


def test_show_names_the_model_and_the_effective_parameters(session, tiny_llama_dir):
    session.command("/set top_p 0.5")
    text = session.command("/show").text
    assert text.splitlines()[:5] == [
        "Model       tiny-llama (local directory /models/tiny)",
        f"Path        {tiny_llama_dir}",
        "Arch        LlamaForCausalLM, context 512 tokens",
        "Weights     float32",
        "Compute     cpu, float32 activations, Numba kernels (kernel backend auto)",  # auto: Numba on CPU
    ]
    assert "  temperature 0.0 (set)" in text
    assert "  top_p       0.5 (set)" in text
    assert f"  top_k       {CHAT_FALLBACKS['top_k']} (rusteeze default)" in text
    assert "  max_tokens  6" in text
    assert "System      (none)" in text


@pytest.mark.slow
def test_show_tells_int4_weights_from_float32_activations(smollm2_gguf_path):
    """A Q4_1 GGUF loaded directly used to show as "cpu float32"."""
    config = EngineConfig(model=smollm2_gguf_path, kv_cache_memory="64MiB", device="cpu")
    lines = ChatSession(Engine(config), ChatSettings()).command("/show").text.splitlines()
    assert lines[2:5] == [
        "Arch        LlamaForCausalLM, context 1456 tokens",
        "Weights     int4 (group 32) linear layers, int8 embedding (group 32), float32 norms",
        "Compute     cpu, float32 activations, Numba kernels (kernel backend auto), "
        "int16-rounded inputs in decode matmuls",
    ]
    floats = ChatSession(Engine(config.replace(gguf_direct=False, kernel_backend="torch")), ChatSettings())
    assert floats.command("/show").text.splitlines()[3:5] == [
        "Weights     float32",
        "Compute     cpu, float32 activations, torch ops (kernel backend torch)",
    ]


def test_clear_system_stats_help_and_exit(session):
    assert session.command("/stats").text == "No reply yet."
    list(session.reply("Hi"))
    assert session.command("/stats").text == session.last_stats.summary()
    assert session.command("/system You are terse.").text == "Set the system prompt."
    assert (session.settings.system, session.history) == ("You are terse.", [])  # new system, new conversation
    list(session.reply("Hi"))
    assert session.command("/clear").text == "Cleared the conversation."
    assert session.history == []
    assert "/set PARAMETER VALUE" in session.command("/help").text
    assert session.command("/bye").exit and session.command("/exit").exit
    unknown = session.command("/frobnicate now")
    assert (unknown.is_error, unknown.text) == (True, "Unknown command '/frobnicate'. Type /help for the commands.")


def test_multiline_input_between_triple_quotes():
    m = MultilineInput()
    assert m.feed("plain line") == "plain line"
    assert m.feed('"""one line"""') == "one line"
    assert m.feed('"""') is None and m.active
    assert m.feed("first") is None
    assert m.feed("  second") is None
    assert m.feed('third"""') == "first\n  second\nthird"
    assert not m.active
    assert m.feed('"""start') is None
    m.reset()
    assert not m.active and m.feed("after") == "after"


def test_settings_fall_back_to_the_model_then_to_ours():
    mine = ChatSettings(top_k=7)
    assert mine.sampling_params({}).top_k == 7
    assert ChatSettings().sampling_params({}).temperature == CHAT_FALLBACKS["temperature"]
    from_model = ChatSettings().sampling_params({"temperature": 0.3, "top_p": 0.9})
    assert (from_model.temperature, from_model.top_p, from_model.top_k) == (0.3, 0.9, CHAT_FALLBACKS["top_k"])
    assert ChatSettings().sampling_params({"do_sample": False}).temperature == 0
    assert ChatSettings().origin("temperature", {"temperature": 0.3}) == "model default"


def test_chat_table_of_a_config_file():
    assert ChatSettings.from_table({"system": "Hi", "temperature": 0.1}).temperature == 0.1
    with pytest.raises(ConfigError, match=r"unknown key 'temprature' in \[chat\]"):
        ChatSettings.from_table({"temprature": 0.1}, "my.toml")
    with pytest.raises(ConfigError, match=r"my\.toml: \[chat\] top_p: must be in"):
        ChatSettings.from_table({"top_p": 2}, "my.toml")


def test_reply_stats_summary():
    stats = ReplyStats(
        prompt_tokens=35, cached_tokens=20, completion_tokens=11, ttft=0.5, duration=1.5, finish_reason="stop"
    )
    assert stats.tokens_per_second == 10.0
    assert stats.summary() == "TTFT 0.50 s (35 prompt tokens, 20 cached) · 11 tokens in 1.50 s, 10.0 tokens/s · stop"
    one = dataclasses.replace(stats, completion_tokens=1, cached_tokens=0)
    assert one.tokens_per_second is None
    assert one.summary() == "TTFT 0.50 s (35 prompt tokens) · 1 token in 1.50 s · stop"
