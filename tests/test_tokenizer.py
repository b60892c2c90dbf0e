"""Tokenizer: chat templates as transformers renders them, from_dir, incremental detokenizing, stop strings."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rusteeze.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError, UnsupportedModelError
from rusteeze.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer, render_chat_template

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CHATS = {
    "user only": [{"role": "user", "content": "What is the capital of France?"}],
    "with system": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
    ],
    "multi-turn": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi! 👋"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Write  code:\n```py\nprint('x')\n```"},
    ],
    "assistant last": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
}


# ---------------------------------------------------------------- chat templates
@pytest.mark.parametrize("name", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_like_transformers(smollm2_tokenizer, hf_smollm2_tokenizer, name, add_generation_prompt):
    messages = CHATS[name]
    want = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == want
    want_ids = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt
    )["input_ids"]
    assert smollm2_tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt) == want_ids


FEATURE_TEMPLATE = """\
{{ bos_token }}
{% set ns = namespace(n=0) %}
{% if tools %}
Tools: {{ tools | tojson }}
Pretty: {{ tools[0] | tojson(indent=2) }}
{% endif %}
{% for m in messages %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
    {% if m.role == 'stop' %}{% break %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    <{{ m.role }}>{{ m.content if m.content is defined else '(none)' }}
    {%- if m.reasoning_content is defined %} [thought: {{ m.reasoning_content }}]{% endif %}
    {% generation %}{{ eos_token }}{% endgeneration %}
{% endfor %}
count={{ ns.n }} year={{ strftime_now('%Y') | length }} extra={{ extra_var | default('-') }}
{% if add_generation_prompt %}<assistant>{% endif %}
"""

FEATURE_MESSAGES = [
    {"role": "system", "content": 'Answer with <b>bold</b> & "quotes"'},
    {"role": "skip", "content": "ignored"},
    {"role": "user", "content": "naïve 😀 你好", "name": None},
    {"role": "assistant", "content": None, "thinking": "hmm", "tool_calls": None},
    {"role": "stop", "content": "never shown"},
    {"role": "user", "content": "after stop"},
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter für <Stadt> & Umgebung"}}]


@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_template_features_render_like_transformers(
    smollm2_tokenizer, hf_smollm2_tokenizer, tools, add_generation_prompt
):
    kwargs = {"tools": tools, "add_generation_prompt": add_generation_prompt, "extra_var": "x"}
    want = hf_smollm2_tokenizer.apply_chat_template(
        FEATURE_MESSAGES, chat_template=FEATURE_TEMPLATE, tokenize=False, **kwargs
    )
    got = smollm2_tokenizer.apply_chat_template(FEATURE_MESSAGES, chat_template=FEATURE_TEMPLATE, **kwargs)
    assert got == want
    assert got.startswith("<|im_start|>") and "[thought: hmm]" in got and "(none)" in got
    assert "never shown" not in got and "<b>bold</b>" in got
    assert ("Wetter für <Stadt> & Umgebung" in got) == (tools is not None)  # tojson escapes no HTML, no non-ASCII


def test_render_chat_template_directly():
    out = render_chat_template(
        "{{ messages[0].content }}{{ bos_token }}", [{"role": "u", "content": "é"}], bos_token="B"
    )
    assert out == "éB"


def test_tokenizer_passes_special_tokens_and_kwargs(smollm2_tokenizer):
    template = "{{ bos_token }}|{{ eos_token }}|{{ unk_token }}|{{ custom }}|{{ tools | length }}"
    out = smollm2_tokenizer.apply_chat_template([], chat_template=template, custom=7, tools=[{"a": 1}])
    assert out == "<|im_start|>|<|im_end|>|<|endoftext|>|7|1"


def test_raise_exception_is_an_invalid_request(smollm2_tokenizer):
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}"
    )
    with pytest.raises(InvalidRequestError, match="first message must be from the user") as e:
        smollm2_tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}], chat_template=template)
    assert e.value.param == "messages"


def test_template_errors_are_typed(smollm2_tokenizer):
    broken = Tokenizer(smollm2_tokenizer.backend, chat_template="{% for m in messages %}")
    with pytest.raises(UnsupportedModelError, match="model's chat template does not parse"):
        broken.apply_chat_template([])
    with pytest.raises(InvalidRequestError, match="given chat template does not parse") as e:  # the caller's
        smollm2_tokenizer.apply_chat_template([], chat_template="{% for m in messages %}")
    assert e.value.param == "chat_template"
    with pytest.raises(InvalidRequestError, match="chat template failed"):  # the sandbox blocks internals
        smollm2_tokenizer.apply_chat_template([], chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        smollm2_tokenizer.apply_chat_template([], chat_template="{% set ns = namespace(_x=1) %}")
    with pytest.raises(InvalidRequestError, match="chat template failed"):  # content as a list in a str template
        smollm2_tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    with pytest.raises(InvalidRequestError, match=r"messages\[1\] must be a dict"):
        smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "x"}, "oops"])
    with pytest.raises(InvalidRequestError, match="must be a list"):
        smollm2_tokenizer.apply_chat_template("hello")


def test_rendering_is_bounded(monkeypatch):
    import rusteeze.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "MAX_RENDERED_CHARS", 1000)
    monkeypatch.setattr(tokenizer_module, "MAX_TEMPLATE_OPERATIONS", 5000)
    assert render_chat_template("{% for i in range(99) %}{{ 'y' * 10 }}{% endfor %}", []) == "y" * 990
    cases = {
        "{% for i in range(100000) %}{{ 'y' * 10 }}{% endfor %}": "rendered more than 1000 characters",
        "{{ ('x' * 10**12) | length }}": "larger than 1000",  # refused before allocating a terabyte
        "{{ ([1] * 10**12) | length }}": "larger than 1000",
        "{% set s = 'x' * 999 %}{{ (s + s) | length }}": "larger than 1000",
        "{{ 7 ** (10 ** 12) }}": "larger than 1000",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": "more than 5000 operations",
        "{{ ''.__class__.__mro__ }}": "unsafe",
    }
    for template, message in cases.items():
        with pytest.raises(InvalidRequestError, match=message) as e:
            render_chat_template(template, [{"role": "user", "content": "hi"}])
        assert e.value.param == "messages"


def test_template_variables_named_like_arguments_are_plain_variables(smollm2_tokenizer):
    template = "{{ template }}|{{ messages | length }}|{{ add_generation_prompt }}"  # `self` is jinja's own
    kwargs = {"self": "S", "template": "T", "messages": "ignored", "chat_template": template}
    out = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], **kwargs)
    assert out == "T|1|True"
    assert smollm2_tokenizer.encode_chat([{"role": "user", "content": "hi"}], **kwargs)


def test_no_chat_template_is_a_clear_error(smollm2_tokenizer):
    plain = Tokenizer(smollm2_tokenizer.backend, bos_token="<|im_start|>", eos_token="<|im_end|>")
    with pytest.raises(InvalidRequestError, match="no chat template") as e:
        plain.encode_chat([{"role": "user", "content": "hi"}])
    assert e.value.param == "messages"


def test_named_templates_pick_tool_use(smollm2_tokenizer):
    tok = Tokenizer(
        smollm2_tokenizer.backend, chat_template={"default": "plain", "tool_use": "tools={{ tools|length }}"}
    )
    assert tok.chat_template == "plain"
    assert tok.apply_chat_template([]) == "plain"
    assert tok.apply_chat_template([], tools=[{"x": 1}]) == "tools=1"


# ---------------------------------------------------------------- BOS handling
def test_bos_prepended_once(smollm2_tokenizer):
    bos = smollm2_tokenizer.bos_token_id
    tok = Tokenizer(
        smollm2_tokenizer.backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        add_bos_token=True,
        chat_template="{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    )
    assert tok.encode("hi") == [bos, *smollm2_tokenizer.encode("hi")]
    assert tok.encode("hi", add_special_tokens=False) == smollm2_tokenizer.encode("hi")
    assert tok.encode_chat([{"role": "user", "content": "hi"}]) == [bos, *smollm2_tokenizer.encode("hi")]
    no_bos_template = Tokenizer(
        smollm2_tokenizer.backend, bos_token="<|im_start|>", add_bos_token=True, chat_template="x"
    )
    assert no_bos_template.encode_chat([]) == [bos, *smollm2_tokenizer.encode("x")]


def test_decode_rejects_out_of_range_ids(smollm2_tokenizer):
    with pytest.raises(InvalidRequestError, match="49152"):
        smollm2_tokenizer.decode([1, 49152])
    with pytest.raises(InvalidRequestError):
        smollm2_tokenizer.decode([-1])


# ---------------------------------------------------------------- from_dir
@pytest.fixture(scope="session")
def saved_tokenizer_dir(hf_smollm2_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tokenizer")
    hf_smollm2_tokenizer.save_pretrained(path)
    return path


def test_from_dir_matches_transformers(saved_tokenizer_dir, hf_smollm2_tokenizer):
    tok = Tokenizer.from_dir(saved_tokenizer_dir)
    assert (tok.bos_token, tok.eos_token, tok.eos_token_ids, tok.vocab_size) == (
        "<|im_start|>",
        "<|im_end|>",
        (2,),
        49152,
    )
    for text in ["Hello, world!", "  spaces\n\n\ttab", "naïve 你好 😀👍🏽", "<|im_start|>user\nx<|im_end|>", ""]:
        ids = hf_smollm2_tokenizer.encode(text)
        assert tok.encode(text) == ids, text
        assert tok.decode(ids) == hf_smollm2_tokenizer.decode(ids, skip_special_tokens=True)
    for messages in CHATS.values():
        assert tok.apply_chat_template(messages) == hf_smollm2_tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def test_from_dir_reads_added_token_dicts_and_generation_config(saved_tokenizer_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(saved_tokenizer_dir, d)
    (d / "chat_template.jinja").unlink()
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["bos_token"] = {"__type": "AddedToken", "content": "<|im_start|>", "lstrip": False, "special": True}
    config["add_bos_token"] = True
    config["chat_template"] = [
        {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T"},
    ]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_dir(d)
    assert tok.bos_token == "<|im_start|>" and tok.add_bos_token
    assert tok.eos_token_ids == (2, 0)
    assert tok.encode("hi")[0] == 1
    assert tok.encode_chat([{"role": "user", "content": "hi"}]) == tok.encode("hi")  # one BOS, from the template
    assert tok.apply_chat_template([], tools=[{}]) == "T"


def test_from_dir_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_dir(tmp_path)


def test_from_dir_bad_config(saved_tokenizer_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(saved_tokenizer_dir, d)
    (d / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json"):
        Tokenizer.from_dir(d)


# ---------------------------------------------------------------- incremental detokenizer
def stream(tokenizer, ids, chunks, prompt_ids=(), skip_special_tokens=True):
    """Feed `ids` in chunks of the given sizes; return the deltas (flush last)."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas, i = [], 0
    for n in chunks:
        if i >= len(ids):
            break
        deltas.append(detok.add(ids[i : i + n]))
        i += n
    if i < len(ids):
        deltas.append(detok.add(ids[i:]))
    deltas.append(detok.flush())
    return deltas


# Favour the ids that matter: specials (0-16), single bytes / short pieces (< 300), and the rest.
token_ids = st.one_of(st.integers(0, 16), st.integers(17, 300), st.integers(0, 49151))
chunk_sizes = st.lists(st.integers(1, 4), max_size=40)


@PROPERTY
@given(
    ids=st.lists(token_ids, max_size=40), prompt=st.lists(token_ids, max_size=8), chunks=chunk_sizes, skip=st.booleans()
)
def test_deltas_join_to_decode_of_random_ids(smollm2_tokenizer, ids, prompt, chunks, skip):
    deltas = stream(smollm2_tokenizer, ids, chunks, prompt, skip_special_tokens=skip)
    assert "".join(deltas) == smollm2_tokenizer.decode(ids, skip_special_tokens=skip)


texts = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_characters="\ufffd"),
        st.sampled_from(["😀", "👨‍👩‍👧", "你好", "é", "\n", " ", "  ", "<|im_end|>", "🇫🇷", "ق", "\t\n "]),
    ),
    max_size=30,
).map("".join)


@PROPERTY
@given(text=texts, chunks=chunk_sizes)
def test_no_broken_characters_mid_stream(smollm2_tokenizer, text, chunks):
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    deltas = stream(smollm2_tokenizer, ids, chunks, skip_special_tokens=False)
    full = smollm2_tokenizer.decode(ids, skip_special_tokens=False)
    assert "".join(deltas) == full
    # SmolLM2's vocabulary lacks a few bytes (0xF1, 0xF2, some controls): those characters are lost.
    if "\ufffd" not in full:
        assert full == text or any(ord(c) >= 0x40000 or ord(c) < 0x20 for c in text)
        for d in deltas:
            assert "\ufffd" not in d  # every multi-byte character arrives whole


def test_split_emoji_is_held_back(smollm2_tokenizer):
    ids = smollm2_tokenizer.encode("a🤖", add_special_tokens=False)
    assert len(ids) >= 3  # "a" + the emoji's bytes over several tokens
    detok = IncrementalDetokenizer(smollm2_tokenizer)
    assert detok.add(ids[:1]) == "a"
    assert [detok.add([i]) for i in ids[1:-1]] == [""] * (len(ids) - 2)
    assert detok.add(ids[-1:]) == "🤖"
    assert detok.flush() == ""


def test_truncated_character_comes_out_on_flush(smollm2_tokenizer):
    ok = smollm2_tokenizer.encode("ok ", add_special_tokens=False)
    ids = ok + smollm2_tokenizer.encode("🤖", add_special_tokens=False)[:-1]
    assert len(ids) > len(ok)
    detok = IncrementalDetokenizer(smollm2_tokenizer)
    assert detok.add(ok) == "ok "
    assert detok.add(ids[len(ok) :]) == ""
    rest = detok.flush()
    assert rest == smollm2_tokenizer.decode(ids)[len("ok ") :]
    assert rest.startswith("\ufffd")
    assert detok.flush() == ""


def test_prompt_context_keeps_the_leading_space(smollm2_tokenizer):
    prompt = smollm2_tokenizer.encode("The capital of France is")
    gen = smollm2_tokenizer.encode(" Paris.", add_special_tokens=False)
    assert "".join(stream(smollm2_tokenizer, gen, [1] * len(gen), prompt)) == " Paris."


# ---------------------------------------------------------------- stop strings
def run_matcher(stops, deltas):
    m = StopStringMatcher(stops)
    out, hit = [], False
    for d in deltas:
        text, hit = m.feed(d)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    return "".join(out), hit


def expected(stops, text):
    """The stop string that completes first wins; on a tie, the one that starts first."""
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    return (text[: min(hits)[1]], True) if hits else (text, False)


@PROPERTY
@given(
    text=st.text(alphabet="abc\n", max_size=30),
    stops=st.lists(st.text(alphabet="abc\n", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_stop_strings_on_any_split(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert run_matcher(stops, deltas) == expected(stops, text)


STOPS = ["\n\nUser:", "The end.", "🤖🤖", "是的，", "</answer>"]


@PROPERTY
@given(before=texts, stop=st.sampled_from(STOPS), after=texts, chunks=chunk_sizes)
def test_stop_spanning_tokens_is_never_emitted(smollm2_tokenizer, before, stop, after, chunks):
    assert len(smollm2_tokenizer.encode(stop, add_special_tokens=False)) >= 2
    text = before + stop + after
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    deltas = stream(smollm2_tokenizer, ids, chunks, skip_special_tokens=False)
    emitted, hit = run_matcher([stop], deltas)
    full = smollm2_tokenizer.decode(ids, skip_special_tokens=False)  # == text unless a byte is missing
    assert hit
    assert emitted == full[: full.find(stop)]
    assert stop not in emitted


def test_stop_matcher_details():
    m = StopStringMatcher(["abc", "bcd"])
    assert m.feed("xab") == ("x", False)  # "ab" might start "abc"
    assert m.feed("c tail") == ("", True)
    assert m.matched == "abc"
    assert m.feed("more") == ("", True)
    assert m.flush() == ""
    m = StopStringMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    assert m.feed("OP!") == ("", True)
    m = StopStringMatcher(["xyz"])
    assert m.feed("abcx") == ("abc", False)
    assert m.flush() == "x"
    with pytest.raises(InvalidRequestError, match="non-empty"):
        StopStringMatcher(["ok", ""])
