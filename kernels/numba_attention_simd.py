"""The inner steps of :mod:`numba_attention`'s tiles as Numba intrinsics: 16 scores of one row, values of 1-4 rows.

``score_group(qs, r, k_cache, koff, col, n, s)`` writes the 16 scores

    s[r, col + i] = Σ_d qs[r, d] · K_i[d]      (i < 16; K_i the key row at flat offset koff[col + min(i, n - 1)])

of one query row against 16 keys (``n`` of them distinct: the rest repeat the
last, and their lanes are scratch). ``value_rows_<R>(acc, r0, s, v_cache, koff,
a, e)`` adds ``Σ_{a <= k < e} s[r0 + i, k] · V_k`` to ``acc[r0 + i]`` for ``i < R``.
Arrays: qs and acc [rows, >= head_dim rounded up to 64] float32, zero past
head_dim; k_cache / v_cache the C-contiguous [N, S, Hk, head_dim] float32 caches,
read through koff [>= CHUNK] int64, each key's flat element offset; s [rows,
>= col + 16] float32. Cache rows are loaded with masks past head_dim (any head
dim), and nothing outside the listed key rows is read.

Why not plain loops: Numba's loop vectorizer reduces each (row, key) dot
product with its own horizontal sum (four shuffles and four adds for 64
lanes), and keeps the value accumulators in memory (a load and a store per
key and row). Here a row's 16 dot products stay in 16 vector registers across
the head dim and are reduced together — the vectors added pairwise in halves,
quarters, ... so the 16 sums come out side by side in one vector, a quarter of
the adds and shuffles — and the value accumulators of up to 4 rows (64 lanes
each) stay in registers over the whole key range.

Summation order: each row and key is summed in one fixed order — lane l of
the key's vector accumulates dims l, l + W, l + 2W, ... by fused multiply-adds,
then the lanes are added in a tree that pairs lane l with l + W/2, then
l + W/4, ... — whatever the key's slot in the group, the row's tile, or the
batch (the instructions carry no reassociation flags, so LLVM keeps it). The
values accumulate key by key in key order, a row at a time. W is the vector
width of the target Numba compiles for: 16 lanes with AVX-512F, else 8 (two
half groups of 8 keys per call).

Numba's cache keys a function's machine code on its own file only: after
editing this file delete ``kernels/__pycache__/numba_attention.*`` and
``numba_decoder.*`` (or change those files), else they keep the former code.
"""

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

GROUP = 16  # keys per score_group call
PAD = 64  # qs and acc rows are padded to a multiple of this many floats
_LINE_FLOATS = 16  # floats per 64-byte cache line
_F32, _I1, _I32, _I64 = ir.FloatType(), ir.IntType(1), ir.IntType(32), ir.IntType(64)


def _width(context) -> int:
    """Lanes per float32 vector on the machine Numba compiles for (16 with AVX-512F, else 8)."""
    features = set(getattr(context.codegen(), "_tm_features", "").split(","))
    return 16 if "+avx512f" in features else 8


class _Emit:
    """IR helpers over one vector width: masked row loads, fused multiply-adds, splats."""

    def __init__(self, context, builder, width: int):
        self.context, self.b, self.w = context, builder, width
        self.vf = ir.VectorType(_F32, width)
        self.vi = ir.VectorType(_I32, width)
        self.zero = ir.Constant(self.vf, [0.0] * width)

    def array(self, ty, value):
        """(data pointer, shape values as intp) of a Numba array argument."""
        arr = self.context.make_array(ty)(self.context, self.b, value)
        return arr.data, cgutils.unpack_tuple(self.b, arr.shape, ty.ndim)

    def index(self, value, ty) -> ir.Value:
        return self.context.cast(self.b, value, ty, types.intp)

    def at(self, base: ir.Value, offset: ir.Value | int) -> ir.Value:
        """Pointer to the vector at ``base + offset`` floats."""
        if isinstance(offset, int):
            offset = ir.Constant(_I64, offset)
        return self.b.bitcast(self.b.gep(base, [offset]), self.vf.as_pointer())

    def load(self, base, offset) -> ir.Value:
        return self.b.load(self.at(base, offset), align=4)

    def store(self, value, base, offset) -> None:
        self.b.store(value, self.at(base, offset), align=4)

    def splat(self, value: ir.Value, vty=None) -> ir.Value:
        vty = vty or self.vf
        one = self.b.insert_element(ir.Constant(vty, None), value, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vty, None), ir.Constant(self.vi, [0] * self.w))

    def mask(self, left: ir.Value) -> ir.Value:
        """Lanes ``< left`` (an i64 count, may be <= 0 or > width)."""
        b, width = self.b, ir.Constant(_I64, self.w)
        left = b.trunc(b.select(b.icmp_signed(">", left, width), width, left), _I32)  # a negative count: no lane
        return self.b.icmp_signed("<", ir.Constant(self.vi, list(range(self.w))), self.splat(left, self.vi))

    def masked_load(self, base, offset, mask) -> ir.Value:
        """The vector at ``base + offset``: lanes outside ``mask`` are 0.0 and not read."""
        mty = ir.VectorType(_I1, self.w)
        fnty = ir.FunctionType(self.vf, [self.vf.as_pointer(), _I32, mty, self.vf])
        name = f"llvm.masked.load.v{self.w}f32.p0"
        fn = cgutils.get_or_insert_function(self.b.module, fnty, name)
        return self.b.call(fn, [self.at(base, offset), ir.Constant(_I32, 4), mask, self.zero])

    def fma(self, a, x, y) -> ir.Value:
        """a · x + y, rounded once."""
        fnty = ir.FunctionType(self.vf, [self.vf] * 3)
        fn = cgutils.get_or_insert_function(self.b.module, fnty, f"llvm.fma.v{self.w}f32")
        return self.b.call(fn, [a, x, y])

    def passes(self, head_dim: ir.Value, step: int):
        """Loop over d0 = 0, step, 2·step, ... < head_dim; yields d0 (i64)."""
        count = self.b.sdiv(self.b.add(head_dim, ir.Constant(_I64, step - 1)), ir.Constant(_I64, step))
        return cgutils.for_range(self.b, count)

    def reduce(self, vectors: list[ir.Value]) -> ir.Value:
        """The W lane sums of W vectors, side by side in one vector (lane i: the sum of vectors[i]).

        Level by level, pairs of vectors become one: the lower and upper halves
        of each vector's segments are added, so a vector's lane l meets lane
        l + W/2, then l + W/4, ... — one tree for every input, whatever its slot.
        """
        w = self.w
        order = _tree_order(w)  # input slot of each output lane
        vecs = [vectors[order.index(slot)] for slot in range(w)]
        half = w // 2
        while len(vecs) > 1:
            lo, hi = _halves(w, half)
            vecs = [
                self.b.fadd(
                    self.b.shuffle_vector(x, y, ir.Constant(self.vi, lo)),
                    self.b.shuffle_vector(x, y, ir.Constant(self.vi, hi)),
                )
                for x, y in zip(vecs[0::2], vecs[1::2], strict=True)
            ]
            half //= 2
        return vecs[0]


def _halves(w: int, half: int) -> tuple[list[int], list[int]]:
    """Shuffle masks over (x, y): for each output block of ``half`` lanes, a segment's lower / upper half.

    Inputs hold segments of 2·half lanes (one per key); output block 2m comes
    from x's segment m, block 2m + 1 from y's.
    """
    lo, hi = [], []
    for p in range(w):
        block, off = divmod(p, half)
        base = (0 if block % 2 == 0 else w) + (block // 2) * 2 * half
        lo.append(base + off)
        hi.append(base + half + off)
    return lo, hi


def _tree_order(w: int) -> list[int]:
    """The input slot whose sum :meth:`_Emit.reduce`'s tree puts in each output lane."""
    labels = [[slot] * w for slot in range(w)]
    half = w // 2
    while len(labels) > 1:
        lo, _ = _halves(w, half)
        labels = [[(x + y)[i] for i in lo] for x, y in zip(labels[0::2], labels[1::2], strict=True)]
        half //= 2
    assert sorted(labels[0]) == list(range(w))
    return labels[0]


def _is_array(a, dtype, ndim: int) -> bool:
    return isinstance(a, types.Array) and a.dtype == dtype and a.ndim == ndim and a.layout == "C"


@intrinsic
def score_group(typingctx, qs, r, k_cache, koff, col, n, s):
    """s[r, col:col + 16] = the scores of query row r against the keys at koff[col:col + n] (see the module)."""
    ok = (
        _is_array(qs, types.float32, 2)
        and _is_array(k_cache, types.float32, 4)
        and _is_array(koff, types.int64, 1)
        and _is_array(s, types.float32, 2)
        and all(isinstance(v, types.Integer) for v in (r, col, n))
    )
    if not ok:
        return None

    def codegen(context, builder, sig, args):
        e = _Emit(context, builder, _width(context))
        w, b = e.w, builder
        q_data, (_, q_width) = e.array(sig.args[0], args[0])
        k_data, k_shape = e.array(sig.args[2], args[2])
        off_data, _ = e.array(sig.args[3], args[3])
        s_data, (_, s_width) = e.array(sig.args[6], args[6])
        r, col, n = (e.index(args[i], sig.args[i]) for i in (1, 4, 5))
        head_dim = k_shape[3]
        q_row = b.gep(q_data, [b.mul(r, q_width)])
        last = b.add(col, b.sub(n, ir.Constant(_I64, 1)))
        vecs = 4  # vectors per pass over the head dim
        for first in range(0, GROUP, w):
            rows = []
            for i in range(first, first + w):
                key = b.select(b.icmp_signed("<", ir.Constant(_I64, i), n), b.add(col, ir.Constant(_I64, i)), last)
                rows.append(b.gep(k_data, [b.load(b.gep(off_data, [key]))]))
            accs = [cgutils.alloca_once_value(b, e.zero) for _ in range(w)]
            with e.passes(head_dim, vecs * w) as p:
                d0 = b.mul(p.index, ir.Constant(_I64, vecs * w))
                for v in range(vecs):
                    d = b.add(d0, ir.Constant(_I64, v * w))
                    mask = e.mask(b.sub(head_dim, d))
                    q = e.load(q_row, d)
                    for acc, row in zip(accs, rows, strict=True):
                        b.store(e.fma(q, e.masked_load(row, d, mask), b.load(acc)), acc)
            sums = e.reduce([b.load(acc) for acc in accs])
            e.store(sums, s_data, b.add(b.mul(r, s_width), b.add(col, ir.Constant(_I64, first))))
        return context.get_dummy_value()

    return types.void(qs, r, k_cache, koff, col, n, s), codegen


def _value_rows(rows: int):
    """The intrinsic adding ``rows`` rows' weighted values (see the module docstring)."""

    def typer(typingctx, acc, r0, s, v_cache, koff, a, e_):
        ok = (
            _is_array(acc, types.float32, 2)
            and _is_array(s, types.float32, 2)
            and _is_array(v_cache, types.float32, 4)
            and _is_array(koff, types.int64, 1)
            and all(isinstance(v, types.Integer) for v in (r0, a, e_))
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            e = _Emit(context, builder, _width(context))
            w, b = e.w, builder
            acc_data, (_, acc_width) = e.array(sig.args[0], args[0])
            s_data, (_, s_width) = e.array(sig.args[2], args[2])
            v_data, v_shape = e.array(sig.args[3], args[3])
            off_data, _ = e.array(sig.args[4], args[4])
            r0, a, end = (e.index(args[i], sig.args[i]) for i in (1, 5, 6))
            head_dim = v_shape[3]
            vecs = 4 if w == 16 else 2  # rows × vecs accumulators in registers (32 zmm, or 16 ymm)
            acc_rows = [b.gep(acc_data, [b.mul(b.add(r0, ir.Constant(_I64, i)), acc_width)]) for i in range(rows)]
            s_rows = [b.gep(s_data, [b.mul(b.add(r0, ir.Constant(_I64, i)), s_width)]) for i in range(rows)]
            with e.passes(head_dim, vecs * w) as p:
                d0 = b.mul(p.index, ir.Constant(_I64, vecs * w))
                ds = [b.add(d0, ir.Constant(_I64, v * w)) for v in range(vecs)]
                masks = [e.mask(b.sub(head_dim, d)) for d in ds]
                accs = [[cgutils.alloca_once_value(b, e.load(row, d)) for d in ds] for row in acc_rows]
                with cgutils.for_range(b, b.sub(end, a)) as loop:
                    k = b.add(a, loop.index)
                    v_row = b.gep(v_data, [b.load(b.gep(off_data, [k]))])
                    values = [e.masked_load(v_row, d, m) for d, m in zip(ds, masks, strict=True)]
                    for i in range(rows):
                        weight = e.splat(b.load(b.gep(s_rows[i], [k])))
                        for v in range(vecs):
                            b.store(e.fma(weight, values[v], b.load(accs[i][v])), accs[i][v])
                for i in range(rows):
                    for v in range(vecs):
                        e.store(b.load(accs[i][v]), acc_rows[i], ds[v])
            return context.get_dummy_value()

        return types.void(acc, r0, s, v_cache, koff, a, e_), codegen

    typer.__name__ = f"value_rows_{rows}"
    return intrinsic(typer)


value_rows_1 = _value_rows(1)
value_rows_2 = _value_rows(2)
value_rows_3 = _value_rows(3)
value_rows_4 = _value_rows(4)


@intrinsic
def prefetch(typingctx, cache, offset, count):
    """Ask for the cache lines of ``cache``'s flat floats ``[offset, offset + count)`` in L2 (no fault, no wait).

    cache: a C-contiguous [N, S, Hk, D] float32 cache; one ``prefetcht1`` per
    64-byte line (locality 2: L2, leaving L1 to the chunk being computed).
    """
    if not (_is_array(cache, types.float32, 4) and all(isinstance(v, types.Integer) for v in (offset, count))):
        return None

    def codegen(context, builder, sig, args):
        e = _Emit(context, builder, 16)
        b = builder
        data, _ = e.array(sig.args[0], args[0])
        offset, count = (e.index(args[i], sig.args[i]) for i in (1, 2))
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(b.module, fnty, "llvm.prefetch.p0")
        line = ir.Constant(_I64, _LINE_FLOATS)
        lines = b.sdiv(b.add(count, ir.Constant(_I64, _LINE_FLOATS - 1)), line)
        with cgutils.for_range(b, lines) as loop:
            ptr = b.bitcast(b.gep(data, [b.add(offset, b.mul(loop.index, line))]), i8p)
            b.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 2), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(cache, offset, count), codegen
