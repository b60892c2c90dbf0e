"""Request: one prompt with its n sequences, their text and the outputs built from them."""

from __future__ import annotations

import time

from rusteeze.engine.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput, Usage
from rusteeze.engine.sampler import Logprobs
from rusteeze.engine.sequence import Sequence
from rusteeze.sampling import SamplingParams
from rusteeze.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer


class _Completion:
    """Text and token state of one sequence, kept incrementally.

    Invariant: every step adds O(new tokens) of work. ``token_ids`` and ``logprobs`` only
    grow (outputs hand them out without copying), the cumulative logprob is a running sum,
    and the text is kept as parts joined when asked for. Everything from ``delta_start`` on
    (and ``delta_text``) is new since the previous output.
    """

    def __init__(self, seq: Sequence, tokenizer: Tokenizer) -> None:
        self.seq = seq
        self.detok = IncrementalDetokenizer(
            tokenizer, seq.token_ids[: seq.num_prompt_tokens], seq.params.skip_special_tokens
        )
        self.matcher = StopStringMatcher(seq.params.stop_strings)
        self._parts: list[str] = []
        self.delta_text = ""
        self.delta_start = 0  # token_ids[delta_start:] are new since the previous output
        self.stop_reason: str | int | None = None
        self.token_ids: list[int] = []  # generated ids
        self.logprobs: list[dict[int, Logprob]] | None = [] if seq.logprobs is not None else None
        self.cumulative_logprob: float | None = 0.0 if seq.logprobs is not None else None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def emit(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self.delta_text += text


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

    Attributes:
        output_deltas: when True (``AsyncEngine`` sets it before the request runs), outputs
            carry only what is new (``text``, ``token_ids`` and ``logprobs`` equal the delta
            fields) and the reader rebuilds the rest, so no list is shared between the engine
            thread and the reader.
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
        self.output_deltas = False
        self._prompt_lps: list[dict[int, Logprob] | None] | None = None  # replaced (not grown) when it grows

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
        c = self.completions[seq.index]
        new = seq.token_ids[seq.num_prompt_tokens + len(c.token_ids) :]
        c.token_ids += new
        if seq.logprobs is not None and logprobs is not None:
            seq.logprobs.append(logprobs)
            entry = self._logprob_entry(logprobs)
            c.logprobs.append(entry)
            c.cumulative_logprob += entry[new[-1]].logprob
        # The token that ended the completion by id (EOS / stop id) is kept in
        # token_ids but not in the text, as in vLLM. (A completed grammar ends on an ordinary token.)
        if seq.finish_reason == "stop" and seq.is_end_token(new[-1]):
            c.stop_reason = new[-1] if new[-1] in seq.params.stop_token_ids else None
            new = new[:-1]
        emit, stopped = c.matcher.feed(c.detok.add(new) if new else "")
        if seq.finish_reason is not None and not stopped:
            emit, stopped = self._flush(c, emit)
        if stopped:
            c.stop_reason = c.matcher.matched
            if seq.params.include_stop_str_in_output and c.matcher.matched:
                emit += c.matcher.matched
        c.emit(emit)
        return stopped and seq.finish_reason is None

    def on_tokens(self, seq: Sequence, logprobs: Logprobs | list[Logprobs] | None) -> bool:
        """Account for the tokens appended to ``seq`` this step, one at a time (see :meth:`on_token`).

        Speculative decoding appends several tokens in one step; each is taken as if it came
        alone, so a stop string that ends inside them stops the output exactly there: the
        tokens after it are removed from ``seq``. ``logprobs``: one entry per token (a list) or,
        for a single token, the entry itself.

        Returns:
            True when a stop string was found: the caller must finish ``seq`` with "stop".
        """
        new = seq.token_ids[seq.num_prompt_tokens + len(self.completions[seq.index].token_ids) :]
        entries = logprobs if isinstance(logprobs, list) else [logprobs] * len(new)
        if len(new) <= 1:
            return self.on_token(seq, entries[0] if entries else None)
        finish_reason, seq.finish_reason = seq.finish_reason, None
        del seq.token_ids[len(seq.token_ids) - len(new) + 1 :]  # given back one at a time
        for i, token in enumerate(new):
            if i:
                seq.token_ids.append(token)
            if i == len(new) - 1:
                seq.finish_reason = finish_reason  # set by the last token only
            if self.on_token(seq, entries[i]):
                return True
        return False

    @staticmethod
    def _flush(c: _Completion, emit: str) -> tuple[str, bool]:
        more, stopped = c.matcher.feed(c.detok.flush())
        emit += more
        return (emit, True) if stopped else (emit + c.matcher.flush(), False)

    def on_finish(self) -> None:
        """Record the finish time (called once every sequence has finished)."""
        if self.finish_time is None:
            self.finish_time = time.time()

    def _logprob_entry(self, entry: Logprobs) -> dict[int, Logprob]:
        tok = self.tokenizer
        return {t: Logprob(lp, rank, tok.token_to_str(t)) for t, (lp, rank) in entry.items()}

    def _prompt_logprobs(self) -> list[dict[int, Logprob] | None] | None:
        """The prompt logprobs converted so far; a new list only when more prompt tokens were scored."""
        raw = self.seqs[0].prompt_logprobs
        if raw is None:
            return None
        have = self._prompt_lps or []
        if len(have) < len(raw):
            more = [None if e is None else self._logprob_entry(e) for e in raw[len(have) :]]
            self._prompt_lps = have + more
        return self._prompt_lps

    def make_output(self) -> RequestOutput:
        """The request's output as of now (O(new tokens): nothing is copied); resets the deltas."""
        outputs = []
        whole = not self.output_deltas
        for c in self.completions:
            seq = c.seq
            delta_ids = c.token_ids[c.delta_start :]
            delta_lps = None if c.logprobs is None else c.logprobs[c.delta_start :]
            outputs.append(
                CompletionOutput(
                    index=seq.index,
                    text=c.text if whole else c.delta_text,
                    token_ids=c.token_ids if whole else delta_ids,
                    finish_reason=seq.finish_reason,
                    stop_reason=c.stop_reason,
                    logprobs=c.logprobs if whole else delta_lps,
                    cumulative_logprob=c.cumulative_logprob,
                    delta_text=c.delta_text,
                    delta_token_ids=delta_ids,
                    delta_logprobs=delta_lps,
                )
            )
            c.delta_text, c.delta_start = "", len(c.token_ids)
        first = self.seqs[0]
        return RequestOutput(
            request_id=self.request_id,
            prompt=self.prompt,
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self._prompt_logprobs(),
            outputs=outputs,
            finished=self.finished,
            usage=Usage(
                prompt_tokens=len(self.prompt_token_ids),
                completion_tokens=sum(s.num_output_tokens for s in self.seqs),
                cached_tokens=first.num_cached_tokens,
            ),
            metrics=RequestMetrics(self.arrival_time, self.first_token_time, self.finish_time),
        )
