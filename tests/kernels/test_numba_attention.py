"""Numba paged attention against the torch op and a float64 loop over each sequence's logical keys.

Caches are built with shuffled block tables; every slot that holds no key —
the tail of a sequence's last block, unused blocks, and sliding-window blocks
released from the table (entry -1) — holds NaN, so a kernel that reads one shows.
"""

import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
import torch

from rusteeze.errors import KernelError
from rusteeze.kernels import numba_attention, torch_ops
from rusteeze.kernels.numba_attention import paged_attention

TOL = {"atol": 1e-5, "rtol": 1e-5}


def reference(q, keys, values, specs, scale, window) -> torch.Tensor:
    """float64, one query row and head at a time, over the sequence's keys in logical order."""
    hq, hk = q.shape[1], keys[0].shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    row = 0
    for (ctx, q_len), k_seq, v_seq in zip(specs, keys, values, strict=True):
        for i in range(q_len):
            pos = ctx - q_len + i
            lo = max(0, pos - window + 1) if window else 0
            for h in range(hq):
                k = k_seq[lo : pos + 1, h // (hq // hk)].double()
                v = v_seq[lo : pos + 1, h // (hq // hk)].double()
                w = torch.softmax(k @ q[row, h].double() * scale, dim=0)
                out[row, h] = w @ v
            row += 1
    return out


def make_batch(specs, block_size, hq, hk, dim, seed=0, window=None, release=False, pad=-1):
    """Random K/V per sequence in shuffled cache blocks; unused slots are NaN.

    With ``release``, every key before the window of the sequence's first query
    is poisoned and the blocks wholly before it leave the table (-1), as the
    block manager frees them.
    """
    gen = torch.Generator().manual_seed(seed)
    need = [math.ceil(ctx / block_size) for ctx, _ in specs]
    num_blocks = sum(need) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    k_cache = torch.full((num_blocks, block_size, hk, dim), float("nan"))
    v_cache = torch.full_like(k_cache, float("nan"))
    tables = torch.full((len(specs), max(need) + 2), pad, dtype=torch.int32)
    keys, values = [], []
    for b, (ctx, q_len) in enumerate(specs):
        blocks, order = order[: need[b]], order[need[b] :]
        tables[b, : need[b]] = torch.tensor(blocks, dtype=torch.int32)
        k_seq = torch.randn(ctx, hk, dim, generator=gen)
        v_seq = torch.randn(ctx, hk, dim, generator=gen)
        for j in range(ctx):
            k_cache[blocks[j // block_size], j % block_size] = k_seq[j]
            v_cache[blocks[j // block_size], j % block_size] = v_seq[j]
        if release and window:  # no query of this step sees keys before its first query's window
            first_visible = max(0, ctx - q_len - window + 1)
            for j in range(first_visible):
                k_cache[blocks[j // block_size], j % block_size] = float("nan")
                v_cache[blocks[j // block_size], j % block_size] = float("nan")
            tables[b, : first_visible // block_size] = -1
        keys.append(k_seq)
        values.append(v_seq)
    total = sum(q_len for _, q_len in specs)
    q = torch.randn(total, hq, dim, generator=gen)
    cu = torch.tensor([0] + [q_len for _, q_len in specs]).cumsum(0).to(torch.int32)
    seq_lens = torch.tensor([ctx for ctx, _ in specs], dtype=torch.int32)
    return q, k_cache, v_cache, cu, seq_lens, tables, keys, values


CASES = {
    # name: (specs [(context, query tokens)], block_size, Hq, Hk, D, window, release)
    "decode-mha-d64": ([(1, 1), (7, 1), (16, 1), (33, 1), (130, 1)], 16, 4, 4, 64, None, False),
    "decode-gqa3-d48": ([(5, 1), (64, 1), (65, 1), (200, 1)], 8, 9, 3, 48, None, False),
    "decode-gqa4-d64-block1": ([(3, 1), (40, 1)], 1, 8, 2, 64, None, False),
    "prefill-varlen-gqa3": ([(5, 5), (70, 70), (1, 1)], 16, 6, 2, 48, None, False),
    "chunked-prefill-prior-context-gqa4": ([(150, 37), (80, 80), (129, 64)], 16, 4, 1, 64, None, False),
    "mixed-decode-prefill-gqa3": ([(90, 1), (40, 40), (12, 0), (77, 1), (100, 19)], 4, 9, 3, 64, None, False),
    "sliding-window-released-decode": ([(200, 1), (37, 1), (64, 1)], 16, 9, 3, 64, 50, True),
    "sliding-window-released-chunks": ([(230, 30), (90, 1), (45, 45)], 8, 4, 4, 48, 33, True),
    "sliding-window-wider-than-context": ([(20, 20), (30, 1)], 16, 3, 1, 64, 1000, True),
    # head dims that 16 does not divide (masked tail loads), G = 2 and 5 (value rows in passes of 4 + 1)
    "decode-gqa2-d20-block4": ([(3, 1), (21, 1), (70, 1)], 4, 4, 2, 20, None, False),
    "chunks-gqa5-d72-window-released": ([(150, 6), (33, 2), (200, 1)], 8, 10, 2, 72, 41, True),
}


NUMBA_ONLY = 1 << 40  # torch_prefill_min_q that keeps every sequence in the Numba kernel


@pytest.mark.parametrize("min_q", [NUMBA_ONLY, None], ids=["numba-only", "default-routing"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference_and_torch_op(case, min_q):
    specs, block_size, hq, hk, dim, window, release = CASES[case]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = make_batch(
        specs, block_size, hq, hk, dim, seed=len(case), window=window, release=release
    )
    scale = dim**-0.5
    out = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, scale, window, torch_prefill_min_q=min_q)
    assert torch.isfinite(out).all()
    expected = reference(q, keys, values, specs, scale, window)
    torch.testing.assert_close(out.double(), expected, **TOL)
    torch_out = torch_ops.paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, scale, window)
    torch.testing.assert_close(out, torch_out, **TOL)


def test_long_prefill_through_torch_matches_numba():
    """Sequences routed to SDPA (torch_prefill_min_q) and the Numba path agree; decode rows are untouched."""
    specs = [(100, 100), (60, 1), (150, 50)]
    q, k_cache, v_cache, cu, seq_lens, tables, _keys, _values = make_batch(specs, 16, 9, 3, 64, seed=3, pad=0)
    numba_out = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.125, torch_prefill_min_q=NUMBA_ONLY)
    routed = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.125, torch_prefill_min_q=50)
    torch.testing.assert_close(routed, numba_out, **TOL)
    assert torch.equal(routed[100], numba_out[100])  # the decode row never left the Numba kernel


def test_rows_do_not_depend_on_the_batch_or_threads():
    """Batch invariance: a sequence's rows are bit-identical alone, in a batch, and on 1 or 2 threads."""
    specs = [(70, 1), (150, 33), (300, 1), (41, 41)]
    q, k_cache, v_cache, cu, seq_lens, tables, *_ = make_batch(specs, 16, 9, 3, 64, seed=5)
    batched = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.125, torch_prefill_min_q=NUMBA_ONLY)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single_thread = paged_attention(
            q, k_cache, v_cache, cu, seq_lens, tables, 0.125, torch_prefill_min_q=NUMBA_ONLY
        )
    finally:
        numba.set_num_threads(threads)
    assert torch.equal(batched, single_thread)
    for b in range(len(specs)):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        alone = paged_attention(
            q[rows],
            k_cache,
            v_cache,
            torch.tensor([0, rows.stop - rows.start], dtype=torch.int32),
            seq_lens[b : b + 1],
            tables[b : b + 1],
            0.125,
            torch_prefill_min_q=NUMBA_ONLY,
        )
        assert torch.equal(alone, batched[rows]), b


def test_decode_step_equals_the_prefill_row_of_the_same_position():
    """The last row of a prefill and a decode of that token compute the same thing, bit for bit."""
    specs = [(90, 90)]
    q, k_cache, v_cache, cu, seq_lens, tables, *_ = make_batch(specs, 16, 8, 2, 64, seed=6)
    prefill = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.125, torch_prefill_min_q=NUMBA_ONLY)
    decode = paged_attention(q[-1:], k_cache, v_cache, torch.tensor([0, 1], dtype=torch.int32), seq_lens, tables, 0.125)
    assert torch.equal(decode[0], prefill[-1])


@pytest.mark.parametrize(("window", "dim", "block_size"), [(None, 64, 16), (37, 40, 8), (None, 24, 1)])
def test_every_prefill_row_equals_its_decode_step(window, dim, block_size):
    """Each row of a prefill (one tile of 2, many tiles of 100) equals the decode step of its position, bit for bit.

    The decode's keys start at the row's own window, the prefill tile's at its first row's: the
    scores of one key then sit in other slots of a 16-key group, and must not change.
    """
    ctx = 100
    q, k_cache, v_cache, cu, seq_lens, tables, *_ = make_batch([(ctx, ctx)], block_size, 9, 3, dim, seed=8)
    full = paged_attention(q, k_cache, v_cache, cu, seq_lens, tables, 0.3, window, torch_prefill_min_q=NUMBA_ONLY)
    one = torch.tensor([0, 1], dtype=torch.int32)
    two = paged_attention(
        q[-2:], k_cache, v_cache, torch.tensor([0, 2], dtype=torch.int32), seq_lens, tables, 0.3, window
    )
    assert torch.equal(two, full[-2:])
    for pos in range(ctx):
        lens = torch.tensor([pos + 1], dtype=torch.int32)
        decode = paged_attention(q[pos : pos + 1], k_cache, v_cache, one, lens, tables, 0.3, window)
        assert torch.equal(decode[0], full[pos]), pos


def test_strided_q_int64_indices_and_fallback_dtype():
    specs = [(20, 4), (9, 1)]
    q, k_cache, v_cache, cu, seq_lens, tables, keys, values = make_batch(specs, 4, 4, 2, 16, seed=7)
    wide = torch.cat((q, torch.zeros_like(q)), dim=-1)[..., :16]  # a non-contiguous view
    expected = reference(q, keys, values, specs, 0.25, None)
    out = paged_attention(wide, k_cache, v_cache, cu.long(), seq_lens.long(), tables.long(), 0.25)
    torch.testing.assert_close(out.double(), expected, **TOL)
    half = paged_attention(q.half(), k_cache.half(), v_cache.half(), cu, seq_lens, tables, 0.25)  # torch fallback
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), expected, atol=2e-2, rtol=1e-2)


def _valid_args():
    return {
        "q": torch.zeros(3, 4, 16),
        "k_cache": torch.zeros(5, 4, 2, 16),
        "v_cache": torch.zeros(5, 4, 2, 16),
        "cu_seqlens_q": torch.tensor([0, 2, 3], dtype=torch.int32),
        "seq_lens": torch.tensor([2, 5], dtype=torch.int32),
        "block_tables": torch.zeros(2, 3, dtype=torch.int32),
    }


@pytest.mark.parametrize(
    ("change", "window", "match"),
    [
        ({"q": torch.zeros(3, 3, 16)}, None, "multiple of KV heads"),
        ({"q": torch.zeros(3, 4, 8)}, None, "k_cache has shape"),
        ({"q": torch.zeros(3, 4, 16, dtype=torch.int32)}, None, "q has dtype"),
        ({"v_cache": torch.zeros(5, 4, 1, 16)}, None, "v_cache has shape"),
        ({"cu_seqlens_q": torch.tensor([0, 3], dtype=torch.int32)}, None, "cu_seqlens_q has shape"),
        ({"seq_lens": torch.tensor([2.0, 5.0])}, None, "seq_lens has dtype"),
        ({"block_tables": torch.zeros(3, 3, dtype=torch.int32)}, None, "block_tables has shape"),
        ({"block_tables": torch.zeros(2, 3)}, None, "block_tables has dtype"),
        ({"cu_seqlens_q": torch.tensor([0, 3, 3], dtype=torch.int32)}, None, "sequence 0 .* inconsistent"),
        ({"seq_lens": torch.tensor([2, 13], dtype=torch.int32)}, None, "sequence 1 .* inconsistent"),
        ({"block_tables": torch.tensor([[0, 0, 0], [1, 9, 0]], dtype=torch.int32)}, None, "outside the cache"),
        ({"block_tables": torch.tensor([[-1, 0, 0], [1, 2, 0]], dtype=torch.int32)}, None, "outside the cache"),
        ({}, 0, "sliding_window"),
    ],
)
def test_rejects_bad_arguments(change, window, match):
    args = _valid_args()
    args.update(change)
    with pytest.raises(KernelError, match=match):
        paged_attention(*args.values(), 0.25, window)


def test_rejects_cuda_tensors_and_runs_valid_args():
    assert paged_attention(*_valid_args().values(), 0.25).shape == (3, 4, 16)
    if torch.cuda.is_available():
        args = {n: t.cuda() for n, t in _valid_args().items()}
        with pytest.raises(KernelError, match="CPU tensors"):
            paged_attention(*args.values(), 0.25)


def test_compiles_one_signature():
    """Index dtypes and layouts are normalized in the wrapper: one compiled kernel serves every call."""
    args = _valid_args()
    paged_attention(*args.values(), 0.25)
    drivers = (numba_attention._attention_serial, numba_attention._attention_parallel)
    before = [len(d.signatures) for d in drivers]  # (the fused decode layer may add its own caller's types)
    paged_attention(*(t.long() if not t.is_floating_point() else t for t in args.values()), 0.25, 3)
    assert [len(d.signatures) for d in drivers] == before


def test_threaded_and_single_thread_drivers_are_bit_identical(monkeypatch):
    from rusteeze.kernels import numba_attention

    torch.manual_seed(3)
    num_blocks, block_size, hk, hq, d = 12, 4, 2, 6, 16
    k_cache, v_cache = torch.randn(num_blocks, block_size, hk, d), torch.randn(num_blocks, block_size, hk, d)
    q = torch.randn(5, hq, d)  # three decodes and one 2-token chunk
    cu = torch.tensor([0, 1, 2, 3, 5], dtype=torch.int32)
    lens = torch.tensor([7, 3, 9, 6], dtype=torch.int32)
    tables = torch.randperm(num_blocks)[:12].view(4, 3).to(torch.int32)
    outs = []
    for rows in (1, 1 << 30):
        monkeypatch.setattr(numba_attention, "PARALLEL_MIN_ROWS", rows)
        outs.append(numba_attention.paged_attention(q, k_cache, v_cache, cu, lens, tables, 0.25))
    assert torch.equal(outs[0], outs[1])


_FRESH_OR_CACHED = """
import sys
import numpy as np
import torch
from rusteeze.kernels.numba_attention import paged_attention
g = torch.Generator().manual_seed(0)
kc, vc = torch.randn(16, 16, 3, 64, generator=g), torch.randn(16, 16, 3, 64, generator=g)
lens = torch.tensor([130, 77, 5, 64, 33, 100], dtype=torch.int32)
tables = torch.stack([torch.randperm(16, generator=g)[:9] for _ in range(6)]).to(torch.int32)
q = torch.randn(6, 9, 64, generator=g)  # one decode token per sequence
out = paged_attention(q, kc, vc, torch.arange(7, dtype=torch.int32), lens, tables, 0.125)
q2 = torch.randn(5, 9, 64, generator=g)  # a 5-token tile of sequence 0
out2 = paged_attention(q2, kc, vc, torch.tensor([0, 5], dtype=torch.int32), lens[:1], tables[:1], 0.125)
np.save(sys.argv[1], np.concatenate([out.numpy().ravel(), out2.numpy().ravel()]))
"""


def test_fresh_compile_and_cached_code_give_the_same_bits(tmp_path):
    """The first run after an install (compiling) and later runs (loading Numba's cache) agree bit for bit.

    With reassociation on, the two builds grouped float32 sums differently (1 ulp apart), so a greedy near-tie
    could decode differently on the first run.
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    outs = []
    for run in ("fresh", "cached"):
        path = tmp_path / f"{run}.npy"
        result = subprocess.run(
            [sys.executable, "-c", _FRESH_OR_CACHED, str(path)], capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        outs.append(np.load(path))
    assert np.array_equal(outs[0], outs[1])
