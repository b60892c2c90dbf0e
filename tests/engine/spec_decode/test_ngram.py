"""N-gram prompt lookup: the longest repeated tail wins, its latest earlier occurrence is continued."""

import numpy as np
import pytest

from rusteeze.engine.spec_decode.ngram import propose_ngram


def propose(tokens, min_n=1, max_n=3, k=4):
    return propose_ngram(np.array(tokens, dtype=np.int64), min_n, max_n, k)


def test_continues_the_latest_occurrence_of_the_longest_matching_tail():
    # Tail [2, 3]: seen at 1-2 (followed by 4 5 9) and at 6-7 (followed by 7 1); the latest wins.
    assert propose([0, 2, 3, 4, 5, 9, 2, 3, 7, 1, 2, 3]) == [7, 1, 2, 3]
    # A longer tail beats a later shorter one: [8, 2, 3] matches only at 0-2.
    assert propose([8, 2, 3, 4, 5, 6, 2, 3, 7, 8, 2, 3]) == [4, 5, 6, 2]


def test_limits_k_min_n_and_no_match():
    assert propose([1, 2, 3, 9, 1, 2, 3], k=2) == [9, 1]
    assert propose([5, 6, 7, 6], min_n=2) == []  # only the 1-gram [6] repeats
    assert propose([5, 6, 7, 6], min_n=1) == [7, 6]
    assert propose([1, 2, 3, 4]) == []
    assert propose([4]) == []
    assert propose([7, 7, 7, 7]) == [7]  # the latest occurrence of [7 7 7] ends just before the tail


@pytest.mark.parametrize("seed", range(20))
def test_agrees_with_a_plain_search(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, size=int(rng.integers(2, 40))).tolist()
    min_n, max_n, k = 1 + seed % 2, 2 + seed % 3, 1 + seed % 4
    assert propose(tokens, min_n, max_n, k) == _reference(tokens, min_n, max_n, k)


def _reference(tokens, min_n, max_n, k):
    for n in range(max_n, min_n - 1, -1):
        if n >= len(tokens):
            continue
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):
            if tokens[start : start + n] == tail:
                return tokens[start + n : start + n + k]
    return []
