"""The inner steps of :mod:`numba_q8_matmul`'s tiles: one activation block's integer dot products, 1-5 rows.

Numba intrinsics, and the inline helpers around them (:func:`block_sums`,
:func:`block_rows`, :func:`group_parts`). For a weight tile (64 output
rows side by side, :mod:`numba_quant_matmul`'s layout), one activation block of
``2 · PAIRS = 32`` columns starting at column ``c`` and activation rows
``m .. m + rows - 1``, ``pair_sums_<rows>(xq, m, c, w, t, isum)`` writes

    isum[r, i] = Σ_{p < 16} w[c + 2p, i] · xq[m + r, c + 2p] + w[c + 2p + 1, i] · xq[m + r, c + 2p + 1]

(``w[k, i]`` the integer weight of the tile's lane i at column k: the int4 tile's
nibbles 0..15 of byte ``w[t, k // 2, i]``, or the int8 tile's ``w[t, k, i]``),
for xq int16 or int8 and isum ``[>= rows, 64]`` int32. The sums are exact
(|sum| ≤ 32 · 128 · 32768 < 2^31), so every code path gives the same bits.

Each weight vector is loaded and unpacked once per block and used by every
row; each row keeps its sums in registers for the whole block; and one
multiply instruction takes a column pair: the weight pair as two 16-bit halves
of a 32-bit lane, the activation pair ``(x[c + 2p], x[c + 2p + 1])`` broadcast
the same way — x86's ``pmaddwd``, which LLVM turns into ``vpdpwssd`` (the add
folded in) with AVX512-VNNI. Plain Numba loops get none of this: Numba types
int32 products as int64 and LLVM keeps them 64-bit once a weight value feeds
several rows; the loop vectorizer keeps the lane sums in memory (a load and a
store per column pair); and LLVM (22) does not fuse ``lo · x0 + hi · x1`` into
one ``pmaddwd``, so every column costs a multiply. SmolLM2's gate_up
(3072×576, int4, int16 activations, AVX-512 EPYC, 1 thread): integer part
of 8 rows 18 µs per row here, 46 with the best plain loop (4 rows, columns
4 at a time), ~80 in the former one-row loop.

Code per target, chosen when Numba compiles (the host's features, or those of
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``):

* AVX512BW: 16-lane vectors, ``llvm.x86.avx512.pmaddw.d.512``, the tile's 64
  lanes in one pass (5 rows × 4 vectors = 20 of the 32 zmm registers);
* AVX2: 8-lane vectors, ``llvm.x86.avx2.pmadd.wd``, 32 lanes per pass (16 ymm
  registers: 4 and 5 rows spill some);
* anything else: multiplies and adds on 8-lane int32 vectors, which LLVM
  lowers for the target.

Numba's cache keys a function's machine code on its own file's contents only
(a hash: touching a file changes nothing), and a caller's code holds its
callees' compiled in: after editing this file, delete the cached
``numba_q8_matmul.*`` and ``numba_decoder.*`` entries in ``kernels/__pycache__``
(or change those files), else they keep running the former code.
"""

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from rusteeze.kernels.numba_checks import FASTMATH, JIT

PAIRS = 16  # column pairs per call: one activation block of 32 values
LANES = 64  # lanes of a weight tile (numba_quant_matmul.TILE)
VECTORS = 4  # vectors per row per pass: rows × VECTORS lane sums stay in registers
# The tiles and these helpers compile without reassociation: each row's float32 steps run exactly as written
# (fused multiply-adds where a product feeds an add), so the serial and parallel drivers, a cached compile and
# a fresh one agree bit for bit (with it, LLVM regrouped a scale product differently in a cached parallel
# build); nothing here needs a reduction reordered.
TILE_JIT = {**JIT, "fastmath": FASTMATH - {"reassoc"}}

_I16, _I32 = ir.IntType(16), ir.IntType(32)
_AVX512_MADD = "llvm.x86.avx512.pmaddw.d.512"
_AVX2_MADD = "llvm.x86.avx2.pmadd.wd"


def _target(context) -> tuple[int, str | None]:
    """(lanes per vector, x86 pmaddwd intrinsic or None) for the machine Numba compiles for."""
    features = set(getattr(context.codegen(), "_tm_features", "").split(","))
    if "+avx512bw" in features:
        return 16, _AVX512_MADD
    if "+avx2" in features:
        return 8, _AVX2_MADD
    return 8, None


def _splat(builder: ir.IRBuilder, value: ir.Value, vec: int) -> ir.Value:
    """A scalar i32 broadcast to ``<vec x i32>``."""
    vty = ir.VectorType(_I32, vec)
    one = builder.insert_element(ir.Constant(vty, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(vty, None), ir.Constant(vty, [0] * vec))


class _Block:
    """Emits one call's IR: loads of the activation pairs and the weight vectors, the multiply-adds, the stores."""

    def __init__(self, context, builder, sig, args, rows: int):
        self.builder, self.rows = builder, rows
        xq_ty, m_ty, c_ty, w_ty, t_ty, s_ty = sig.args
        xq, m, c, w, t, isum = args
        m, c, t = (context.cast(builder, v, ty, types.intp) for v, ty in ((m, m_ty), (c, c_ty), (t, t_ty)))
        self.int4 = w_ty.dtype == types.uint8
        self.x8 = xq_ty.dtype == types.int8
        self.vec, self.madd = _target(context)

        def ptr(ty, value, *inds):
            return cgutils.get_item_pointer(context, builder, ty, context.make_array(ty)(context, builder, value), inds)

        # Every other address is a constant offset from these (C-contiguous arrays, 64 lanes per tile row).
        self.x_rows = [ptr(xq_ty, xq, builder.add(m, ir.Constant(m.type, r)), c) for r in range(rows)]  # &xq[m + r, c]
        self.w_row = ptr(w_ty, w, t, builder.ashr(c, ir.Constant(c.type, 1)) if self.int4 else c, _zero(c))
        self.s_row = ptr(s_ty, isum, _zero(c), _zero(c))  # &isum[0, 0]

    def _at(self, base: ir.Value, offset: int, vty: ir.Type) -> ir.Value:
        """``base + offset`` elements, as a pointer to ``vty``."""
        return self.builder.bitcast(self.builder.gep(base, [ir.Constant(_I32, offset)]), vty.as_pointer())

    def x_pair(self, r: int, p: int) -> ir.Value | tuple[ir.Value, ir.Value]:
        """Row m + r's columns c + 2p, c + 2p + 1 on every lane: <2vec x i16> (x0, x1, x0, ...), or two splats."""
        b, vec = self.builder, self.vec
        if self.x8:
            two = b.load(self._at(self.x_rows[r], 2 * p, ir.VectorType(ir.IntType(8), 2)), align=1)
            two = b.sext(two, ir.VectorType(_I16, 2))
        else:
            two = b.load(self._at(self.x_rows[r], 2 * p, ir.VectorType(_I16, 2)), align=2)
        if self.madd is not None:
            return b.bitcast(_splat(b, b.bitcast(two, _I32), vec), ir.VectorType(_I16, 2 * vec))
        return tuple(_splat(b, b.sext(b.extract_element(two, ir.Constant(_I32, h)), _I32), vec) for h in (0, 1))

    def w_pair(self, p: int, lane: int) -> ir.Value | tuple[ir.Value, ir.Value]:
        """Columns c + 2p, c + 2p + 1 of lanes lane ..: <2vec x i16> (w0, w1 per lane), or two <vec x i32>."""
        b, vec = self.builder, self.vec
        v8 = ir.VectorType(ir.IntType(8), vec)
        v32 = ir.VectorType(_I32, vec)
        halves = ir.VectorType(_I16, 2 * vec)
        if self.int4:  # one byte holds both columns: the low nibble column c + 2p, the high one c + 2p + 1
            byte = b.zext(b.load(self._at(self.w_row, p * LANES + lane, v8), align=1), v32)
            if self.madd is not None:  # (v | v << 12) & 0x000F000F: low nibble in the low half, high in the high
                both = b.or_(byte, b.shl(byte, ir.Constant(v32, [12] * vec)))
                return b.bitcast(b.and_(both, ir.Constant(v32, [0x000F000F] * vec)), halves)
            return b.and_(byte, ir.Constant(v32, [15] * vec)), b.lshr(byte, ir.Constant(v32, [4] * vec))
        cols = [b.load(self._at(self.w_row, (2 * p + h) * LANES + lane, v8), align=1) for h in (0, 1)]
        if self.madd is not None:  # interleave the two columns byte by byte, then widen: (w0, w1) per lane
            mixed = b.shuffle_vector(cols[0], cols[1], ir.Constant(ir.VectorType(_I32, 2 * vec), [
                q // 2 + (q % 2) * vec for q in range(2 * vec)]))  # fmt: skip
            return b.sext(mixed, halves)
        return b.sext(cols[0], v32), b.sext(cols[1], v32)

    def multiply_add(self, acc: ir.Value, w: ir.Value | tuple, x: ir.Value | tuple) -> ir.Value:
        """acc + w0 · x0 + w1 · x1 per lane: one pmaddwd on x86, else two multiplies."""
        b, vec = self.builder, self.vec
        if self.madd is None:
            return b.add(acc, b.add(b.mul(w[0], x[0]), b.mul(w[1], x[1])))
        v32 = ir.VectorType(_I32, vec)
        halves = ir.VectorType(_I16, 2 * vec)
        fn = b.module.declare_intrinsic(self.madd, fnty=ir.FunctionType(v32, [halves, halves]))
        return b.add(acc, b.call(fn, [w, x]))

    def emit(self) -> None:
        """All passes over the tile's lanes: VECTORS vectors per row in registers, stored to isum at the end."""
        b, vec = self.builder, self.vec
        v32 = ir.VectorType(_I32, vec)
        for first in range(0, LANES, VECTORS * vec):
            acc = [[ir.Constant(v32, [0] * vec)] * VECTORS for _ in range(self.rows)]
            for p in range(PAIRS):
                xs = [self.x_pair(r, p) for r in range(self.rows)]
                for v in range(VECTORS):
                    w = self.w_pair(p, first + v * vec)
                    for r in range(self.rows):
                        acc[r][v] = self.multiply_add(acc[r][v], w, xs[r])
            for r in range(self.rows):
                for v in range(VECTORS):
                    b.store(acc[r][v], self._at(self.s_row, r * LANES + first + v * vec, v32), align=4)


def _zero(like: ir.Value) -> ir.Value:
    return ir.Constant(like.type, 0)


def _pair_sums(rows: int):
    """The intrinsic for ``rows`` activation rows (see the module docstring)."""

    def typer(typingctx, xq, m, c, w, t, isum):
        def array(a, dtypes, ndim):
            return isinstance(a, types.Array) and a.dtype in dtypes and a.ndim == ndim and a.layout == "C"

        ints = all(isinstance(v, types.Integer) for v in (m, c, t))
        if not (
            ints
            and array(xq, (types.int16, types.int8), 2)
            and array(w, (types.uint8, types.int8), 3)
            and array(isum, (types.int32,), 2)
        ):
            return None

        def codegen(context, builder, sig, args):
            _Block(context, builder, sig, args, rows).emit()
            return context.get_dummy_value()

        return types.void(xq, m, c, w, t, isum), codegen

    typer.__name__ = f"pair_sums_{rows}"
    return intrinsic(typer)


pair_sums_1 = _pair_sums(1)
pair_sums_2 = _pair_sums(2)
pair_sums_3 = _pair_sums(3)
pair_sums_4 = _pair_sums(4)
pair_sums_5 = _pair_sums(5)


@numba.njit(inline="always", **TILE_JIT)
def block_sums(xq, m, rows, c, size, w, t, isum, int4):  # pragma: no cover - compiled
    """isum[:rows] = the exact int32 sums of rows m .. m + rows - 1 over columns c .. c + size - 1 of tile t.

    int4: w [NT, K/2, 64] u8 (nibbles), else w [NT, K, 64] i8. Blocks of 32 take the pair intrinsics, other
    sizes (group sizes that 32 does not divide) a plain loop, one row at a time: the same sums.
    """
    if size == 2 * PAIRS:
        if rows == 5:
            pair_sums_5(xq, m, c, w, t, isum)
        elif rows == 4:
            pair_sums_4(xq, m, c, w, t, isum)
        elif rows == 3:
            pair_sums_3(xq, m, c, w, t, isum)
        elif rows == 2:
            pair_sums_2(xq, m, c, w, t, isum)
        else:
            pair_sums_1(xq, m, c, w, t, isum)
        return
    for r in range(rows):
        isum[r, :] = np.int32(0)
        if int4:
            for j in range(c // 2, (c + size) // 2):
                x0 = np.int32(xq[m + r, 2 * j])
                x1 = np.int32(xq[m + r, 2 * j + 1])
                for i in range(LANES):
                    v = np.int32(w[t, j, i])
                    isum[r, i] += (v & 15) * x0 + (v >> 4) * x1
        else:
            for k in range(c, c + size):
                x0 = np.int32(xq[m + r, k])
                for i in range(LANES):
                    isum[r, i] += np.int32(w[t, k, i]) * x0


@numba.njit(inline="always", **TILE_JIT)
def block_rows(left):  # pragma: no cover - compiled
    """Rows for the next pass over a weight block: 4 (the best rate per row, with 5), 5 where one would be left."""
    return 5 if left % 4 == 1 and left > 4 else min(4, left)


@numba.njit(inline="always", **TILE_JIT)
def group_parts(xq, xd, m, rows, b0, blocks, size, w, t, int4, isum, part):  # pragma: no cover - compiled
    """A weight group's blocks b0 .. b0 + blocks - 1 for rows m .. m + rows - 1: isum = the last block's sums.

    The blocks before it are scaled by their row's d = xd[m + r, b] into part[r] (= on the first, += after);
    the caller adds the last one as it applies the group's scales.
    """
    for b in range(b0, b0 + blocks):
        block_sums(xq, m, rows, b * size, size, w, t, isum, int4)
        if b == b0 + blocks - 1:
            return
        for r in range(rows):
            d = xd[m + r, b]
            if b == b0:
                for i in range(LANES):
                    part[r, i] = np.float32(isum[r, i]) * d
            else:
                for i in range(LANES):
                    part[r, i] += np.float32(isum[r, i]) * d
