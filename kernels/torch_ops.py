"""Torch implementations of every hot op: the CPU path and the Triton kernels' twin.

Each function here has the same signature and semantics as its Triton
counterpart in ``rusteeze.kernels.triton_ops``. They are written for clarity
first and for CPU speed second (vectorized; no Python loop over tokens).

Every layer of a forward pass calls the same op with the same per-step
tensors (positions, slot mapping, attention metadata), so the index work that
depends only on them is done once per step, by a :class:`StepPlan`: the step's
``AttentionMetadata`` owns one (``meta.plan``, so it dies with the step), and
the model's forward makes it the current plan of its thread for the duration
of the pass (``with meta.plan.active(): ...``). An op called with tensors that
are not the current plan's (or outside any forward, as the kernel tests call
them) computes its index work itself.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class StepPlan:
    """The torch path's per-step index work, computed on first use and shared by every layer.

    Holds the step's metadata tensors (never edited in place once a step runs)
    and, lazily: the attention plan per (block size, window), the rotary rows
    for the step's positions, and the store's padding filter.

    Args:
        cu_seqlens_q, seq_lens, slot_mapping, block_tables: the step's
            ``AttentionMetadata`` tensors (see ``rusteeze.models.attention``).
    """

    def __init__(
        self,
        cu_seqlens_q: torch.Tensor,
        seq_lens: torch.Tensor,
        slot_mapping: torch.Tensor,
        block_tables: torch.Tensor,
    ) -> None:
        self.cu_seqlens_q = cu_seqlens_q
        self.seq_lens = seq_lens
        self.slot_mapping = slot_mapping
        self.block_tables = block_tables
        self._attention: dict[tuple[int, int | None], _BatchPlan] = {}
        self._rotation: tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._store: tuple[torch.Tensor | None] | None = None

    @contextmanager
    def active(self) -> Iterator["StepPlan"]:
        """Make this the current plan of the calling thread (and context) until the block exits."""
        token = _current_plan.set(self)
        try:
            yield self
        finally:
            _current_plan.reset(token)

    def attention(
        self,
        cu_seqlens_q: torch.Tensor,
        seq_lens: torch.Tensor,
        block_tables: torch.Tensor,
        block_size: int,
        sliding_window: int | None,
    ) -> "_BatchPlan | None":
        """The batch plan for these tensors, or None when they are not this step's."""
        if (
            cu_seqlens_q is not self.cu_seqlens_q
            or seq_lens is not self.seq_lens
            or block_tables is not self.block_tables
        ):
            return None
        key = (block_size, sliding_window)
        plan = self._attention.get(key)
        if plan is None:
            plan = self._attention[key] = _batch_plan(cu_seqlens_q, seq_lens, block_tables, block_size, sliding_window)
        return plan

    def rotation(self, positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`_rotation` of the step's positions (one forward passes the same positions to every layer)."""
        last = self._rotation
        if last is None or last[0] is not positions or last[1] is not cos_sin_cache:
            last = self._rotation = (positions, cos_sin_cache, _rotation(positions, cos_sin_cache))
        return last[2]

    def store_filter(self, slot_mapping: torch.Tensor) -> torch.Tensor | None:
        """:func:`_padding_filter` of the step's slot mapping."""
        if slot_mapping is not self.slot_mapping:
            return _padding_filter(slot_mapping)
        if self._store is None:
            self._store = (_padding_filter(slot_mapping),)
        return self._store[0]


# The plan of the forward pass running in this thread (or asyncio context), if any:
# a scoped pointer, set and reset by StepPlan.active(); the plan itself belongs to the step.
_current_plan: ContextVar[StepPlan | None] = ContextVar("rusteeze_torch_step_plan", default=None)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension.

    Args:
        x: [T, H] activations.
        weight: [H] scale.
        eps: added to the mean square before the square root.

    Returns:
        [T, H] normalized activations, in x's dtype.
    """
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)  # one fused op, same float32 math
    xf = x.float()
    variance = xf.pow(2).mean(dim=-1, keepdim=True)
    return (xf * torch.rsqrt(variance + eps)).to(x.dtype) * weight


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``residual += x`` (in place), then RMSNorm of the new residual.

    Args:
        x: [T, H] the block's output.
        residual: [T, H] the residual stream; updated in place.
        weight: [H] scale.
        eps: RMSNorm epsilon.

    Returns:
        [T, H] ``rms_norm(residual + x)``.
    """
    residual.add_(x)
    return rms_norm(residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
) -> None:
    """Rotate q and k in place by their positions.

    Args:
        positions: [T] int64 absolute positions.
        q: [T, Hq, D] queries; rotated in place.
        k: [T, Hk, D] keys; rotated in place.
        cos_sin_cache: [max_pos, R] float32, cos in the first R/2 columns and
            sin in the last R/2; R (the rotary dim) may be smaller than D, in
            which case only the first R features of each head rotate.
        is_neox: True for the half-split layout (HF Llama ``rotate_half``),
            False for the interleaved (GPT-J) layout.
    """
    rot = cos_sin_cache.shape[-1]
    step = _current_plan.get()
    cos, sin = _rotation(positions, cos_sin_cache) if step is None else step.rotation(positions, cos_sin_cache)
    for t in (q, k):
        part = t[..., :rot]  # [T, H, R] view
        if is_neox and t.dtype == torch.float32:
            # x·cos + rotate_half(x)·sin, rotate_half(x) = (-x2, x1): the sign lives in ``sin``.
            swapped = torch.cat((part[..., rot // 2 :], part[..., : rot // 2]), dim=-1)
            part.mul_(cos).addcmul_(swapped, sin)
            continue
        x = part.float()
        half_cos, half_sin = cos[..., : rot // 2], sin[..., rot // 2 :]  # [T, 1, R/2]
        if is_neox:
            x1, x2 = x.chunk(2, dim=-1)
            out = torch.cat((x1 * half_cos - x2 * half_sin, x2 * half_cos + x1 * half_sin), dim=-1)
        else:
            x1, x2 = x[..., 0::2], x[..., 1::2]
            out = torch.stack((x1 * half_cos - x2 * half_sin, x2 * half_cos + x1 * half_sin), dim=-1).flatten(-2)
        part.copy_(out)


def _rotation(positions: torch.Tensor, cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, 1, R] (cos | cos) and (-sin | sin) rows of the table at ``positions``."""
    cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)  # [T, R/2] each
    return torch.cat((cos, cos), dim=-1).unsqueeze(1), torch.cat((-sin, sin), dim=-1).unsqueeze(1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: ``silu(x[:, :I]) * x[:, I:]``.

    Args:
        x: [T, 2I] the fused gate and up projections.

    Returns:
        [T, I].
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys and values into the paged cache.

    Args:
        key: [T, Hk, D] new keys.
        value: [T, Hk, D] new values.
        k_cache: [num_blocks, block_size, Hk, D]; written in place.
        v_cache: [num_blocks, block_size, Hk, D]; written in place.
        slot_mapping: [T] int64 flat slot (block * block_size + offset) of
            each token; -1 means "do not store" (padding).
    """
    step = _current_plan.get()
    keep = _padding_filter(slot_mapping) if step is None else step.store_filter(slot_mapping)
    slots = slot_mapping.long()
    if keep is not None:
        slots, key, value = slots[keep], key[keep], value[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value.to(v_cache.dtype))


def _padding_filter(slot_mapping: torch.Tensor) -> torch.Tensor | None:
    """[T] bool mask of the tokens to store, or None when every token is stored."""
    keep = slot_mapping >= 0
    return None if bool(keep.all()) else keep


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of a flat batch of query tokens over the paged KV cache.

    One call serves prefill, chunked prefill, prefix-cache hits and decode:
    sequence ``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``, which
    are the *last* ``q_len`` tokens of its ``seq_lens[b]``-token context, whose
    keys and values (the new ones included) are already in the cache. Query
    token at absolute position ``p`` sees keys ``j <= p`` (and ``j > p - window``
    when a sliding window is set).

    Only the blocks holding a key that some query of the sequence can see are
    read, as in the Triton kernel: with a window, blocks before the first
    query's window are never touched (the block manager releases them, and
    their table entries, -1 or anything else, point at blocks that belong to
    someone else). Slots that are read but hidden (the tail of a shorter
    sequence in a decode batch, the head of a window's first block) may hold
    anything, NaN included; they never reach the result.

    Args:
        q: [T, Hq, D] queries.
        k_cache: [num_blocks, block_size, Hk, D].
        v_cache: [num_blocks, block_size, Hk, D].
        cu_seqlens_q: [B + 1] int32 query offsets.
        seq_lens: [B] int32 context length of each sequence (cached + new).
        block_tables: [B, max_blocks] int32 physical block of each logical block.
        scale: softmax scale (usually ``D ** -0.5``).
        sliding_window: attend to at most this many most recent keys, or None.

    Returns:
        [T, Hq, D] attention output.
    """
    out = torch.empty_like(q)
    step = _current_plan.get()
    args = (cu_seqlens_q, seq_lens, block_tables, k_cache.shape[1], sliding_window)
    plan = step.attention(*args) if step is not None else None
    if plan is None:
        plan = _batch_plan(*args)
    if plan.decode is not None:
        _decode_attention(q, k_cache, v_cache, plan.decode, scale, out)
    for p in plan.prefills:
        rows = slice(p.row, p.row + p.q_len)
        k = k_cache.index_select(0, p.blocks).flatten(0, 1)[p.offset : p.offset + p.num_keys]  # [keys, Hk, D]
        v = v_cache.index_select(0, p.blocks).flatten(0, 1)[p.offset : p.offset + p.num_keys]
        out[rows] = _sdpa(q[rows], k, v, p.mask, scale)
    return out


def _first_visible_key(pos: int, sliding_window: int | None) -> int:
    """Position of the first key a query at ``pos`` sees."""
    return 0 if sliding_window is None else max(0, pos - sliding_window + 1)


@dataclass
class _PrefillPlan:
    """Where the queries of one multi-token sequence read the cache (shared by every layer)."""

    row: int  # first query row in the flat batch
    q_len: int  # query rows
    num_keys: int  # keys read: positions [first, ctx) where first is the first query's first visible key
    blocks: torch.Tensor  # [nblocks] int64 physical blocks holding those keys
    offset: int  # slot of key ``first`` in the gathered blocks
    mask: torch.Tensor | None  # [q_len, num_keys] bool keys each query sees; None: plain causal (whole prompt)


@dataclass
class _DecodePlan:
    """Where the single-token queries of one batch read the cache (shared by every layer)."""

    rows: torch.Tensor  # [B] query row of each decoding sequence
    blocks: torch.Tensor  # [B * nblocks] int64 physical blocks, sequence-major, from each one's window start
    length: int  # keys read per sequence, L: the widest span (its tail past shorter ones is masked)
    mask: torch.Tensor | None  # [B, 1, 1, L] keys each query may see; None when all of them
    hidden: torch.Tensor  # [M] int64 flat positions in the gathered [B * whole blocks] keys that the mask hides


@dataclass
class _BatchPlan:
    decode: _DecodePlan | None
    prefills: list[_PrefillPlan]


def _batch_plan(
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    block_size: int,
    sliding_window: int | None,
) -> _BatchPlan:
    """The per-batch index work (a StepPlan computes it once per step)."""
    starts = cu_seqlens_q.tolist()
    ctx_lens = seq_lens.tolist()
    tables = block_tables.long().clamp_min(0)  # -1 (unused) reads block 0, masked
    device = seq_lens.device
    decode, prefills = [], []
    for b, ctx in enumerate(ctx_lens):
        q_len = starts[b + 1] - starts[b]
        if q_len == 1:
            decode.append(b)
        elif q_len > 1:
            first = _first_visible_key(ctx - q_len, sliding_window)
            lo = first // block_size
            mask = None  # a whole prompt without a window is plain causal attention
            if q_len != ctx or sliding_window is not None:
                q_pos = torch.arange(ctx - q_len, ctx, device=device).unsqueeze(1)  # [q_len, 1]
                k_pos = torch.arange(first, ctx, device=device).unsqueeze(0)  # [1, keys]
                mask = k_pos <= q_pos
                if sliding_window is not None:
                    mask &= k_pos > q_pos - sliding_window
            blocks = tables[b, lo : -(-ctx // block_size)]
            prefills.append(_PrefillPlan(starts[b], q_len, ctx - first, blocks, first - lo * block_size, mask))
    plan = _BatchPlan(None, prefills)
    if decode:
        plan.decode = _decode_plan(decode, starts, ctx_lens, tables, block_size, sliding_window, device)
    return plan


def _decode_plan(
    decode: list[int],
    starts: list[int],
    ctx_lens: list[int],
    tables: torch.Tensor,
    block_size: int,
    sliding_window: int | None,
    device: torch.device,
) -> _DecodePlan:
    """Sequence ``b`` reads whole blocks from the one holding its first visible key; spans padded to the widest."""
    lens_list = [ctx_lens[b] for b in decode]
    idx = torch.tensor(decode, device=device)
    rows = torch.tensor([starts[b] for b in decode], device=device)
    if sliding_window is None:
        width = max(lens_list)  # L
        nblocks = -(-width // block_size)
        blocks = tables[idx, :nblocks].reshape(-1)  # [B * nblocks]
        if min(lens_list) == width:  # every single-stream step: nothing to hide
            return _DecodePlan(rows, blocks, width, None, torch.empty(0, dtype=torch.long, device=device))
        firsts = torch.zeros(len(decode), dtype=torch.long, device=device)
    else:
        first_blocks = [_first_visible_key(n - 1, sliding_window) // block_size for n in lens_list]
        width = max(n - f * block_size for n, f in zip(lens_list, first_blocks, strict=True))
        nblocks = -(-width // block_size)
        firsts = torch.tensor(first_blocks, device=device)
        # Columns past a sequence's last block read whatever the table holds there (masked below).
        cols = (firsts.unsqueeze(1) + torch.arange(nblocks, device=device)).clamp_max(tables.shape[1] - 1)
        blocks = tables[idx.unsqueeze(1), cols].reshape(-1)  # [B * nblocks]
    lens = torch.tensor(lens_list, device=device).unsqueeze(1)  # [B, 1]
    k_pos = firsts.unsqueeze(1) * block_size + torch.arange(width, device=device)  # [B, L] absolute key positions
    visible = k_pos < lens
    if sliding_window is not None:
        visible &= k_pos >= lens - sliding_window
    seq, pos = (~visible).nonzero().unbind(1)
    if seq.numel() == 0:
        return _DecodePlan(rows, blocks, width, None, seq)
    hidden = seq * (nblocks * block_size) + pos  # flat rows of the gathered [B * whole blocks] keys
    return _DecodePlan(rows, blocks, width, visible[:, None, None, :], hidden)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention for one sequence. q: [Q, Hq, D], k/v: [K, Hk, D], mask: [Q, K] bool or None (causal)."""
    hq, hk = q.shape[1], k.shape[1]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, Hq, Q, D]
        k.transpose(0, 1).unsqueeze(0).to(q.dtype),  # [1, Hk, K, D]
        v.transpose(0, 1).unsqueeze(0).to(q.dtype),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=hq != hk,
    )  # [1, Hq, Q, D]
    return o[0].transpose(0, 1)


def _decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: _DecodePlan, scale: float, out: torch.Tensor
) -> None:
    """Single-token queries of several sequences at once, each over its whole blocks."""
    b, hk, d = plan.rows.shape[0], k_cache.shape[2], k_cache.shape[3]
    # index_select copies whole blocks, ~3x faster than advanced indexing on CPU.
    k = k_cache.index_select(0, plan.blocks).view(b, -1, hk, d)  # [B, whole blocks, Hk, D]
    v = v_cache.index_select(0, plan.blocks).view(b, -1, hk, d)
    if plan.hidden.numel():
        # Hidden slots may hold anything, NaN included, and a masked score still
        # multiplies its value (0 · NaN = NaN): zero just those rows of the copy.
        k.view(-1, hk, d).index_fill_(0, plan.hidden, 0)
        v.view(-1, hk, d).index_fill_(0, plan.hidden, 0)
    k, v = k[:, : plan.length], v[:, : plan.length]  # [B, L, Hk, D]
    o = F.scaled_dot_product_attention(
        q[plan.rows].unsqueeze(2),  # [B, Hq, 1, D]
        k.transpose(1, 2).to(q.dtype),  # [B, Hk, L, D]
        v.transpose(1, 2).to(q.dtype),
        attn_mask=plan.mask,
        scale=scale,
        enable_gqa=q.shape[1] != hk,
    )  # [B, Hq, 1, D]
    out[plan.rows] = o.squeeze(2)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (weight * scale[:, None]).T`` for int8 per-output-channel weights.

    Args:
        x: [T, K] activations.
        weight: [N, K] int8.
        scale: [N] per-channel scale.

    Returns:
        [T, N] in x's dtype.
    """
    return F.linear(x, weight.to(x.dtype)) * scale.to(x.dtype)


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int
) -> torch.Tensor:
    """``x @ W.T`` where W is int4 group-wise asymmetric: ``W = q * scale + min``.

    Args:
        x: [T, K] activations.
        packed: [N, K // 2] uint8; byte j holds q[2j] in its low nibble and
            q[2j + 1] in its high nibble.
        scales: [N, K // group_size] per-group scale.
        mins: [N, K // group_size] per-group offset (the value of q == 0).
        group_size: columns per group (32, 64 or 128).

    Returns:
        [T, N] in x's dtype.
    """
    return F.linear(x, dequantize_int4(packed, scales, mins, group_size).to(x.dtype))


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int) -> torch.Tensor:
    """Unpack int4 weights to float32. packed: [N, K/2] uint8 → [N, K]."""
    n = packed.shape[0]
    q = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(n, -1, group_size).float()  # [N, G, gs]
    w = q * scales.float().unsqueeze(-1) + mins.float().unsqueeze(-1)
    return w.reshape(n, -1)
