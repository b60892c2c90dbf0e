"""N-gram prompt lookup: propose the tokens that followed the latest earlier occurrence of the text's tail.

When a model rewrites, quotes or edits its input, its output repeats spans of the prompt (or of
itself); the last few tokens then occur earlier in the context, and what followed there is a
good guess for what comes next. Costs O(len × n) numpy work per sequence and step, no model.
"""

from __future__ import annotations

import numpy as np


def propose_ngram(tokens: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """Up to ``k`` proposed next tokens for the sequence ``tokens``, or [] when nothing matches.

    The longest tail of ``n`` tokens (``max_n`` down to ``min_n``) that also occurs earlier wins;
    among its earlier occurrences the most recent one is used, and the proposal is the (up to)
    ``k`` tokens that followed it.

    Args:
        tokens: [L] int64 prompt and output so far.
        min_n: shortest tail tried (>= 1).
        max_n: longest tail tried.
        k: most tokens proposed.
    """
    length = tokens.shape[0]
    if k <= 0 or length < min_n + 1:
        return []
    # match[j] (j <= L - 2, so a token follows): the tail of length n also ends at j, i.e.
    # tokens[j-n+1 .. j] == tokens[L-n .. L-1]. Grown one n at a time:
    # match_n[j] = match_{n-1}[j] and tokens[j-n+1] == tokens[L-n].
    match = tokens[: length - 1] == tokens[length - 1]  # [L-1], n = 1
    best = _latest(tokens, match, k) if min_n <= 1 else []
    for n in range(2, min(max_n, length - 1) + 1):
        match[: n - 1] = False
        match[n - 1 :] &= tokens[: length - n] == tokens[length - n]
        if not match.any():
            break
        if n >= min_n:
            best = _latest(tokens, match, k)
    return best


def _latest(tokens: np.ndarray, match: np.ndarray, k: int) -> list[int]:
    """The ``k`` tokens after the last True in ``match`` ([] when there is none)."""
    hits = np.flatnonzero(match)
    if hits.size == 0:
        return []
    j = int(hits[-1])
    return tokens[j + 1 : j + 1 + k].tolist()
