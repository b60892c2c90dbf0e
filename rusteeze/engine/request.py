"""Request: one prompt with its n sequences, their text and the outputs built from them."""

from __future__ import annotations

import time

from rusteeze.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, Usage
from rusteeze.engine.sampler import Logprobs
from rusteeze.engine.sequence import Sequence
from rusteeze.sampling import SamplingParams
from rusteeze.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer


class _Completion:
    """Text state of one sequence: detokenizer, stop-string matcher, emitted text."""

    def __init__(self, seq: Sequence, tokenizer: Tokenizer) -> None:
        self.seq = seq
        self.detok = IncrementalDetokenizer(
            tokenizer, seq.token_ids[: seq.num_prompt_tokens], seq.params.skip_special_tokens
        )
        self.matcher = StopStringMatcher(seq.params.stop_strings)
        self.text = ""
        self.delta_text = ""
        self.delta_token_ids: list[int] = []
        self.stop_reason: str | int | None = None
        self.num_seen = 0  # output tokens already turned into text
        self.logprobs: list[dict[int, Logprob] | None] = []  # converted seq.logprobs, grown as they come


class Request:
    """A request in the engine.

    Args:
        request_id: unique id.
        prompt: prompt text, or None when given as token ids.
        prompt_token_ids: the tokens.
        params: resolved sampling parameters.
        seqs: its ``params.n`` sequences (index order).
        tokenizer: for text deltas and logprob token strings.
        arrival_time: ``time.time()`` when added.
    """

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        seqs: list[Sequence],
        tokenizer: Tokenizer,
        arrival_time: float,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.seqs = seqs
        self.tokenizer = tokenizer
        self.completions = [_Completion(s, tokenizer) for s in seqs]
        self.arrival_time = arrival_time
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def finished(self) -> bool:
        """True once every sequence has finished."""
        return all(s.is_finished for s in self.seqs)

    def on_token(self, seq: Sequence, logprobs: Logprobs | None) -> bool:
        """Account for the token just appended to ``seq``.

        Returns:
            True when a stop string was found: the caller must finish ``seq`` with "stop".
        """
        if self.first_token_time is None:
            self.first_token_time = time.time()
        if seq.logprobs is not None and logprobs is not None:
            seq.logprobs.append(logprobs)
        c = self.completions[seq.index]
        new = seq.output_token_ids[c.num_seen :]
        c.num_seen = seq.num_output_tokens
        c.delta_token_ids += new
        # The token that ended the completion by id (EOS / stop id) is kept in
        # token_ids but not in the text, as in vLLM.
        if seq.finish_reason == "stop":
            c.stop_reason = new[-1] if new[-1] in seq.params.stop_token_ids else None
            new = new[:-1]
        emit, stopped = c.matcher.feed(c.detok.add(new) if new else "")
        if seq.finish_reason is not None and not stopped:
            emit, stopped = self._flush(c, emit)
        if stopped:
            c.stop_reason = c.matcher.matched
            if seq.params.include_stop_str_in_output and c.matcher.matched:
                emit += c.matcher.matched
        c.text += emit
        c.delta_text += emit
        return stopped and seq.finish_reason is None

    @staticmethod
    def _flush(c: _Completion, emit: str) -> tuple[str, bool]:
        more, stopped = c.matcher.feed(c.detok.flush())
        emit += more
        return (emit, True) if stopped else (emit + c.matcher.flush(), False)

    def on_finish(self) -> None:
        """Record the finish time (called once every sequence has finished)."""
        if self.finish_time is None:
            self.finish_time = time.time()

    def _logprobs(self, entries: list[Logprobs | None]) -> list[dict[int, Logprob] | None]:
        tok = self.tokenizer
        return [
            None if e is None else {t: Logprob(lp, rank, tok.token_to_str(t)) for t, (lp, rank) in e.items()}
            for e in entries
        ]

    def make_output(self) -> RequestOutput:
        """Snapshot of the request; resets the per-step deltas."""
        outputs = []
        for c in self.completions:
            seq = c.seq
            lps = cum = None
            if seq.logprobs is not None:
                c.logprobs += self._logprobs(seq.logprobs[len(c.logprobs) :])
                lps = list(c.logprobs)
                cum = sum(e[t][0] for e, t in zip(seq.logprobs, seq.output_token_ids, strict=False))
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=c.text,
                    token_ids=seq.output_token_ids,
                    finish_reason=seq.finish_reason,
                    stop_reason=c.stop_reason,
                    logprobs=lps,
                    cumulative_logprob=cum,
                    delta_text=c.delta_text,
                    delta_token_ids=c.delta_token_ids,
                )
            )
            c.delta_text, c.delta_token_ids = "", []
        first = self.seqs[0]
        prompt_lps = None if first.prompt_logprobs is None else self._logprobs(first.prompt_logprobs)
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=prompt_lps,
            outputs=outputs,
            finished=self.finished,
            usage=Usage(
                prompt_tokens=len(self.prompt_token_ids),
                completion_tokens=sum(s.num_output_tokens for s in self.seqs),
                cached_tokens=first.num_cached_tokens,
            ),
            metrics=RequestMetrics(self.arrival_time, self.first_token_time, self.finish_time),
        )
