"""Draft-model proposals: a smaller model with the same vocabulary drafts greedily over its own paged KV cache.

Each speculating target sequence has a *shadow* sequence in the draft's cache holding the same
tokens. A proposal of ``k`` drafts runs the draft model ``k`` times over all shadows at once:
the first run computes whatever the shadow has not computed yet (the tokens the target appended
since the last proposal; the whole prompt the first time), each later run one token. The draft
is greedy, so the proposal is a deterministic function of the text: the target's point-mass
verification rule (``verify.py``) applies unchanged and keeps the target's distribution.

Afterwards each shadow is cut back to the target's tokens: its ``num_computed_tokens`` to at
most their count (the drafted positions are recomputed from the target's actual tokens next
time) and its blocks past them freed. A shadow that cannot get blocks, or would pass the draft's
context, simply does not draft this step.
"""

from __future__ import annotations

from typing import Any

import torch

from rusteeze.engine.block_manager import BlockManager
from rusteeze.engine.kv_cache import allocate_kv_caches, num_blocks_for
from rusteeze.engine.model_runner import ModelRunner
from rusteeze.engine.scheduler import ScheduledSeq, SchedulerOutput
from rusteeze.engine.sequence import Sequence
from rusteeze.errors import ConfigError
from rusteeze.sampling import SamplingParams

_GREEDY = SamplingParams(temperature=0, max_tokens=1).resolve({})


def load_draft(draft_model: str, target: Any, config: Any) -> Any:
    """Load the draft model like the target (device, dtype, kernels); ConfigError when its vocabulary differs."""
    from rusteeze.loader.model_loader import load_model

    draft_config = config.replace(model=draft_model, speculative=None, max_model_len=None)
    loaded = load_model(draft_config)
    if loaded.config.vocab_size != target.config.vocab_size:
        raise ConfigError(
            f"speculative.draft_model {draft_model!r} has a vocabulary of {loaded.config.vocab_size} tokens, the model "
            f"{target.config.vocab_size}: a draft model must share the model's tokenizer"
        )
    return loaded


class DraftProposer:
    """Greedy drafts from ``loaded`` (a LoadedModel) for target sequences.

    Args:
        loaded: the draft model.
        block_size: tokens per block of its cache.
        kv_cache_memory: bytes for its cache.
        max_model_len: the target's context (the draft's own, if shorter, limits drafting).
    """

    def __init__(self, loaded: Any, block_size: int, kv_cache_memory: int, max_model_len: int) -> None:
        cfg = loaded.config
        self.loaded = loaded
        self.max_len = min(max_model_len, cfg.max_position_embeddings)
        num_blocks = num_blocks_for(cfg, block_size, loaded.dtype, kv_cache_memory, block_size)
        caches = allocate_kv_caches(cfg, num_blocks, block_size, loaded.dtype, loaded.device)
        self.block_manager = BlockManager(num_blocks, block_size, False, cfg.sliding_window)
        self.runner = ModelRunner(loaded.model, caches, block_size, cfg.vocab_size, loaded.device, self.block_manager)
        self.shadows: dict[int, tuple[Sequence, Sequence]] = {}  # seq_id → (target, its shadow)
        self.num_params = sum(p.numel() for p in loaded.model.parameters())

    def propose(self, wanted: list[tuple[Sequence, int]]) -> dict[int, list[int]]:
        """Up to ``k`` greedy draft tokens by ``seq_id`` for each (target sequence, k) pair."""
        todo: list[tuple[Sequence, Sequence, int]] = []
        for seq, k in wanted:
            k = min(k, self.max_len - seq.num_tokens)
            shadow = self._shadow(seq)
            if k > 0:
                todo.append((seq, shadow, k))
        drafts: dict[int, list[int]] = {seq.seq_id: [] for seq, _, _ in todo}
        with torch.inference_mode():
            for step in range(max((k for _, _, k in todo), default=0)):
                batch = []
                for seq, shadow, k in todo:
                    if step < k and len(drafts[seq.seq_id]) == step:  # still drafting (not dropped)
                        num_new = shadow.num_tokens - shadow.num_computed_tokens
                        if self.block_manager.allocate_slots(shadow, num_new):
                            batch.append(ScheduledSeq(shadow, shadow.num_computed_tokens, num_new))
                if not batch:
                    break
                result = self.runner.run(SchedulerOutput(batch))
                for s, token in zip(batch, result.sampled, strict=True):
                    s.seq.num_computed_tokens = s.start + s.num_new_tokens
                    s.seq.token_ids.append(token)  # type: ignore[arg-type]
                    drafts[s.seq.seq_id].append(token)  # type: ignore[arg-type]
        for seq, shadow, _ in todo:  # back to the target's tokens
            del shadow.token_ids[seq.num_tokens :]
            shadow.num_computed_tokens = min(shadow.num_computed_tokens, seq.num_tokens - 1)
            self.block_manager.free_trailing(shadow, shadow.num_computed_tokens)
        return {i: d for i, d in drafts.items() if d}

    def _shadow(self, seq: Sequence) -> Sequence:
        """The draft-cache twin of ``seq``, brought up to its tokens (it only ever appends)."""
        _, shadow = self.shadows.get(seq.seq_id, (seq, None))
        if shadow is None or shadow.token_ids != seq.token_ids[: shadow.num_tokens]:
            if shadow is not None:
                self.block_manager.free(shadow)
            shadow = Sequence(seq.request_id, seq.token_ids[: seq.num_prompt_tokens], _GREEDY)
            shadow.seq_id = seq.seq_id
            self.shadows[seq.seq_id] = (seq, shadow)
        shadow.token_ids.extend(seq.token_ids[shadow.num_tokens :])
        return shadow

    def release_finished(self) -> None:
        """Free the shadows of finished (or aborted) target sequences."""
        for seq_id in [i for i, (target, _) in self.shadows.items() if target.is_finished]:
            self.block_manager.free(self.shadows.pop(seq_id)[1])
