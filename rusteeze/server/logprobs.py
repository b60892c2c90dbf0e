"""Logprobs in the two OpenAI shapes: legacy completions and chat."""

from __future__ import annotations

from typing import Any

from rusteeze.engine.outputs import Logprob

Entry = dict[int, Logprob]


def _top(entry: Entry, k: int) -> list[tuple[int, Logprob]]:
    """The ``k`` most likely tokens of one position, most likely first."""
    return sorted(((t, lp) for t, lp in entry.items() if lp.rank <= k), key=lambda x: x[1].rank)


def completion_logprobs(
    token_ids: list[int], entries: list[Entry | None], k: int, text_offset: int, token_str
) -> dict[str, Any]:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` of some tokens.

    Args:
        token_ids: the tokens (sampled, or the prompt's when echoing).
        entries: per token, the engine's ``{token_id: Logprob}`` (None: not available,
            as for the first prompt token).
        k: alternatives per position; the chosen token is always included.
        text_offset: character offset of the first token in the choice's text.
        token_str: ``token_id -> str`` for tokens without an entry.
    """
    tokens, lps, tops, offsets = [], [], [], []
    offset = text_offset
    for t, entry in zip(token_ids, entries, strict=True):
        text = entry[t].decoded_token if entry and t in entry else token_str(t)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None or t not in entry:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(entry[t].logprob)
        top = {lp.decoded_token: lp.logprob for _, lp in _top(entry, k)}
        top.setdefault(entry[t].decoded_token, entry[t].logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def merge_completion_logprobs(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Concatenate two completion logprob objects (prompt then output, when echoing)."""
    if a is None:
        return b
    return {key: a[key] + b[key] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def chat_logprobs(token_ids: list[int], entries: list[Entry | None], k: int) -> dict[str, Any]:
    """``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}`` of sampled tokens."""
    content = []
    for t, entry in zip(token_ids, entries, strict=True):
        if entry is None or t not in entry:
            continue
        chosen = entry[t]
        content.append(
            {
                **_chat_token(chosen),
                "top_logprobs": [_chat_token(lp) for _, lp in _top(entry, k)],
            }
        )
    return {"content": content}


def _chat_token(lp: Logprob) -> dict[str, Any]:
    return {"token": lp.decoded_token, "logprob": lp.logprob, "bytes": list(lp.decoded_token.encode("utf-8"))}
