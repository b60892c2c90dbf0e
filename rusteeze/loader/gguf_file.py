"""A fast GGUF reader: header, metadata and tensor table parsed in one pass, data memory-mapped.

gguf-py's ``GGUFReader`` builds a numpy view per metadata item, which takes
several seconds for a 49k-token vocabulary; this reader decodes string arrays
with plain Python and numeric arrays with one ``np.frombuffer`` each, and
exposes the same small surface the loaders use (``fields[key].contents()``,
``fields[key].types``, ``tensors[i].name / tensor_type / shape / data /
n_elements``), so either reader can be passed where one is expected.
"""

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from rusteeze.errors import ModelLoadError

_MAGIC = b"GGUF"
_SCALARS = {
    GGUFValueType.UINT8: ("<B", np.uint8),
    GGUFValueType.INT8: ("<b", np.int8),
    GGUFValueType.UINT16: ("<H", np.uint16),
    GGUFValueType.INT16: ("<h", np.int16),
    GGUFValueType.UINT32: ("<I", np.uint32),
    GGUFValueType.INT32: ("<i", np.int32),
    GGUFValueType.FLOAT32: ("<f", np.float32),
    GGUFValueType.BOOL: ("<?", np.bool_),
    GGUFValueType.UINT64: ("<Q", np.uint64),
    GGUFValueType.INT64: ("<q", np.int64),
    GGUFValueType.FLOAT64: ("<d", np.float64),
}


@dataclass
class GGUFField:
    """One metadata entry: its decoded value and its GGUF value type(s)."""

    name: str
    value: Any
    types: list[GGUFValueType]

    def contents(self) -> Any:
        """The decoded value: a scalar, a str, or a list for arrays."""
        return self.value


@dataclass
class GGUFTensor:
    """One tensor: GGUF shape (fastest dimension first) and its raw bytes as a numpy view.

    ``data`` is float32/float16 shaped in row-major order for float types, and
    uint8 ``[rows, bytes per row]`` for quantized ones (as gguf-py returns it).
    """

    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray
    offset: int = 0  # where ``data`` starts in the file, in bytes

    @property
    def n_elements(self) -> int:
        """Number of (logical) elements."""
        return int(np.prod(self.shape))


class GGUFFile:
    """A GGUF file opened for reading (metadata decoded eagerly, tensor data memory-mapped).

    Raises:
        ModelLoadError: the file is not GGUF, truncated, or inconsistent (names the file).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as e:  # empty file
                raise ModelLoadError(f"{self.path} is not a valid GGUF file: {e}") from None
        self._pos = 0
        try:
            self._parse()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError, OverflowError) as e:
            raise ModelLoadError(f"{self.path} is not a valid GGUF file (truncated or corrupt?): {e}") from None

    def _read(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self._buf, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._read("<Q")
        if self._pos + n > len(self._buf):
            raise ValueError("string runs past the end of the file")
        s = self._buf[self._pos : self._pos + n].decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: GGUFValueType) -> tuple[Any, list[GGUFValueType]]:
        if vtype == GGUFValueType.STRING:
            return self._string(), [vtype]
        if vtype in _SCALARS:
            return self._read(_SCALARS[vtype][0]), [vtype]
        if vtype == GGUFValueType.ARRAY:
            etype = GGUFValueType(self._read("<I"))
            count = self._read("<Q")
            if etype == GGUFValueType.STRING:
                return [self._string() for _ in range(count)], [vtype, etype]
            if etype not in _SCALARS:
                raise ValueError(f"unsupported array element type {etype.name}")
            dtype = np.dtype(_SCALARS[etype][1]).newbyteorder("<")
            arr = np.frombuffer(self._buf, dtype=dtype, count=count, offset=self._pos)
            self._pos += arr.nbytes
            return arr.tolist(), [vtype, etype]
        raise ValueError(f"unknown metadata value type {vtype}")

    def _parse(self) -> None:
        if self._buf[:4] != _MAGIC:
            raise ValueError("bad magic (expected 'GGUF')")
        self._pos = 4
        version = self._read("<I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        n_tensors, n_kv = self._read("<Q"), self._read("<Q")
        self.fields: dict[str, GGUFField] = {}
        for _ in range(n_kv):
            key = self._string()
            value, types = self._value(GGUFValueType(self._read("<I")))
            self.fields[key] = GGUFField(key, value, types)
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._read("<Q") for _ in range(self._read("<I")))
            infos.append((name, GGMLQuantizationType(self._read("<I")), dims, self._read("<Q")))
        alignment = self.fields["general.alignment"].value if "general.alignment" in self.fields else 32
        start = -(-self._pos // alignment) * alignment
        self.tensors = [self._tensor(start, *info) for info in infos]

    def _tensor(self, start: int, name: str, qtype: GGMLQuantizationType, dims: tuple, offset: int) -> GGUFTensor:
        block, type_size = GGML_QUANT_SIZES[qtype]
        row = dims[0] if dims else 1
        rows = int(np.prod(dims[1:])) if len(dims) > 1 else 1
        if row % block:
            raise ValueError(f"tensor {name!r}: row of {row} is not a multiple of the {qtype.name} block ({block})")
        row_bytes = row // block * type_size
        begin = start + offset
        if begin + rows * row_bytes > len(self._buf):
            raise ValueError(f"tensor {name!r} runs past the end of the file")
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=rows * row_bytes, offset=begin)
        if qtype == GGMLQuantizationType.F32:
            data = raw.view(np.float32).reshape(*reversed(dims))
        elif qtype == GGMLQuantizationType.F16:
            data = raw.view(np.float16).reshape(*reversed(dims))
        else:
            data = raw.reshape(rows, row_bytes)
        return GGUFTensor(name, qtype, dims, data, begin)

    def release(self, tensor: GGUFTensor) -> None:
        """Drop the file pages ``tensor`` was read from out of this process's resident memory.

        Loading reads each tensor once; without this every page read stays
        resident until the file is closed (SmolLM2 Q4_1: the whole 94 MiB
        file on top of the weights being built). The pages stay in the OS page
        cache, and reading ``tensor.data`` again maps them back (the mapping is
        read-only), so this changes memory, never values. No-op where
        ``madvise`` is missing (Windows).
        """
        if not hasattr(self._buf, "madvise") or tensor.data.nbytes == 0:
            return
        start = tensor.offset - tensor.offset % mmap.PAGESIZE  # madvise wants a page-aligned start
        self._buf.madvise(mmap.MADV_DONTNEED, start, tensor.offset + tensor.data.nbytes - start)
