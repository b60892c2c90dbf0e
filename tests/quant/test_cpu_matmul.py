"""The CPU quantized matmul (Numba tiles) against int4 / int8 math written out here."""

import threading

import pytest
import torch

from rusteeze.quant import cpu_matmul


def int4_reference(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """packed [N, K/2] (low nibble = even column), scales/mins [N, K/G] → W [N, K] float64, loop-free but plain."""
    n = packed.shape[0]
    q = torch.empty(n, packed.shape[1] * 2, dtype=torch.float64)
    q[:, 0::2] = (packed & 0x0F).double()
    q[:, 1::2] = (packed >> 4).double()
    group = q.shape[1] // scales.shape[1]
    return q * scales.double().repeat_interleave(group, 1) + mins.double().repeat_interleave(group, 1)


def random_int4(n: int, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """packed [N, K/2], scales/mins [N, K/G] float16 (as GGUF holds them: the tiles keep them exactly)."""
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8)
    return packed, (torch.rand(n, k // group) * 0.1).half(), (torch.randn(n, k // group) * 0.1).half()


TOKENS = [1, 3, cpu_matmul.NUMBA_MAX_TOKENS, cpu_matmul.NUMBA_MAX_TOKENS + 1, 300]


@pytest.mark.parametrize(("n", "k", "group"), [(64, 128, 32), (100, 96, 32), (200, 256, 64), (72, 256, 128)])
@pytest.mark.parametrize("tokens", TOKENS)
def test_int4_matmul_matches_written_out_math(n, k, group, tokens):
    torch.manual_seed(n + k + tokens)
    packed, scales, mins = random_int4(n, k, group)
    tiled = cpu_matmul.TiledInt4.from_packed(packed, scales, mins)
    x = torch.randn(tokens, k)
    out = tiled.matmul(x)
    assert out.shape == (tokens, n) and out.dtype == torch.float32
    expected = (x.double() @ int4_reference(packed, scales, mins).T).float()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)  # float32 math, not bf16


@pytest.mark.parametrize(("n", "k", "group"), [(64, 96, None), (130, 64, None), (96, 128, 32), (50, 64, 32)])
@pytest.mark.parametrize("tokens", TOKENS)
def test_int8_matmul_matches_written_out_math(n, k, group, tokens):
    torch.manual_seed(n + k + tokens)
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scales = (torch.rand(n) * 0.01 if group is None else torch.rand(n, k // group) * 0.01).half()
    tiled = cpu_matmul.TiledInt8.from_int8(q, scales)
    x = torch.randn(tokens, k)
    per_column = scales.double()[:, None] if group is None else scales.double().repeat_interleave(group, 1)
    expected = (x.double() @ (q.double() * per_column).T).float()
    torch.testing.assert_close(tiled.matmul(x), expected, rtol=1e-4, atol=1e-4)
    ids = torch.tensor([0, n - 1, n // 2, 0])
    torch.testing.assert_close(tiled.rows(ids), (q.double() * per_column)[ids].float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("bits", "rows"), [(0, cpu_matmul.FLOAT_KERNEL_MAX_TOKENS), (16, cpu_matmul.NUMBA_MAX_TOKENS)])
def test_small_batches_are_batch_invariant(bits, rows):
    """A row's output is bit-identical whatever the other rows of a kernel-sized batch are."""
    torch.manual_seed(0)
    tiled = cpu_matmul.TiledInt4.from_packed(*random_int4(192, 576, 32), activation_bits=bits)
    x = torch.randn(rows, 576)
    batched = tiled.matmul(x)
    for m in range(x.shape[0]):
        assert torch.equal(tiled.matmul(x[m : m + 1]), batched[m : m + 1])


def test_layout_does_not_depend_on_torch_packing():
    """The tiles are plain reshapes of the checkpoint bytes: byte [t, j, r] is row tR + r, byte j."""
    torch.manual_seed(1)
    packed, scales, mins = random_int4(128, 64, 32)
    tiled = cpu_matmul.TiledInt4.from_packed(packed, scales, mins)
    assert tiled.weight.shape == (2, 32, 64)
    assert int(tiled.weight[1, 5, 7]) == int(packed[64 + 7, 5])
    assert tiled.scales.dtype == tiled.mins.dtype == torch.float16  # as the GGUF blocks hold them
    assert float(tiled.scales[0, 1, 3]) == float(scales[3, 1]) and float(tiled.mins[1, 0, 2]) == float(mins[66, 0])


def test_threaded_and_single_thread_products_are_bit_identical(monkeypatch):
    from rusteeze.kernels import numba_quant_matmul

    torch.manual_seed(2)
    int4 = cpu_matmul.TiledInt4.from_packed(*random_int4(320, 128, 32))
    int8 = cpu_matmul.TiledInt8.from_int8(
        torch.randint(-127, 128, (320, 128), dtype=torch.int8), torch.rand(320).half()
    )
    x = torch.randn(3, 128)
    monkeypatch.setattr(numba_quant_matmul, "PARALLEL_MIN_MACS", 0)
    threaded = int4.matmul(x), int8.matmul(x)
    monkeypatch.setattr(numba_quant_matmul, "PARALLEL_MIN_MACS", 1 << 62)
    single = int4.matmul(x), int8.matmul(x)
    assert all(torch.equal(a, b) for a, b in zip(threaded, single, strict=True))


def test_integer_activations_take_the_integer_kernel_only_for_kernel_sized_calls():
    """With activation_bits, up to kernel_max_tokens rows are rounded per block; larger calls stay float32."""
    from rusteeze.kernels import numba_q8_matmul

    torch.manual_seed(3)
    packed, scales, mins = random_int4(96, 128, 32)
    q16 = cpu_matmul.TiledInt4.from_packed(packed, scales, mins, activation_bits=16)
    f32 = cpu_matmul.TiledInt4.from_packed(packed, scales, mins)
    small, large = torch.randn(cpu_matmul.NUMBA_MAX_TOKENS, 128), torch.randn(cpu_matmul.NUMBA_MAX_TOKENS + 1, 128)
    expected = numba_q8_matmul.int4_matmul_q8(small, q16.weight, q16.scales, q16.mins, 96, 16)
    assert torch.equal(q16.matmul(small), expected)
    assert not torch.equal(q16.matmul(small), f32.matmul(small))
    torch.testing.assert_close(q16.matmul(small), f32.matmul(small), rtol=1e-3, atol=1e-3)  # near float32
    assert torch.equal(q16.matmul(large), f32.matmul(large))
    q = torch.randint(-127, 128, (96, 128), dtype=torch.int8)
    i8 = cpu_matmul.TiledInt8.from_int8(q, torch.rand(96, 4), activation_bits=8)
    assert torch.equal(i8.matmul(small), numba_q8_matmul.int8_matmul_q8(small, i8.weight, i8.scales, 96, 8))
    logits = cpu_matmul.TiledInt8.from_int8(q, torch.rand(96, 4), activation_bits=16)
    logits.kernel_max_tokens = cpu_matmul.LOGITS_MAX_TOKENS
    rows = torch.randn(cpu_matmul.LOGITS_MAX_TOKENS, 128)
    assert torch.equal(logits.matmul(rows), numba_q8_matmul.int8_matmul_q8(rows, logits.weight, logits.scales, 96, 16))
    more = torch.randn(cpu_matmul.LOGITS_MAX_TOKENS + 1, 128)
    plain = cpu_matmul.TiledInt8(logits.weight, logits.scales, 96)
    assert torch.equal(logits.matmul(more), plain.matmul(more))  # beyond: dequantize + float32 GEMM


def test_int16_activations_fall_back_to_float32_where_blocks_would_overflow():
    """A weight whose activation block exceeds INT16_MAX_BLOCK (one group of 520) keeps float32 activations."""
    q = torch.randint(-127, 128, (64, 520), dtype=torch.int8)
    assert cpu_matmul.TiledInt8.from_int8(q, torch.rand(64), activation_bits=16).activation_bits == 0
    assert cpu_matmul.TiledInt8.from_int8(q[:, :512], torch.rand(64), activation_bits=16).activation_bits == 16


def bf16_reference(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [T, K] @ w [N, K].T with both rounded to bfloat16 (as the bf16 GEMM takes them), summed in float64."""
    return (x.bfloat16().double() @ w.float().bfloat16().double().T).float()


@pytest.mark.parametrize("columns", [64, 128, cpu_matmul.GEMM_COLUMNS])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize(("n", "k"), [(200, 96), (70, 64), (64, 160)])
def test_large_calls_dequantize_in_chunks_and_match_written_out_math(monkeypatch, columns, bf16, n, k):
    """Calls above kernel_max_tokens: chunks of ``columns`` output rows (the last one clipped), float32 or bf16 GEMM."""
    monkeypatch.setattr(cpu_matmul, "GEMM_COLUMNS", columns)
    torch.manual_seed(n + k + columns)
    packed, scales, mins = random_int4(n, k, 32)
    q, qs = torch.randint(-127, 128, (n, k), dtype=torch.int8), (torch.rand(n, k // 32) * 0.01).half()
    w4, w8 = int4_reference(packed, scales, mins), q.double() * qs.double().repeat_interleave(32, 1)
    int4 = cpu_matmul.TiledInt4.from_packed(packed, scales, mins, bf16_gemm=bf16)
    int8 = cpu_matmul.TiledInt8.from_int8(q, qs, bf16_gemm=bf16)
    x = torch.randn(cpu_matmul.NUMBA_MAX_TOKENS + 5, k)
    for tiled, w in ((int4, w4), (int8, w8)):
        out = tiled.matmul(x)
        assert out.shape == (x.shape[0], n) and out.dtype == torch.float32 and out.is_contiguous()
        if bf16:  # inputs rounded to bf16, float32 sums, the output rounded to bf16 (2^-9 relative)
            torch.testing.assert_close(out, bf16_reference(x, w), rtol=4e-3, atol=1e-3)
        else:
            torch.testing.assert_close(out, (x.double() @ w.T).float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_large_calls_are_batch_invariant_for_a_row_count(bf16):
    """A row's output depends on its own input and the row count only: not the other rows, the scratch, the thread."""
    torch.manual_seed(4)
    int4 = cpu_matmul.TiledInt4.from_packed(*random_int4(200, 128, 32), bf16_gemm=bf16)
    bigger = cpu_matmul.TiledInt4.from_packed(*random_int4(1100, 256, 32), bf16_gemm=bf16)
    x = torch.randn(20, 128)
    first = int4.matmul(x)
    other = x.clone()
    other[1:] = torch.randn(19, 128)
    bigger.matmul(torch.randn(20, 256))  # leaves a larger, dirty scratch buffer behind
    assert torch.equal(int4.matmul(other)[0], first[0])
    result = []
    worker = threading.Thread(target=lambda: result.append(int4.matmul(x)))  # its own scratch buffer
    worker.start()
    worker.join()
    assert torch.equal(result[0], first)
