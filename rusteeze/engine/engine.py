"""Engine: the synchronous core every front end drives (add_request, step, abort)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import torch

from rusteeze.config import EngineConfig
from rusteeze.engine.block_manager import BlockManager
from rusteeze.engine.cuda_graphs import build_decode_graphs
from rusteeze.engine.kv_budget import allocation_error, plan_kv_cache, resolve_kv_cache_memory
from rusteeze.engine.kv_cache import allocate_kv_caches, num_blocks_for
from rusteeze.engine.model_runner import ModelRunner
from rusteeze.engine.outputs import RequestOutput
from rusteeze.engine.request import Request
from rusteeze.engine.scheduler import Scheduler
from rusteeze.engine.sequence import Sequence
from rusteeze.engine.spec_decode.speculator import Speculator
from rusteeze.errors import InvalidRequestError
from rusteeze.sampling import SamplingParams
from rusteeze.structured.compiler import compiler_for


class EngineStepError(RuntimeError):
    """A step failed; the requests it was computing have been aborted.

    Attributes:
        request_ids: the affected requests (the cause is ``__cause__``).
    """

    def __init__(self, request_ids: list[str], cause: BaseException) -> None:
        super().__init__(f"engine step failed for {len(request_ids)} request(s): {cause!r}")
        self.request_ids = request_ids


class Engine:
    """Loads a model, owns its KV cache and scheduler, and runs steps.

    Args:
        config: the engine configuration.
        loaded: an already loaded model (``rusteeze.loader.model_loader.LoadedModel``);
            loaded from ``config`` when None.

    Raises:
        ConfigError: ``max_model_len`` exceeds the model's context, or the
            KV-cache budget cannot hold one sequence of it (when it is unset,
            the context is shortened to what the budget holds instead, and
            ``kv_plan.shortened`` says so), holds no block at all, or exceeds
            the device's memory (see ``rusteeze.engine.kv_budget``).
    """

    def __init__(self, config: EngineConfig, loaded: Any = None) -> None:
        if loaded is None:
            from rusteeze.loader.model_loader import load_model

            loaded = load_model(config)
        config = resolve_kv_cache_memory(config, loaded.model, loaded.device)  # unset: 1 GiB on CPU, profiled on CUDA
        self.config = config
        self.loaded = loaded
        self.model_config = cfg = loaded.config
        self.tokenizer = loaded.tokenizer
        self.generation_defaults: dict[str, Any] = dict(loaded.generation_defaults or {})
        extra_eos = self.generation_defaults.get("eos_token_id") or []
        extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos)
        self.eos_token_ids = tuple(dict.fromkeys([*cfg.eos_token_ids, *self.tokenizer.eos_token_ids, *extra_eos]))
        bs = config.block_size
        # Unset max_model_len: the model's, but no more than the KV budget holds
        # (a 128k-context model still runs in the default budget). Set: checked against the
        # model's context and the budget; the budget against the device's memory.
        self.kv_plan = plan_kv_cache(cfg, config, loaded.dtype, loaded.device)
        self.max_model_len = self.kv_plan.max_model_len
        num_blocks = num_blocks_for(cfg, bs, loaded.dtype, config.kv_cache_memory, self.max_model_len)
        try:
            caches = allocate_kv_caches(cfg, num_blocks, bs, loaded.dtype, loaded.device)
        except RuntimeError as e:  # out of memory (torch.OutOfMemoryError, or the CPU allocator's)
            raise allocation_error(config.kv_cache_memory, loaded.device, e) from e
        self.block_manager = BlockManager(num_blocks, bs, config.enable_prefix_caching, cfg.sliding_window)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(loaded.model, caches, bs, cfg.vocab_size, loaded.device, self.block_manager)
        self.runner.decode_graphs = build_decode_graphs(config, loaded.kernel_backend, self.runner, self.max_model_len)
        spec = config.speculative
        self.speculator = Speculator.create(config, loaded, self.max_model_len) if spec is not None else None
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        # Unseeded requests sample from this engine's own generator: reproducible for a given
        # config seed, whatever else runs in the process (torch's global generator is left alone).
        self.generator = torch.Generator(device=loaded.device).manual_seed(config.seed)

    # -- requests -------------------------------------------------------------

    def make_request(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        messages: list[dict] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> Request:
        """Tokenize and validate a request without touching engine state (thread-safe).

        Args:
            prompt: text, or token ids; None when ``messages`` is given.
            params: sampling parameters (unset fields take the model's defaults).
            request_id: unique id; one is made when None.
            messages: a chat conversation, rendered with the model's chat template.
            chat_template_kwargs: extra template variables.

        Raises:
            InvalidRequestError: empty or too long prompt, token ids out of range,
                stop_token_ids / logit_bias ids outside the vocabulary, or a
                duplicate request id.
        """
        params = (params or SamplingParams()).resolve(self.generation_defaults)
        vocab = self.model_config.vocab_size
        text: str | None = None
        if messages is not None:
            ids = self.tokenizer.encode_chat(messages, **(chat_template_kwargs or {}))
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
        elif isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            if any(not 0 <= t < vocab for t in ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})", param="prompt")
        else:
            raise InvalidRequestError("prompt must be a string or a list of token ids", param="prompt")
        if not ids:
            raise InvalidRequestError("prompt is empty", param="prompt")
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens but max_model_len is {self.max_model_len}: "
                "at least one token must be left for the output",
                param="messages" if messages is not None else "prompt",
            )
        for name, tokens in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias or {})):
            for t in tokens:
                if t >= vocab:
                    raise InvalidRequestError(f"{name}: token id {t} is not below the vocabulary size {vocab}", name)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", param="request_id")
        room = self.max_model_len - len(ids)
        max_tokens = min(params.max_tokens or room, room)  # clamp to the context
        seqs: list[Sequence] = []
        for i in range(params.n):
            seq = Sequence(
                request_id,
                ids,
                params,
                index=i,
                max_tokens=max_tokens,
                eos_token_ids=self.eos_token_ids,
                parent=seqs[0] if seqs else None,
            )
            if params.seed is not None:
                seq.generator = torch.Generator(device=self.runner.device).manual_seed((params.seed + i) % 2**64)
            else:
                seq.generator = self.generator
            seqs.append(seq)
        if params.structured_outputs is not None:  # compiled once per constraint, a matcher per sequence
            compiler = compiler_for(self.tokenizer, vocab, self.eos_token_ids)
            for seq in seqs:
                seq.grammar = compiler.matcher(params.structured_outputs)
        return Request(request_id, text, ids, params, seqs, self.tokenizer, time.time())

    def add(self, request: Request) -> None:
        """Queue a request made by :meth:`make_request` (engine thread only)."""
        if request.request_id in self.requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in use", param="request_id")
        self.requests[request.request_id] = request
        for seq in request.seqs:
            self.scheduler.add(seq)

    def add_request(
        self,
        prompt: str | list[int] | None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Validate, tokenize and queue a request; returns its id (see :meth:`make_request`)."""
        request = self.make_request(prompt, params, request_id, **kwargs)
        self.add(request)
        return request.request_id

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its blocks; returns its final output (None if unknown)."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            self.scheduler.finish(seq, "abort")
        if self.speculator is not None:
            self.speculator.end_step()
        request.on_finish()
        return request.make_output()

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return bool(self.requests)

    # -- the loop -------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, sample, and report the requests that changed.

        Returns:
            One RequestOutput per request that got tokens (or finished) this step.

        Raises:
            EngineStepError: the forward pass or the sampler failed; the
                requests of that step have been aborted (blocks freed).
        """
        drafts = self.speculator.propose(self.scheduler.running) if self.speculator is not None else None
        out = self.scheduler.schedule(drafts)
        if out.is_empty:
            # One max_model_len sequence always fits, so work left means work scheduled.
            assert not self.scheduler.has_unfinished(), "scheduler stalled with requests left"
            return []
        try:
            result = self.runner.run(out)
        except Exception as e:
            ids = list(dict.fromkeys(s.seq.request_id for s in out.scheduled))
            for rid in ids:
                self.abort(rid)
            raise EngineStepError(ids, e) from e
        if self.speculator is not None:
            for s, tokens in zip(out.scheduled, result.sampled, strict=True):
                if s.draft_token_ids:
                    self.speculator.record(s.seq, len(s.draft_token_ids), len(tokens) - 1)  # type: ignore[arg-type]
        logprobs = {s.seq.seq_id: lp for s, lp in zip(out.scheduled, result.logprobs, strict=True)}
        changed: dict[str, Request] = {}
        for seq in self.scheduler.update(out, result.sampled):
            request = self.requests[seq.request_id]
            if request.on_tokens(seq, logprobs[seq.seq_id]):
                self.scheduler.finish(seq, "stop")
            changed[request.request_id] = request
        if self.speculator is not None:
            self.speculator.end_step()
        outputs = []
        for request in changed.values():
            if request.finished:
                request.on_finish()
                del self.requests[request.request_id]
            outputs.append(request.make_output())
        return outputs

    def stats(self) -> dict[str, float]:
        """Queue lengths, KV usage, preemptions and (with speculation) draft counters (for /metrics and benches)."""
        s = self.scheduler
        stats: dict[str, float] = {
            "num_waiting": len(s.waiting),
            "num_running": len(s.running),
            "kv_cache_usage": self.block_manager.usage,
            "num_preemptions": s.num_preemptions,
        }
        if self.speculator is not None:
            stats.update(self.speculator.stats())
        return stats
