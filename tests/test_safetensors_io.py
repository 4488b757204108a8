"""The torch-free safetensors reader/writer used by the converters."""
import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from converters import safetensors_io


def test_round_trip_all_float_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "a.bf16": rng.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
        "b.f16": rng.standard_normal((4,)).astype(np.float16),
        "c.f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "d.empty": np.zeros((0, 7), np.float32),
    }
    safetensors_io.write_file(tmp_path / "x.safetensors", tensors)
    back = dict(safetensors_io.iter_tensors(tmp_path / "x.safetensors"))
    assert list(back) == list(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k].view(np.uint8), v.view(np.uint8))
    # The reference library reads what we write (its numpy backend lacks bf16, so leave that out).
    plain = {k: v for k, v in tensors.items() if v.dtype != ml_dtypes.bfloat16}
    safetensors_io.write_file(tmp_path / "y.safetensors", plain)
    ref = load_file(str(tmp_path / "y.safetensors"))
    assert all(np.array_equal(ref[k], v) for k, v in plain.items())


def test_reads_files_from_the_reference_writer(tmp_path):
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([1, 2], np.int64)}
    save_file(tensors, str(tmp_path / "r.safetensors"), metadata={"format": "pt"})
    assert safetensors_io.tensor_shapes(tmp_path / "r.safetensors") == {
        "w": ((3, 4), np.dtype(np.float32)), "i": ((2,), np.dtype(np.int64))}
    back = dict(safetensors_io.iter_tensors(tmp_path / "r.safetensors"))
    assert all(np.array_equal(back[k], v) for k, v in tensors.items())


def test_streaming_writer_checks_order_and_completeness(tmp_path):
    specs = {"a": ((2,), np.float32), "b": ((3,), np.float32)}
    with pytest.raises(ValueError, match=r"got tensor 'b' \(3,\) float32, the header expects 'a' \(2,\) float32"):
        with safetensors_io.Writer(tmp_path / "w.safetensors", specs) as w:
            w.write("b", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="closed before tensor 'b' was written"):
        with safetensors_io.Writer(tmp_path / "w.safetensors", specs) as w:
            w.write("a", np.zeros(2, np.float32))


def test_corrupt_files_are_named(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="shorter than its 8-byte header length"):
        safetensors_io.read_header(tmp_path / "short.safetensors")
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(ValueError, match="ends inside tensor 'w'; the file is truncated"):
        list(safetensors_io.iter_tensors(tmp_path / "cut.safetensors"))
    header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "fp8.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ValueError, match="Tensor 'w' in .* has dtype F8_E4M3"):
        safetensors_io.tensor_shapes(tmp_path / "fp8.safetensors")
