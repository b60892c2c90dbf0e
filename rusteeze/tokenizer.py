"""Tokenizer, chat templates, incremental detokenizer and stop-string matching.

One :class:`Tokenizer` wraps a `tokenizers.Tokenizer` (from an HF directory's
`tokenizer.json`, or rebuilt from GGUF metadata by
:mod:`rusteeze.loader.gguf_tokenizer`) together with what `tokenizer_config.json`
adds: the BOS/EOS tokens, whether to prepend BOS, and the jinja2 chat template.

Chat templates render exactly as transformers renders them: the same sandboxed
jinja2 environment (trim_blocks, lstrip_blocks, loop controls, a `tojson` that
does not escape HTML, `raise_exception`, `strftime_now`) and the same variables
(`messages`, `tools`, `documents`, `add_generation_prompt`, the special tokens).
The sandbox is bounded too: a rendering stops with an error after
`MAX_RENDERED_CHARS` characters of output or `MAX_TEMPLATE_OPERATIONS`
operations, and no `*`, `+` or `**` may build a value beyond those bounds, so a
template (or data fed to it) cannot take the process's memory or a thread forever.

Generation emits text through one :class:`IncrementalDetokenizer` per sequence
(deltas that never split a UTF-8 character) and, when the request has stop
strings, one :class:`StopStringMatcher` that holds back a possible stop prefix.
"""

from __future__ import annotations

import json
import operator
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rusteeze.errors import InvalidRequestError, ModelLoadError, ModelNotFoundError, UnsupportedModelError

__all__ = ["IncrementalDetokenizer", "StopStringMatcher", "Tokenizer", "render_chat_template"]

# Bounds on one chat-template rendering: far beyond what any real template needs for a
# conversation that fits a context window, small enough that no rendering takes the
# process's memory or a thread for long.
MAX_RENDERED_CHARS = 1 << 23  # characters of output (and of any one string or list built)
MAX_TEMPLATE_OPERATIONS = 2_000_000  # lookups, calls, arithmetic, range items (a few seconds at most)

# Token texts that end a turn in common chat formats. A model's EOS is often
# `<|endoftext|>` while its chat template closes each turn with `<|im_end|>`,
# `<|eot_id|>`, ...: generation must stop at those too (llama.cpp does the same).
END_OF_TURN_TOKENS = (
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|return|>",
    "<|call|>",
    "<EOT>",
    "<|end▁of▁sentence|>",
    "<|END_OF_TURN_TOKEN|>",
)

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _token_content(value: Any) -> str | None:
    """The text of a special token as tokenizer_config.json spells it: a string or an AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"expected a string or an AddedToken dict, got {value!r}")


class Tokenizer:
    """A `tokenizers` backend plus BOS/EOS handling and a jinja2 chat template.

    Attributes:
        vocab_size: number of token ids the backend knows, added tokens included.
        bos_token, eos_token: the special token texts (None when the model has none).
        bos_token_id, eos_token_id: their ids (None when absent from the vocabulary).
        eos_token_ids: every id that ends generation: EOS, the `extra_eos_token_ids`
            given (e.g. from generation_config.json or GGUF metadata), in that order.
        add_bos_token: whether `encode(..., add_special_tokens=True)` starts with BOS.
        chat_template: the default jinja2 chat template, or None.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        add_bos_token: bool = False,
        chat_template: str | Mapping[str, str] | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        unk_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        """Wrap `backend`.

        Args:
            backend: the `tokenizers.Tokenizer` that does the work.
            bos_token, eos_token, unk_token, pad_token: special token texts; they are also
                the template variables of the same names.
            add_bos_token: prepend BOS when encoding with special tokens (skipped when the
                backend's own post-processor already adds it).
            chat_template: one template, or named templates (`{"default": ..., "tool_use": ...}`).
            extra_eos_token_ids: more ids that end generation besides EOS.
        """
        self.backend = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.unk_token = unk_token
        self.pad_token = pad_token
        self.bos_token_id: int | None = backend.token_to_id(bos_token) if bos_token is not None else None
        self.eos_token_id: int | None = backend.token_to_id(eos_token) if eos_token is not None else None
        self.add_bos_token = bool(add_bos_token)
        ids = [self.eos_token_id] if self.eos_token_id is not None else []
        ids += [int(i) for i in extra_eos_token_ids if int(i) not in ids]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))
        if isinstance(chat_template, Mapping):
            self.chat_templates: dict[str, str] = dict(chat_template)
            self.chat_template: str | None = self.chat_templates.get("default")
        else:
            self.chat_templates = {"default": chat_template} if chat_template is not None else {}
            self.chat_template = chat_template
        # Does the backend's post-processor already put BOS in front? (Llama 3's tokenizer.json does.)
        backend_bos = backend.encode("", add_special_tokens=True).ids
        self._backend_adds_bos = bool(backend_bos) and backend_bos[0] == self.bos_token_id
        self._prepend_bos = self.add_bos_token and self.bos_token_id is not None and not self._backend_adds_bos

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load the tokenizer of an HF model directory.

        Reads `tokenizer.json`, and when present `tokenizer_config.json` (bos/eos/unk/pad
        tokens as strings or AddedToken dicts, `add_bos_token`, `chat_template` as a string or
        a list of named templates), `chat_template.jinja` (which wins over the config, as in
        transformers) and `generation_config.json` (its `eos_token_id`s also end generation).

        Raises:
            ModelNotFoundError: `path` is not a directory.
            ModelLoadError: `tokenizer.json` is missing or unreadable, or a JSON file is malformed.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ModelNotFoundError(f"tokenizer directory not found: {path}")
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise ModelLoadError(f"{tok_file} is missing: rusteeze needs a fast tokenizer (tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(tok_file)
        except Exception as e:  # the Rust side raises a plain Exception
            raise ModelLoadError(f"{tok_file} cannot be read: {e}") from e
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        try:
            special = {
                name: _token_content(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")
            }
        except ValueError as e:
            raise ModelLoadError(f"{os.path.join(path, 'tokenizer_config.json')}: bad special token: {e}") from e
        template: str | dict[str, str] | None = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
            template = {t["name"]: t["template"] for t in template}
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                jinja_text = f.read()
            template = {**template, "default": jinja_text} if isinstance(template, dict) else jinja_text
        extra: list[int] = []
        gen_eos = _read_json(os.path.join(path, "generation_config.json")).get("eos_token_id")
        if gen_eos is not None:
            extra = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
        return cls(
            backend,
            add_bos_token=bool(config.get("add_bos_token", False)),
            chat_template=template,
            extra_eos_token_ids=extra,
            **special,
        )

    # ------------------------------------------------------------ encode/decode
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text are matched whole.

        Args:
            text: the text to encode.
            add_special_tokens: add BOS (when `add_bos_token`) and whatever the backend's
                post-processor adds.
        """
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to encode must be a string, got {type(text).__name__}", param="prompt")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids` (no clean-up of spaces around punctuation).

        Raises:
            InvalidRequestError: an id is negative or not below `vocab_size`.
        """
        ids = list(ids)
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise InvalidRequestError(f"token id {i} is out of range [0, {self.vocab_size})", param="tokens")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of one id (byte-level alphabet for GPT-2 style vocabularies)."""
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary string, or None."""
        return self.backend.token_to_id(token)

    def token_to_str(self, token_id: int) -> str:
        """The text one id decodes to on its own, special tokens included."""
        return self.backend.decode([token_id], skip_special_tokens=False)

    def special_token_ids(self) -> set[int]:
        """Ids of the tokens the backend treats as special (skipped by `decode`)."""
        return {i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}

    # ------------------------------------------------------------------- chat
    def apply_chat_template(
        self,
        messages: list[dict],
        /,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` with the model's chat template, as transformers does.

        Args:
            messages: `[{"role": ..., "content": ...}, ...]`; keys whose value is None are dropped.
            add_generation_prompt: end with the header of an assistant turn.
            tools: JSON tool schemas, passed through to the template as `tools`.
            **kwargs: more template variables (e.g. `documents`, `enable_thinking`,
                `chat_template` to render another template string; any name, including
                `messages` and `tools`, which cannot override the arguments).

        Raises:
            InvalidRequestError: the model has no chat template, the messages are malformed, the
                template rejects them (`raise_exception`) or exceeds the rendering bounds, or a
                `chat_template` given here does not parse (`param="chat_template"`).
            UnsupportedModelError: the model's own template does not parse.
        """
        template = kwargs.pop("chat_template", None)
        given = template is not None
        if template is None:
            if tools and "tool_use" in self.chat_templates:
                template = self.chat_templates["tool_use"]
            else:
                template = self.chat_template
        if template is None:
            raise InvalidRequestError(
                "this model has no chat template: send a plain prompt (completions) instead of messages",
                param="messages",
            )
        if given and not isinstance(template, str):
            raise InvalidRequestError(
                f"chat_template must be a string, got {type(template).__name__}", param="chat_template"
            )
        variables = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        variables = {k: v for k, v in variables.items() if v is not None}
        variables.update(kwargs)
        variables.update(add_generation_prompt=add_generation_prompt, tools=tools)
        try:
            return render_chat_template(template, messages, **variables)
        except UnsupportedModelError as e:
            if given:  # not the model's template: the caller's mistake
                raise InvalidRequestError(str(e).replace("the model's", "the given"), param="chat_template") from e
            raise

    def encode_chat(
        self,
        messages: list[dict],
        /,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """Render `messages` and encode the result.

        The rendered text is encoded without the backend's special tokens (a template writes
        its own); BOS is prepended only when `add_bos_token` and the text does not start
        with it already, so there is never a second BOS.
        """
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tools=tools, **kwargs)
        ids = self.backend.encode(text, add_special_tokens=False).ids
        wants_bos = self.add_bos_token or self._backend_adds_bos
        if wants_bos and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------- templates
class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag): renders its body."""

    tags = {"generation"}  # noqa: RUF012 (jinja's API)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """jinja's `namespace()`, refusing underscore attributes (as transformers does)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set namespace attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise InvalidRequestError(f"chat template rejected the request: {message}", param="messages")


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
    # jinja's own tojson escapes HTML characters; transformers' does not.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _RenderBudgetError(jinja2.exceptions.SecurityError):
    """A rendering went beyond MAX_RENDERED_CHARS or MAX_TEMPLATE_OPERATIONS."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox, counting operations and refusing oversized values.

    Every lookup, call, intercepted operator and ``range`` item of the rendering on this
    thread counts against its budget (``_budget.left``, set by :func:`render_chat_template`).
    Loops over the data itself (``messages``) are not counted: they are as long as the request.
    """

    intercepted_binops = frozenset({"*", "+", "**"})
    _budget = threading.local()

    @staticmethod
    def _tick() -> None:
        budget = _BoundedSandbox._budget
        left = getattr(budget, "left", None)
        if left is None:
            return
        if left <= 0:
            raise _RenderBudgetError(f"the chat template did more than {MAX_TEMPLATE_OPERATIONS} operations")
        budget.left = left - 1

    def getattr(self, obj: Any, attribute: str) -> Any:
        self._tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self._tick()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        __self._tick()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        self._tick()
        size = None
        sized = (str, list, tuple)
        if op == "*" and isinstance(left, sized) and isinstance(right, int):
            size = len(left) * right
        elif op == "*" and isinstance(right, sized) and isinstance(left, int):
            size = len(right) * left
        elif op == "+" and isinstance(left, sized) and isinstance(right, sized):
            size = len(left) + len(right)
        elif op == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            size = abs(left).bit_length() * right // 4  # about the decimal digits of the result
        if size is not None and size > MAX_RENDERED_CHARS:
            raise _RenderBudgetError(f"the chat template built a value larger than {MAX_RENDERED_CHARS} items")
        return {"*": operator.mul, "+": operator.add, "**": operator.pow}[op](left, right)


def _counted_range(*args: int) -> Iterable[int]:
    """The sandbox's ``range`` (at most ``MAX_RANGE`` items), each item counting as an operation."""
    tick = _BoundedSandbox._tick
    for i in jinja2.sandbox.safe_range(*args):
        tick()
        yield i


@lru_cache(maxsize=32)
def _compile(template: str) -> jinja2.Template:
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.globals["range"] = _counted_range
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UnsupportedModelError(f"the model's chat template does not parse (line {e.lineno}): {e.message}") from e


def _normalize_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)):
        raise InvalidRequestError(f"messages must be a list of dicts, got {type(messages).__name__}", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{i}] must be a dict, got {type(message).__name__}", param="messages")
        # Drop None values (OpenAI clients send content=None with tool_calls); templates handle a missing key.
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:  # the names templates read reasoning under, as transformers aliases them
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat_template(
    template: str,
    messages: list[dict],
    /,
    *,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **variables: Any,
) -> str:
    """Render one jinja2 chat template (see :meth:`Tokenizer.apply_chat_template`).

    Rendering is sandboxed and bounded: at most ``MAX_RENDERED_CHARS`` characters of output
    and ``MAX_TEMPLATE_OPERATIONS`` operations.

    Raises:
        UnsupportedModelError: the template does not parse.
        InvalidRequestError: the template fails on these messages, calls `raise_exception`,
            touches what the sandbox forbids, or exceeds the bounds.
    """
    compiled = _compile(template)
    context = {
        **variables,
        "messages": _normalize_messages(messages),
        "tools": tools,
        "documents": documents,
        "add_generation_prompt": add_generation_prompt,
    }
    budget = _BoundedSandbox._budget
    budget.left = MAX_TEMPLATE_OPERATIONS
    parts, size = [], 0
    try:
        for part in compiled.generate(context):
            size += len(part)
            if size > MAX_RENDERED_CHARS:
                raise _RenderBudgetError(f"the chat template rendered more than {MAX_RENDERED_CHARS} characters")
            parts.append(part)
    except InvalidRequestError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, AttributeError, RecursionError) as e:
        raise InvalidRequestError(f"chat template failed on these messages: {e}", param="messages") from e
    except (MemoryError, OverflowError) as e:  # a value too big to build, by a way the sandbox does not count
        raise InvalidRequestError(f"chat template failed on these messages: {e!r}", param="messages") from e
    finally:
        budget.left = None
    return "".join(parts)


# ------------------------------------------------------------ detokenizing
class IncrementalDetokenizer:
    """Turns a growing list of generated ids into text deltas, one sequence at a time.

    Invariant: each step decodes a short window `ids[prefix:]` and `ids[prefix:read]`
    (`read` = ids already turned into emitted text, `prefix` = a few ids before it, so that
    decoders that strip or merge at the start of a text see the same start twice); the delta
    is what the longer decode adds. When the new text ends in U+FFFD the last token stopped
    inside a UTF-8 character: nothing is emitted and `read` stays, so the next token completes it.

    The deltas, then `flush()`, join to exactly `tokenizer.decode(generated_ids)` (for
    SentencePiece vocabularies given `prompt_ids`, the first delta keeps its leading space,
    which a lone `decode` strips).
    """

    # How many prompt ids give the first window its context (vLLM uses the same).
    PROMPT_CONTEXT = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True) -> None:
        """Start a sequence after `prompt_ids` (only its last few ids are used, as context)."""
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_ids)[-self.PROMPT_CONTEXT :]
        # A prompt that ends inside a UTF-8 character would glue onto the first generated bytes.
        if context and self._decode(context).endswith("\ufffd"):
            context = []
        self._ids: list[int] = context
        self._prefix = 0
        self._read = len(context)
        self.token_ids: list[int] = []  # generated ids only
        self.text = ""  # everything emitted so far

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.backend.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_ids: Sequence[int] | int) -> str:
        """Append generated ids; return the text they complete (possibly "")."""
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        self._ids.extend(token_ids)
        self.token_ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
            return ""  # inside a character, or ids that add no text (yet)
        if not new_text.startswith(prefix_text):  # not seen with real decoders; stay exact anyway
            return self._resync()
        delta = new_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of the sequence: the text held back (e.g. a truly broken last character)."""
        delta = self._resync()
        self._prefix = self._read = len(self._ids)
        return delta

    def _resync(self) -> str:
        full = self._decode(self.token_ids)
        if not full.startswith(self.text):
            return ""
        delta = full[len(self.text) :]
        self.text = full
        self._ids = list(self.token_ids)
        self._prefix = self._read = len(self._ids)
        return delta


class StopStringMatcher:
    """Finds stop strings in streamed text, even when one spans several deltas.

    Invariant: `_held` is the longest tail of the text seen that is a proper prefix of
    some stop string; everything before it has been emitted. A match can only start inside
    `_held` or in text not yet seen, so searching `_held + delta` finds every match.
    """

    def __init__(self, stops: Iterable[str]) -> None:
        """Match any of `stops`.

        Raises:
            InvalidRequestError: a stop string is empty or not a string.
        """
        self.stops: tuple[str, ...] = tuple(stops)
        for s in self.stops:
            if not isinstance(s, str) or not s:
                raise InvalidRequestError(f"stop strings must be non-empty strings, got {s!r}", param="stop")
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that was hit

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add a text delta; return (text safe to emit now, whether a stop string was hit).

        After a hit the stop string and everything after it are dropped, and every later
        call returns ("", True).
        """
        if self.stopped:
            return "", True
        text = self._held + delta
        # The stop string that *completes* first wins (ties: the one starting first), as a
        # token stream would hit it; this makes the result independent of how the text is
        # split into deltas. `find` gives each string's earliest, hence earliest-ending, match.
        hit, best = -1, None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (best is None or (i + len(s), i) < best):
                hit, best, self.matched = i, (i + len(s), i), s
        if hit >= 0:
            self.stopped = True
            self._held = ""
            return text[:hit], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, when the sequence ends without a stop string."""
        held, self._held = ("" if self.stopped else self._held), ""
        return held
