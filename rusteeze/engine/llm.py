"""LLM: the offline batch API (``generate`` and ``chat``), as in vLLM."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from rusteeze.config import EngineConfig
from rusteeze.engine.engine import Engine
from rusteeze.engine.outputs import RequestOutput
from rusteeze.engine.request import Request
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams

Prompt = str | list[int]
Conversation = list[dict[str, Any]]


class LLM:
    """Load a model once, then run batches of prompts through continuous batching.

    Args:
        model: hub id, local directory, .gguf file or store name (None: the default model).
        **overrides: any EngineConfig field (``dtype``, ``max_model_len``,
            ``kv_cache_memory``, ``enable_prefix_caching``, ...).

    Raises:
        ConfigError: an unknown or invalid override.
    """

    def __init__(self, model: str | None = None, **overrides: Any) -> None:
        self.config = EngineConfig.from_dict({"model": model, **overrides}, source="LLM()")
        self.engine = Engine(self.config)

    @property
    def tokenizer(self) -> Any:
        """The model's rusteeze.tokenizer.Tokenizer."""
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Complete each prompt.

        Args:
            prompts: a string, a list of token ids, or a list of either.
            sampling_params: one for all prompts, or one per prompt (None: defaults).
            use_tqdm: show a progress bar when there is more than one prompt.

        Returns:
            One finished RequestOutput per prompt, in order.

        Raises:
            InvalidRequestError: a bad prompt or parameter (nothing is run then).
        """
        if isinstance(prompts, str) or (prompts and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]  # type: ignore[list-item]
        params = self._params_list(sampling_params, len(prompts))
        requests = [self.engine.make_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        return self._run(requests, use_tqdm)

    def chat(
        self,
        messages: Conversation | Seq[Conversation],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Answer each conversation with the model's chat template.

        Args:
            messages: one conversation (``[{"role": ..., "content": ...}, ...]``) or a list of them.
            sampling_params: one for all, or one per conversation.
            use_tqdm: show a progress bar when there is more than one conversation.
            chat_template_kwargs: extra template variables (e.g. ``enable_thinking``).

        Returns:
            One finished RequestOutput per conversation, in order.
        """
        if messages and isinstance(messages[0], dict):
            messages = [messages]  # type: ignore[list-item]
        params = self._params_list(sampling_params, len(messages))
        requests = [
            self.engine.make_request(None, sp, messages=list(m), chat_template_kwargs=chat_template_kwargs)
            for m, sp in zip(messages, params, strict=True)
        ]
        return self._run(requests, use_tqdm)

    @staticmethod
    def _params_list(params: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
        if params is None or isinstance(params, SamplingParams):
            return [params or SamplingParams()] * n
        params = list(params)
        if len(params) != n or not all(isinstance(p, SamplingParams) for p in params):
            raise InvalidRequestError(
                f"sampling_params must be one SamplingParams or a list of {n} (one per prompt)",
                param="sampling_params",
            )
        return params

    def _run(self, requests: list[Request], use_tqdm: bool) -> list[RequestOutput]:
        """Queue the requests, step until they finish, return their outputs in order."""
        engine, done = self.engine, {}
        for r in requests:
            engine.add(r)
        progress = _Progress(len(requests)) if use_tqdm and len(requests) > 1 else None
        try:
            while len(done) < len(requests):
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        if progress:
                            progress.advance(out)
        finally:
            for r in requests:
                if r.request_id not in done:
                    engine.abort(r.request_id)
            if progress:
                progress.close()
        return [done[r.request_id] for r in requests]


class _Progress:
    """A rich progress bar: finished requests and output tokens per second."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.tokens = 0
        self.bar = Progress(
            TextColumn("Generating"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[rate]}"),
            transient=False,
        )
        self.task = self.bar.add_task("generate", total=total, rate="")
        self.bar.start()

    def advance(self, out: RequestOutput) -> None:
        self.tokens += out.usage.completion_tokens
        elapsed = self.bar.tasks[0].elapsed or 0.0
        rate = f"{self.tokens / elapsed:.1f} tok/s" if elapsed > 0 else ""
        self.bar.update(self.task, advance=1, rate=rate)

    def close(self) -> None:
        self.bar.stop()
