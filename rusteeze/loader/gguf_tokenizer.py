"""Rebuild a model's tokenizer from a GGUF file's `tokenizer.*` metadata.

A GGUF file carries no tokenizer.json: llama.cpp stores the vocabulary
(`tokenizer.ggml.tokens`, `.token_type`, `.scores`), the BPE merges, the special
token ids and the chat template as metadata. We rebuild the equivalent
`tokenizers.Tokenizer`, following llama.cpp (which wrote the file) and
transformers' GGUF conversion (our test oracle):

- `tokenizer.ggml.model == "gpt2"`: byte-level BPE. The split regex depends on
  `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer type): GPT-2's own regex by
  default, digits split one by one first for the StarCoder family (SmolLM),
  llama3 / qwen2 / tekken / gpt-4o regexes for those families.
- `tokenizer.ggml.model == "llama"`: SentencePiece-style BPE with byte fallback
  (`<0x41>` tokens), merges rebuilt from the scores when the file has none, a
  "▁" prefix space when `tokenizer.ggml.add_space_prefix` (default true).

Token types (llama.cpp's `llama_token_type`): 1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte. Control and unknown tokens become special
added tokens (matched whole, skipped when decoding with skip_special_tokens);
user-defined ones become plain added tokens (matched whole, always decoded).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import gguf
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from rusteeze.errors import ModelLoadError, UnsupportedModelError
from rusteeze.tokenizer import END_OF_TURN_TOKENS, Tokenizer

__all__ = ["tokenizer_from_gguf"]

logger = logging.getLogger(__name__)

TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# `tokenizer.ggml.pre` → the regex the merges were learned with (llama.cpp's llama-vocab.cpp).
_PRE_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe", "lfm2"), _LLAMA3_SPLIT
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4"), _GPT4O_SPLIT),
}
# GPT-2's regex, after splitting every digit on its own (StarCoder's tokenizer and its heirs).
_DIGIT_PRES = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})
# llama.cpp's llama3 pre-tokenizer also takes a whole word found in the vocabulary before merging.
_IGNORE_MERGES_PRES = frozenset({"llama3", "llama-v3", "llama-bpe"})


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class _Metadata:
    """Typed access to GGUF metadata fields, with errors that name the file and the key."""

    def __init__(self, reader: gguf.GGUFReader, path: str | os.PathLike[str]) -> None:
        self.reader, self.path = reader, os.fspath(path)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            if required:
                raise ModelLoadError(f"{self.path}: GGUF metadata key {key!r} is missing (needed for the tokenizer)")
            return default
        try:
            value = field.contents()
        except Exception as e:  # gguf raises assorted errors on corrupt fields
            raise ModelLoadError(f"{self.path}: GGUF metadata key {key!r} cannot be read: {e}") from e
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ModelLoadError(f"{self.path}: GGUF metadata key {key!r} should be {want}, got {type(value).__name__}")
        return value

    def token_id(self, key: str, n_tokens: int) -> int | None:
        value = self.get(key, int)
        if value is not None and not 0 <= value < n_tokens:
            raise ModelLoadError(f"{self.path}: GGUF metadata key {key!r} = {value} is not a token id (< {n_tokens})")
        return value


def tokenizer_from_gguf(reader: gguf.GGUFReader, path: str | os.PathLike[str]) -> Tokenizer:
    """Build the :class:`~rusteeze.tokenizer.Tokenizer` a GGUF file describes.

    Args:
        reader: an open `gguf.GGUFReader` of the file.
        path: the file's path, for error messages.

    Returns:
        The tokenizer, with BOS/EOS, `add_bos_token`, every end-of-turn id in
        `eos_token_ids` and the chat template(s) from `tokenizer.chat_template*`.

    Raises:
        UnsupportedModelError: `tokenizer.ggml.model` is a type rusteeze cannot rebuild.
        ModelLoadError: a needed key is missing, has the wrong type, or is inconsistent.
    """
    meta = _Metadata(reader, path)
    kind = meta.get("tokenizer.ggml.model", str, required=True)
    tokens = meta.get("tokenizer.ggml.tokens", list, required=True)
    n = len(tokens)
    if n == 0 or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"{meta.path}: GGUF metadata key 'tokenizer.ggml.tokens' must be a non-empty string list")
    types = meta.get("tokenizer.ggml.token_type", list, default=[1] * n)
    if len(types) != n:
        raise ModelLoadError(
            f"{meta.path}: GGUF metadata key 'tokenizer.ggml.token_type' has {len(types)} entries for {n} tokens"
        )
    unk_id = meta.token_id("tokenizer.ggml.unknown_token_id", n)

    if kind == "gpt2":
        backend, spelled = _byte_level_bpe(meta, tokens)
        add_bos_default = False
    elif kind == "llama":
        backend = _sentencepiece_bpe(meta, tokens, None if unk_id is None else tokens[unk_id])
        spelled = tokens
        add_bos_default = True
    else:
        raise UnsupportedModelError(
            f"{meta.path}: tokenizer type {kind!r} (GGUF key 'tokenizer.ggml.model') is not supported; "
            "supported: 'gpt2' (byte-level BPE), 'llama' (SentencePiece BPE)"
        )
    _add_special_tokens(backend, tokens, types, spelled, byte_level=kind == "gpt2")

    bos_id = meta.token_id("tokenizer.ggml.bos_token_id", n)
    eos_id = meta.token_id("tokenizer.ggml.eos_token_id", n)
    pad_id = meta.token_id("tokenizer.ggml.padding_token_id", n)
    extra_eos = [i for i in (meta.token_id(f"tokenizer.ggml.{k}_token_id", n) for k in ("eot", "eom")) if i is not None]
    extra_eos += [
        i
        for i, (t, ty) in enumerate(zip(tokens, types, strict=True))
        if ty == TOKEN_CONTROL and t in END_OF_TURN_TOKENS
    ]

    templates = {"default": meta.get("tokenizer.chat_template", str)}
    for key in reader.fields:
        if key.startswith("tokenizer.chat_template."):
            templates[key.removeprefix("tokenizer.chat_template.")] = meta.get(key, str)
    if templates["default"] is None:
        del templates["default"]

    def text(i: int | None) -> str | None:
        return None if i is None else tokens[i]

    return Tokenizer(
        backend,
        bos_token=text(bos_id),
        eos_token=text(eos_id),
        unk_token=text(unk_id),
        pad_token=text(pad_id),
        add_bos_token=meta.get("tokenizer.ggml.add_bos_token", bool, default=add_bos_default),
        chat_template=templates or None,
        extra_eos_token_ids=extra_eos,
    )


def _merges(meta: _Metadata) -> list[tuple[str, str]] | None:
    merges = meta.get("tokenizer.ggml.merges", list)
    if merges is None:
        return None
    out = []
    for m in merges:
        parts = m.split(" ") if isinstance(m, str) else ()
        if len(parts) != 2:
            raise ModelLoadError(f"{meta.path}: GGUF metadata key 'tokenizer.ggml.merges' has a bad entry {m!r}")
        out.append((parts[0], parts[1]))
    return out


def _bpe(meta: _Metadata, **kwargs: Any) -> models.BPE:
    try:
        return models.BPE(**kwargs)
    except Exception as e:  # the Rust side raises a plain Exception, e.g. a merge of unknown tokens
        raise ModelLoadError(f"{meta.path}: GGUF metadata keys 'tokenizer.ggml.tokens'/'.merges' disagree: {e}") from e


def _byte_level_bpe(meta: _Metadata, tokens: list[str]) -> tuple[Backend, list[str]]:
    """GPT-2 style BPE; returns the backend and each token as the vocabulary spells it."""
    table = _bytes_to_unicode()
    alphabet = set(table.values())
    # Tokens are stored in the byte alphabet; a few files store an added token as raw text.
    spelled = [t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8")) for t in tokens]
    merges = _merges(meta)
    if merges is None:
        raise ModelLoadError(f"{meta.path}: GGUF metadata key 'tokenizer.ggml.merges' is missing (needed for 'gpt2')")
    pre = meta.get("tokenizer.ggml.pre", str, default="default")
    bpe = _bpe(
        meta,
        vocab={t: i for i, t in enumerate(spelled)},
        merges=merges,
        fuse_unk=False,
        byte_fallback=False,
        ignore_merges=pre in _IGNORE_MERGES_PRES,
    )
    backend = Backend(bpe)
    if pre in _PRE_SPLITS:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _DIGIT_PRES:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        if pre not in ("default", "gpt2", "gpt-2"):
            logger.warning("%s: pre-tokenizer %r unknown to rusteeze; using GPT-2's split", meta.path, pre)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend, spelled


def _sentencepiece_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best-scoring merged token first (the order transformers' `generate_merges` gives)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    score = dict(zip(tokens, scores, strict=True))
    merges = []
    for merged, s in score.items():
        local = [
            (merged[:k], merged[k:], s) for k in range(1, len(merged)) if merged[:k] in vocab and merged[k:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _sentencepiece_bpe(meta: _Metadata, tokens: list[str], unk: str | None) -> Backend:
    """Llama/Mistral SentencePiece BPE: "▁" for spaces, byte fallback, merges from scores."""
    merges = _merges(meta)
    if merges is None:
        scores = meta.get("tokenizer.ggml.scores", list, required=True)
        if len(scores) != len(tokens):
            raise ModelLoadError(
                f"{meta.path}: GGUF metadata key 'tokenizer.ggml.scores' has {len(scores)} entries "
                f"for {len(tokens)} tokens"
            )
        merges = _sentencepiece_merges(tokens, scores)
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(_bpe(meta, vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix_space = meta.get("tokenizer.ggml.add_space_prefix", bool, default=True)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prefix_space else "never", split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix_space:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _add_special_tokens(
    backend: Backend, tokens: list[str], types: list[int], spelled: list[str], *, byte_level: bool
) -> None:
    """Mark control/unknown tokens special and user-defined ones added, keeping their ids.

    A token is only added when the vocabulary already holds it under its own text at its
    own id: adding any other would create a new id past the model's embedding table. (In a
    byte-level vocabulary that skips llama.cpp's occasional mislabels, e.g. a "control"
    token spelled with raw spaces.)
    """
    vocab = backend.get_vocab(with_added_tokens=False)
    special, added = [], []
    for i, (tok, ty) in enumerate(zip(tokens, types, strict=True)):
        if vocab.get(tok) != i or (byte_level and tok != spelled[i]):
            continue
        if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            special.append(AddedToken(tok, special=True, normalized=False))
        elif ty == TOKEN_USER_DEFINED:
            added.append(AddedToken(tok, special=False, normalized=False))
    if special:
        backend.add_special_tokens(special)
    if added:
        backend.add_tokens(added)
