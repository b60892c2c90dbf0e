"""The tokenizer rebuilt from GGUF metadata encodes and decodes exactly as transformers' GGUF tokenizer."""

from __future__ import annotations

import gguf
import pytest

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.loader.gguf_tokenizer import tokenizer_from_gguf

CORPUS = [
    "Hello, world!",
    "What is the capital of France?",
    " leading space and trailing space ",
    "  two leading spaces\tand a tab",
    "line one\nline two\n\n\nthree blank lines\r\nwindows line\r\n",
    "\n\n\n",
    "        eight spaces, then text",
    "Numbers: 0 7 42 1234567890 3.14159 -12e-3 1,000,000",
    "Unicode: naïve café façade Zürich straße ÅÆØ ĳ ﬁ",
    "Greek and Cyrillic: Καλημέρα κόσμε, Привет, мир!",
    "CJK: 你好，世界。日本語のテキスト。한국어 텍스트",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖",
    "RTL: مرحبا بالعالم שלום עולם",
    "Math: ∑_{i=1}^n x_i² ≤ ∞ ≠ √2 ∂f/∂x",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n",
    'for (int i = 0; i < n; ++i) {\n\tprintf("%d\\n", a[i]);\n}',
    '<html><body class="x">&amp; &lt;tag&gt;</body></html>',
    "I'm sure you'll see we've done it, they'd say; it's OK. DON'T SHOUT",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text<|im_end|>",
    "<|im_start|><|im_start|> adjacent specials <repo_name>x<file_sep>",
    "partial specials: <|im_start <|im_end| |>",
    "\u200b zero\u200dwidth \ufeff BOM \u00a0nbsp",
    "a" * 200 + " " + "ab" * 50,
    "",
    " ",
    "🤖" * 5 + "\n" * 4 + "end",
]


def test_encode_matches_transformers(smollm2_tokenizer, hf_smollm2_tokenizer):
    for add_special in (True, False):
        for text in CORPUS:
            want = hf_smollm2_tokenizer.encode(text, add_special_tokens=add_special)
            assert smollm2_tokenizer.encode(text, add_special_tokens=add_special) == want, text


def test_decode_matches_transformers(smollm2_tokenizer, hf_smollm2_tokenizer):
    for text in CORPUS:
        ids = hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
        for skip in (True, False):
            assert smollm2_tokenizer.decode(ids, skip_special_tokens=skip) == hf_smollm2_tokenizer.decode(
                ids, skip_special_tokens=skip
            ), text
        # Byte-level BPE round-trips every text exactly.
        assert smollm2_tokenizer.decode(ids, skip_special_tokens=False) == text


def test_digits_are_split_one_by_one(smollm2_tokenizer):
    # tokenizer.ggml.pre == "smollm": StarCoder's pre-tokenizer isolates each digit.
    ids = smollm2_tokenizer.encode("2024", add_special_tokens=False)
    assert [smollm2_tokenizer.decode([i]) for i in ids] == ["2", "0", "2", "4"]


def test_special_tokens_and_ids(smollm2_tokenizer, hf_smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.vocab_size == 49152 == len(hf_smollm2_tokenizer)
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert tok.eos_token_ids[0] == 2 and 0 in tok.eos_token_ids  # <|endoftext|> also ends generation
    assert tok.add_bos_token is False
    assert tok.encode("hi")[0] != tok.bos_token_id
    assert tok.special_token_ids() == set(hf_smollm2_tokenizer.all_special_ids) | {
        i for i, t in hf_smollm2_tokenizer.added_tokens_decoder.items() if t.special
    }
    assert tok.token_to_id("<|im_end|>") == 2 and tok.id_to_token(2) == "<|im_end|>"
    assert tok.token_to_str(2) == "<|im_end|>"
    assert tok.decode([1, 2]) == "" and tok.decode([1, 2], skip_special_tokens=False) == "<|im_start|><|im_end|>"


def test_chat_template_comes_from_metadata(smollm2_tokenizer, smollm2_gguf_reader):
    assert smollm2_tokenizer.chat_template == smollm2_gguf_reader.fields["tokenizer.chat_template"].contents()
    assert "<|im_start|>" in smollm2_tokenizer.chat_template


# ---------------------------------------------------------------- synthetic GGUF files
SP_PIECES = [
    "▁", "t", "h", "e", "l", "o", "w", "r", "d", "i", "n", "s", "a", "H", "W", "▁t", "he", "▁the", "ll", "llo",
    "▁w", "or", "▁wor", "ld", "▁world", "in", "▁in", "▁▁", "▁▁▁▁", "▁H", "▁He", "▁Hello", "He", "er", "▁a", "▁is",
    "is", "<tool>",
]  # fmt: skip


def write_gguf(path, *, model="llama", tokens=None, types=None, scores=True, merges=None, pre=None, **ids):
    """A GGUF file holding tokenizer metadata (and the llama keys transformers needs for a config), no tensors."""
    if tokens is None:
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
        types = [2, 3, 3] + [6] * 256 + [1] * (len(SP_PIECES) - 1) + [4]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    if model is not None:
        w.add_tokenizer_model(model)
    if tokens:
        w.add_token_list(tokens)
    if types is not None:
        w.add_token_types(types)
    if scores:
        w.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(tokens) - 259)])
    if merges is not None:
        w.add_token_merges(merges)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_bos_token_id(ids.get("bos", 1))
    w.add_eos_token_id(ids.get("eos", 2))
    w.add_unk_token_id(0)
    w.add_chat_template("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def load(path):
    return tokenizer_from_gguf(gguf.GGUFReader(path), path)


SP_CORPUS = ["Hello the world", "  is in the  world", "    He wor", "é ü 你", "The Word", "a<tool>b", "Hello\nworld"]


def test_sentencepiece_vocabulary_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    path = write_gguf(tmp_path / "sp.gguf")
    ours = load(path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="sp.gguf")
    assert ours.add_bos_token and ours.bos_token == "<s>" and ours.eos_token_ids == (2,)
    for text in SP_CORPUS:
        ids = theirs.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True), text
    # Merges follow the scores: "▁Hello" is one piece, "é" falls back to its two UTF-8 bytes.
    assert ours.encode("Hello é", add_special_tokens=False) == [ours.token_to_id("▁Hello"), 259 + 0, 3 + 0xC3, 3 + 0xA9]
    assert ours.decode(ours.encode("é ü 你")) == "é ü 你"
    chat = ours.encode_chat([{"role": "user", "content": "hi"}])
    assert chat[0] == 1 and chat[1] != 1  # the template writes BOS: no second one


def byte_level_gguf(path, pre):
    """A tiny byte-level BPE: the 256 byte characters, digit merges ranked "3 4" < "1 2" < "12 3"."""
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = ["<|endoftext|>", *ByteLevel.alphabet(), "34", "12", "123"]
    types = [3] + [1] * (len(tokens) - 1)
    return write_gguf(
        path,
        model="gpt2",
        tokens=tokens,
        types=types,
        scores=False,
        merges=["3 4", "1 2", "12 3"],
        pre=pre,
        bos=0,
        eos=0,
    )


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("default", ["12", "34"]),  # GPT-2 regex: "1234" is one word, best-ranked merge first
        ("llama-bpe", ["123", "4"]),  # llama3 regex: numbers in runs of at most three digits
        ("smollm", ["1", "2", "3", "4"]),  # StarCoder family: every digit alone
    ],
)
def test_pre_tokenizer_follows_ggml_pre(tmp_path, pre, pieces):
    path = byte_level_gguf(tmp_path / "bl.gguf", pre)
    ours = load(path)
    ids = ours.encode("1234")
    assert [ours.decode([i]) for i in ids] == pieces
    assert ours.encode("x<|endoftext|>y") == [ours.token_to_id("x"), 0, ours.token_to_id("y")]
    assert ours.decode(ours.encode(" 12 ü\n")) == " 12 ü\n"
    if pre != "smollm":  # transformers' GGUF conversion ignores "smollm"; llama.cpp and SmolLM's tokenizer.json do not
        transformers = pytest.importorskip("transformers")
        theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bl.gguf")
        assert theirs.encode("1234") == ids


def test_missing_tokens_names_the_key(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", tokens=[], types=None, scores=False)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.tokens") as e:
        load(path)
    assert "x.gguf" in str(e.value)


def test_missing_model_names_the_key(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", model=None)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.model"):
        load(path)


def test_unsupported_tokenizer_type(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", model="bert")
    with pytest.raises(UnsupportedModelError, match=r"'bert'.*tokenizer\.ggml\.model"):
        load(path)


def test_gpt2_without_merges(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", model="gpt2")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.merges"):
        load(path)


def test_bad_merge_entry(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", model="gpt2", merges=["a b", "abc"])
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.merges.*'abc'"):
        load(path)


def test_merge_of_unknown_tokens(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", model="gpt2", merges=["zz qq"])
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.tokens'/'\.merges' disagree"):
        load(path)


def test_eos_id_out_of_range(tmp_path):
    path = write_gguf(tmp_path / "x.gguf", eos=10_000)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.eos_token_id.*10000"):
        load(path)


def test_token_type_count_mismatch(tmp_path):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + SP_PIECES
    path = write_gguf(tmp_path / "x.gguf", tokens=tokens, types=[1] * 5)
    with pytest.raises(ModelLoadError, match=r"tokenizer\.ggml\.token_type"):
        load(path)
