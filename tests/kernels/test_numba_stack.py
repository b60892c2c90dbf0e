"""numba_stack: fixed-size scratch arrays in a compiled function's stack frame."""

import numba
import numpy as np

from rusteeze.kernels.numba_stack import stack_pointer

_COUNT = 12


@numba.njit
def _two_buffers(x):
    a = numba.carray(stack_pointer(np.float32, _COUNT), (3, 4))
    b = numba.carray(stack_pointer(np.int32, _COUNT), (3, 4))
    for i in range(3):
        for j in range(4):
            a[i, j] = x[i, j] * 2
            b[i, j] = i * 4 + j
    out = np.empty((3, 4), np.float32)
    for i in range(3):
        for j in range(4):
            out[i, j] = a[i, j] + b[i, j]
    return out


@numba.njit(parallel=True)
def _per_iteration(x):
    out = np.empty_like(x)
    for r in numba.prange(x.shape[0]):
        buf = numba.carray(stack_pointer(np.float32, _COUNT), (_COUNT,))
        for j in range(_COUNT):
            buf[j] = x[r, j] + r
        for j in range(_COUNT):
            out[r, j] = buf[_COUNT - 1 - j]
    return out


def test_buffers_hold_what_is_written_and_do_not_alias():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    expect = x * 2 + np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(_two_buffers(x), expect)


def test_each_parallel_iteration_has_its_own_buffer():
    x = np.random.default_rng(0).standard_normal((64, _COUNT)).astype(np.float32)
    expect = (x + np.arange(64, dtype=np.float32)[:, None])[:, ::-1]
    np.testing.assert_array_equal(_per_iteration(x), expect)
