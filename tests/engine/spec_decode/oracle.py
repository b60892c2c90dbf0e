"""A test proposer that knows the answer: drafts from a plain run's output, some of them wrong.

Random tiny models rarely repeat themselves, so n-gram lookup would propose little on them; these
drafts exercise verification, rollback and the scheduler with accepted and rejected tokens alike.
"""

import random


class OracleDrafts:
    """Stands in for ``Speculator.propose``: up to ``k`` drafts continuing the expected output.

    Args:
        speculator: the engine's Speculator (its limits and eligibility rules are kept).
        expected: prompt tuple → the plain run's output tokens.
        k: most drafts per step.
        wrong: probability that a draft token is replaced by a wrong one.
        seed: seed of the corruption.
    """

    def __init__(self, speculator, expected: dict[tuple, list[int]], k: int = 4, wrong: float = 0.3, seed: int = 0):
        self.speculator = speculator
        self.expected = expected
        self.k = k
        self.wrong = wrong
        self.rng = random.Random(seed)

    def __call__(self, running) -> dict[int, list[int]]:
        from rusteeze.engine.spec_decode.speculator import eligible

        drafts = {}
        for seq in running:
            if seq.num_tokens - seq.num_computed_tokens != 1 or not eligible(seq):
                continue
            want = self.expected[tuple(seq.token_ids[: seq.num_prompt_tokens])]
            done = seq.num_output_tokens
            k = min(self.k, seq.max_tokens - done - 1, self.rng.randint(0, self.k))
            draft = [t if self.rng.random() > self.wrong else (t + 1) % 300 for t in want[done : done + k]]
            if draft:
                drafts[seq.seq_id] = draft
        return drafts
