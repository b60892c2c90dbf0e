"""Verification of drafts on fixed logits: greedy prefix rule, and the rejection rule against plain sampling."""

import pytest
import torch

from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.verify import verify_drafts
from rusteeze.sampling import SamplingParams

V = 6
# Two positions' logits: row 0 judges the first draft, row 1 the second, row 2 gives the bonus.
LOGITS = torch.tensor(
    [
        [1.0, 0.2, -0.5, 0.7, 2.0, -1.0],
        [0.1, 1.5, 0.3, -0.2, 0.0, 0.9],
        [0.4, -0.3, 1.1, 0.2, 0.6, 0.0],
    ]
)


def seqs_with(params: SamplingParams, n: int, gen: torch.Generator | None = None) -> list[Sequence]:
    out = []
    for _ in range(n):
        seq = Sequence("r", [1, 2], params.resolve({}))
        seq.generator = gen
        out.append(seq)
    return out


def test_greedy_keeps_the_longest_matching_prefix_then_the_argmax():
    params = SamplingParams(temperature=0)
    seqs = seqs_with(params, 4)
    drafts = [[4, 1], [4, 5], [0, 1], []]  # argmax rows: 4, 1, 2
    logits = torch.cat([LOGITS, LOGITS, LOGITS, LOGITS[:1]])
    emitted, lps = verify_drafts(logits, seqs, drafts, V)
    assert emitted == [[4, 1, 2], [4, 1], [4], [4]]
    assert lps == [None] * 4


def test_logprobs_are_the_raw_distribution_at_each_kept_position():
    params = SamplingParams(temperature=0, logprobs=2, logit_bias={2: -100.0})
    emitted, lps = verify_drafts(LOGITS, seqs_with(params, 1), [[4, 1]], V)
    assert emitted == [[4, 1, 4]]  # the bias moves the bonus from 2 to 4
    raw = LOGITS.log_softmax(dim=-1)
    for row, (token, entry) in enumerate(zip(emitted[0], lps[0], strict=True)):
        assert entry[token][0] == pytest.approx(raw[row, token].item(), abs=1e-6)
        assert len(entry) == 3 if token not in raw[row].topk(2).indices.tolist() else 2


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a token of probability 0 was emitted"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=1.0), SamplingParams(temperature=0.7, top_k=4, top_p=0.9)],
    ids=["plain", "truncated"],
)
def test_emitted_tokens_follow_the_target_distribution(params):
    """Each emitted token is distributed as plain sampling would draw it, whatever the drafts.

    Draft [0, 2]: token 0 is unlikely at row 0 (often rejected: the residual is drawn), token 2
    is moderately likely at row 1. With a fixed seed and 30,000 draws the chi-square statistics
    (5 degrees of freedom; 0.1% critical value 20.5) are deterministic.
    """
    gen = torch.Generator().manual_seed(1234)
    seqs = seqs_with(params, 3000, gen)
    first = torch.zeros(V)
    second = torch.zeros(V)  # the token after an accepted first draft
    for _ in range(10):
        emitted, _ = verify_drafts(LOGITS.repeat(3000, 1), seqs, [[0, 2]] * 3000, V)
        for tokens in emitted:
            first[tokens[0]] += 1
            if tokens[0] == 0:
                second[tokens[1]] += 1
    target = [_plain_probs(LOGITS[i], params) for i in range(2)]
    assert chi_square(first, target[0]) < 20.5
    assert second.sum() > 500
    assert chi_square(second, target[1]) < 20.5


def _plain_probs(row: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The plain sampler's distribution for one row: temperature, top-k, then top-p on what top-k kept."""
    p = (row / params.temperature).softmax(dim=-1)
    order = p.argsort(descending=True).tolist()
    if params.top_k:
        p[order[params.top_k :]] = 0
        p = p / p.sum()
    top_p = params.top_p if params.top_p is not None else 1.0
    mass = 0.0
    for tok in order:
        if mass > top_p:
            p[tok] = 0
        mass += p[tok].item()
    return p / p.sum()


def test_accepting_every_draft_would_fail_the_check():
    """The chi-square check has teeth: always keeping draft 0 is far from the target."""
    counts = torch.zeros(V)
    counts[0] = 30000
    assert chi_square(counts, _plain_probs(LOGITS[0], SamplingParams(temperature=1.0))) > 1000
