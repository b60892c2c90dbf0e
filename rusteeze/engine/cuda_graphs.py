"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed over static inputs.

A decode step of a small model on a GPU is dominated by Python and launch overhead (a few
hundred kernel launches per forward, each a few microseconds of host work). Capturing the
forward once per batch size and replaying it costs one launch per step instead.

Invariants:

* Only pure decode steps replay (every sequence has exactly one new token, so the step has
  as many tokens as sequences) with a batch no larger than the largest bucket. Prefill,
  chunked prefill, mixed steps and larger batches run eagerly. So does everything under
  ``enforce_eager``, on the CPU, and on a kernel backend other than Triton (the torch
  kernels read metadata on the host, which a graph cannot capture).
* A batch of ``b`` sequences replays the graph of the smallest bucket ``n >= b``. Rows
  ``b..n`` are padding: token 0 at position 0, slot ``-1`` (the store kernels skip negative
  slots: a padded row writes nothing, so it cannot touch a live block, and in the
  poisoned-KV debug mode the always-NaN block stays NaN), a one-token context and a block
  table pointing only at the runner's never-read block. Their outputs (possibly NaN: that
  block is NaN in debug mode) are dropped; every op of the model is row-wise outside
  attention, and attention is per sequence, so padding never reaches a real row.
* The static buffers are written only by :meth:`DecodeGraphRunner.forward`, on the device,
  without a host sync; ``cu_seqlens_q`` is ``0..n`` and never changes. The block table is
  ``ceil(max_model_len / block_size)`` wide, so the attention kernel's launch shape (and
  split-K choice) is fixed per bucket; the kernel reads only each sequence's own keys.
* ``capture=False`` runs the same padding and unpadding eagerly: that is how the CPU tests
  check that a padded step equals the unpadded one.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import torch
from torch import nn

from rusteeze.config import EngineConfig
from rusteeze.engine.kv_cache import KVCache
from rusteeze.models.attention import AttentionMetadata

if TYPE_CHECKING:
    from rusteeze.engine.model_runner import ModelRunner

MAX_GRAPH_BATCH = 512  # the largest bucket captured, whatever max_num_seqs says
PAD_SLOT = -1  # slot_mapping of a padded row: the store kernels skip it


def graph_buckets(max_num_seqs: int) -> tuple[int, ...]:
    """The batch sizes captured: 1, 2, 4, 8, ... below the cap, then the cap itself.

    The cap is ``min(max_num_seqs, MAX_GRAPH_BATCH)``: ``graph_buckets(48)`` is
    ``(1, 2, 4, 8, 16, 32, 48)``.
    """
    cap = min(max_num_seqs, MAX_GRAPH_BATCH)
    buckets = []
    size = 1
    while size < cap:
        buckets.append(size)
        size *= 2
    return (*buckets, cap)


def bucket_for(num_tokens: int, num_seqs: int, buckets: tuple[int, ...]) -> int | None:
    """The bucket a step replays, or None when it runs eagerly.

    Args:
        num_tokens: tokens in the step (T).
        num_seqs: sequences in the step (B).
        buckets: ascending batch sizes, as from :func:`graph_buckets`.

    Returns:
        The smallest bucket holding ``num_seqs`` for a pure decode step (``T == B``);
        None for a step with a prefill chunk, an empty step or a batch above every bucket.
    """
    if num_tokens != num_seqs or num_seqs == 0:
        return None
    return next((n for n in buckets if n >= num_seqs), None)


class StaticInputs:
    """The device buffers a graph reads, sized for the largest bucket.

    Args:
        max_batch: rows (the largest bucket).
        max_blocks: block-table width (``ceil(max_model_len / block_size)``).
        unread_block: the block id padding points at (never read for a real sequence).
        device: where the model runs.
    """

    def __init__(self, max_batch: int, max_blocks: int, unread_block: int, device: torch.device) -> None:
        self.max_blocks = max_blocks
        self.unread_block = unread_block
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, device=device)  # [N]
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)  # [N]
        self.slot_mapping = torch.full((max_batch,), PAD_SLOT, dtype=torch.long, device=device)  # [N]
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)  # [N]
        self.block_tables = torch.full(
            (max_batch, max_blocks), unread_block, dtype=torch.int32, device=device
        )  # [N, max_blocks]
        self.cu_seqlens_q = torch.arange(max_batch + 1, dtype=torch.int32, device=device)  # [N + 1], fixed

    def fill(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, bucket: int) -> None:
        """Copy a decode step of ``b = meta.num_seqs`` rows in and pad rows ``b..bucket`` (device copies only)."""
        b, width = meta.num_seqs, meta.block_tables.shape[1]
        self.input_ids[:b].copy_(input_ids)
        self.input_ids[b:bucket].zero_()
        self.positions[:b].copy_(positions)
        self.positions[b:bucket].zero_()
        self.slot_mapping[:b].copy_(meta.slot_mapping)
        self.slot_mapping[b:bucket].fill_(PAD_SLOT)
        self.seq_lens[:b].copy_(meta.seq_lens)
        self.seq_lens[b:bucket].fill_(1)
        self.block_tables[:b, :width].copy_(meta.block_tables)
        self.block_tables[:b, width:].fill_(self.unread_block)
        self.block_tables[b:bucket].fill_(self.unread_block)

    def view(self, bucket: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """input_ids [n], positions [n] and the metadata of the first ``n = bucket`` rows (views)."""
        meta = AttentionMetadata(
            cu_seqlens_q=self.cu_seqlens_q[: bucket + 1],
            seq_lens=self.seq_lens[:bucket],
            slot_mapping=self.slot_mapping[:bucket],
            block_tables=self.block_tables[:bucket],
        )
        return self.input_ids[:bucket], self.positions[:bucket], meta


class DecodeGraphRunner:
    """Runs decode steps through per-bucket CUDA graphs (or, with ``capture=False``, the same padding eagerly).

    Args:
        model: the decoder (``forward(input_ids, positions, kv_caches, meta) -> [T, H]``).
        kv_caches: the per-layer caches the graphs read and write (fixed for the runner's life).
        buckets: ascending batch sizes (:func:`graph_buckets`).
        max_blocks: block-table width, ``ceil(max_model_len / block_size)``.
        unread_block: the block id for table entries never read (the NaN block in debug mode).
        device: where the model runs.
        capture: capture CUDA graphs (CUDA only); False pads and runs eagerly.
    """

    def __init__(
        self,
        model: nn.Module,
        kv_caches: list[KVCache],
        buckets: tuple[int, ...],
        max_blocks: int,
        unread_block: int,
        device: torch.device,
        capture: bool = True,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.buckets = buckets
        self.capture = capture
        self.inputs = StaticInputs(buckets[-1], max_blocks, unread_block, device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}  # bucket -> (graph, [n, H] output)
        if capture:
            self._capture_all()

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Capture one graph per bucket, largest first, all in one memory pool (inputs all padding)."""
        pool = torch.cuda.graph_pool_handle()
        for bucket in reversed(self.buckets):
            ids, pos, meta = self.inputs.view(bucket)
            for _ in range(2):  # compiles the Triton kernels for this shape and settles the allocator
                self.model(ids, pos, self.kv_caches, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = self.model(ids, pos, self.kv_caches, meta)  # [n, H]
            self.graphs[bucket] = (graph, out)
        torch.cuda.synchronize()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor | None:
        """The step's [B, H] hidden states through a graph, or None when the step must run eagerly.

        Args:
            input_ids: [T] int64; positions: [T] int64; meta: the step's metadata (B sequences).

        Returns:
            [B, H] hidden states (a view of the graph's output: read it before the next step),
            or None: not a pure decode step, a batch above every bucket, or a block table wider
            than the static one.
        """
        bucket = bucket_for(input_ids.shape[0], meta.num_seqs, self.buckets)
        if bucket is None or meta.block_tables.shape[1] > self.inputs.max_blocks:
            return None
        self.inputs.fill(input_ids, positions, meta, bucket)
        if self.capture:
            graph, out = self.graphs[bucket]
            graph.replay()
        else:
            ids, pos, padded = self.inputs.view(bucket)
            out = self.model(ids, pos, self.kv_caches, padded)  # [n, H]
        return out[: meta.num_seqs]


def eager_reason(config: EngineConfig, device: torch.device, kernel_backend: str) -> str | None:
    """Why an engine runs every step eagerly, or None when its decode steps use CUDA graphs."""
    if config.enforce_eager:
        return "enforce_eager is set"
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device; the model runs on {device.type}"
    if kernel_backend != "triton":
        return f"the {kernel_backend} kernels read step metadata on the host, which a CUDA graph cannot capture"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "the Triton interpreter (TRITON_INTERPRET=1) runs the kernels on the host"
    return None


def build_decode_graphs(
    config: EngineConfig, kernel_backend: str, runner: ModelRunner, max_model_len: int
) -> DecodeGraphRunner | None:
    """The engine's decode-graph runner (captured now), or None when it runs eagerly (see :func:`eager_reason`)."""
    if eager_reason(config, runner.device, kernel_backend) is not None:
        return None
    return DecodeGraphRunner(
        runner.model,
        runner.kv_caches,
        graph_buckets(config.max_num_seqs),
        math.ceil(max_model_len / runner.block_size),
        runner.unread_block,
        runner.device,
    )
