"""The fast GGUF reader agrees with gguf-py's reader; torch dequantization agrees with gguf-py's."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader
from gguf.quants import dequantize as reference_dequantize
from gguf.quants import quantize

from rusteeze.errors import ModelLoadError
from rusteeze.loader.gguf_dequant import dequantize
from rusteeze.loader.gguf_file import GGUFFile


def test_same_metadata_and_tensors_as_gguf_py(smollm2_gguf_path):
    ours, theirs = GGUFFile(smollm2_gguf_path), GGUFReader(smollm2_gguf_path)
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]  # gguf-py adds header pseudo-fields
    assert sorted(keys) == sorted(ours.fields)
    for key in keys:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
        assert [int(t) for t in ours.fields[key].types] == [int(t) for t in theirs.fields[key].types], key
    assert len(ours.tensors) == len(theirs.tensors) == 272
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, a.shape) == (b.name, b.tensor_type, tuple(int(d) for d in b.shape))
        assert a.n_elements == int(b.n_elements)
        np.testing.assert_array_equal(a.data, b.data)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0, QT.Q4_1])
def test_torch_dequantize_matches_gguf_py(qtype):
    weights = np.random.default_rng(0).normal(size=(24, 96)).astype(np.float32)
    data = quantize(weights, qtype)
    got = dequantize(data, qtype, (24, 96)).numpy()
    np.testing.assert_array_equal(got, reference_dequantize(data, qtype))
    assert np.abs(got - weights).max() < (0.02 if qtype == QT.Q8_0 else 0.5)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"NOPE" + bytes(64), b"GGUF\x03\x00\x00\x00" + b"\xff" * 16])
def test_corrupt_headers_are_model_load_errors(tmp_path, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"bad\.gguf"):
        GGUFFile(path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random scale bytes may decode to inf
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.BF16])
def test_k_quant_tensors_read_and_dequantize_like_gguf_py(tmp_path, qtype):
    """Raw blocks of the types gguf-py cannot quantize: same bytes, shape and values through both readers."""
    import gguf
    from gguf import GGML_QUANT_SIZES

    block, type_size = GGML_QUANT_SIZES[qtype]
    rows, cols = 6, 2 * 256
    raw = np.random.default_rng(1).integers(0, 256, size=(rows, cols // block * type_size), dtype=np.uint8)
    path = tmp_path / "k.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.ffn_up.weight", raw, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, theirs = GGUFFile(path).tensors[0], GGUFReader(str(path)).tensors[0]
    assert ours.shape == (cols, rows) and ours.tensor_type == qtype
    got = dequantize(ours.data, qtype, (rows, cols)).numpy()
    np.testing.assert_array_equal(got, reference_dequantize(theirs.data, qtype).reshape(rows, cols))


def _resident_kib(address: int) -> int:
    """Rss of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads resident pages from Linux's /proc")
def test_release_drops_a_tensors_pages_and_keeps_its_values(tmp_path):
    """After release the tensor's pages are no longer resident; reading it again gives the same values."""
    import gguf

    rng = np.random.default_rng(2)
    big, small = rng.normal(size=(67, 1000)).astype(np.float32), rng.normal(size=(3, 32)).astype(np.float32)
    path = tmp_path / "two.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("big", big)
    writer.add_tensor("small", small)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = GGUFFile(path)
    a, b = reader.tensors
    np.testing.assert_array_equal(a.data, big)  # reads every page of "big"
    np.testing.assert_array_equal(b.data, small)
    address = a.data.ctypes.data
    before = _resident_kib(address)
    assert before * 1024 >= big.nbytes
    reader.release(a)
    assert _resident_kib(address) * 1024 <= before * 1024 - big.nbytes + 4096  # at most one page shared with "small"
    np.testing.assert_array_equal(a.data, big)
    np.testing.assert_array_equal(b.data, small)
    reader.release(b)
    np.testing.assert_array_equal(b.data, small)
