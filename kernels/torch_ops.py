"""Torch implementations of every hot op: the CPU path and the Triton kernels' twin.

Each function here has the same signature and semantics as its Triton
counterpart in ``rusteeze.kernels.triton_ops``. They are written for clarity
first and for CPU speed second (vectorized; no Python loop over tokens).
"""

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension.

    Args:
        x: [T, H] activations.
        weight: [H] scale.
        eps: added to the mean square before the square root.

    Returns:
        [T, H] normalized activations, in x's dtype.
    """
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
    cos_sin = cos_sin_cache[positions]  # [T, R]
    rot = cos_sin.shape[-1]
    cos, sin = cos_sin.chunk(2, dim=-1)  # [T, R/2] each
    cos = cos.unsqueeze(1)  # [T, 1, R/2]
    sin = sin.unsqueeze(1)
    for t in (q, k):
        part = t[..., :rot].float()  # [T, H, R]
        if is_neox:
            x1, x2 = part.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = part[..., 0::2], part[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        t[..., :rot] = out.to(t.dtype)


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
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep].to(v_cache.dtype)


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
    block_size = k_cache.shape[1]
    q_lens = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).tolist()
    ctx_lens = seq_lens.tolist()
    starts = cu_seqlens_q[:-1].tolist()
    decode = [b for b, n in enumerate(q_lens) if n == 1]
    if decode:
        _decode_attention(q, k_cache, v_cache, seq_lens, block_tables, scale, sliding_window, decode, starts, out)
    for b, q_len in enumerate(q_lens):
        if q_len <= 1:
            continue
        ctx = ctx_lens[b]
        nblocks = (ctx + block_size - 1) // block_size
        blocks = block_tables[b, :nblocks].long()
        k = k_cache[blocks].flatten(0, 1)[:ctx]  # [ctx, Hk, D]
        v = v_cache[blocks].flatten(0, 1)[:ctx]
        q_pos = torch.arange(ctx - q_len, ctx, device=q.device).unsqueeze(1)  # [q_len, 1]
        k_pos = torch.arange(ctx, device=q.device).unsqueeze(0)  # [1, ctx]
        mask = k_pos <= q_pos
        if sliding_window is not None:
            mask &= k_pos > q_pos - sliding_window
        s = starts[b]
        out[s : s + q_len] = _sdpa(q[s : s + q_len], k, v, mask, scale)
    return out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention for one sequence. q: [Q, Hq, D], k/v: [K, Hk, D], mask: [Q, K] bool."""
    hq, hk = q.shape[1], k.shape[1]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, Hq, Q, D]
        k.transpose(0, 1).unsqueeze(0).to(q.dtype),  # [1, Hk, K, D]
        v.transpose(0, 1).unsqueeze(0).to(q.dtype),
        attn_mask=mask,
        scale=scale,
        enable_gqa=hq != hk,
    )  # [1, Hq, Q, D]
    return o[0].transpose(0, 1)


def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    sliding_window: int | None,
    decode: list[int],
    starts: list[int],
    out: torch.Tensor,
) -> None:
    """Single-token queries of several sequences at once, padded to the longest context."""
    block_size = k_cache.shape[1]
    idx = torch.tensor(decode, device=q.device)
    rows = torch.tensor([starts[b] for b in decode], device=q.device)
    lens = seq_lens[idx].long()  # [B]
    max_len = int(lens.max())
    nblocks = (max_len + block_size - 1) // block_size
    tables = block_tables[idx, :nblocks].long()  # [B, nblocks]
    k = k_cache[tables].flatten(1, 2)[:, :max_len]  # [B, L, Hk, D]
    v = v_cache[tables].flatten(1, 2)[:, :max_len]
    mask = None  # [B, L] keys each query may see; None when all of them (equal lengths, no window)
    if sliding_window is not None or int(lens.min()) != max_len:
        k_pos = torch.arange(max_len, device=q.device).unsqueeze(0)  # [1, L]
        mask = k_pos < lens.unsqueeze(1)
        if sliding_window is not None:
            mask &= k_pos >= (lens - sliding_window).unsqueeze(1)
        # Padding slots (past a shorter context) hold whatever the cache held, maybe NaN:
        # zero them, since a masked score still multiplies its value (0 · NaN = NaN).
        k = k.masked_fill(~mask[:, :, None, None], 0)
        v = v.masked_fill(~mask[:, :, None, None], 0)
        mask = mask[:, None, None, :]  # [B, 1, 1, L]
    qb = q[rows]  # [B, Hq, D]
    o = F.scaled_dot_product_attention(
        qb.unsqueeze(2),  # [B, Hq, 1, D]
        k.transpose(1, 2).to(q.dtype),  # [B, Hk, L, D]
        v.transpose(1, 2).to(q.dtype),
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[2],
    )  # [B, Hq, 1, D]
    out[rows] = o.squeeze(2)


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
