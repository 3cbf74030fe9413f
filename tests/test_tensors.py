"""Safetensors encoding, the streaming writer, and every rejection of a bad payload."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from fedaas import tensors
from fedaas.tensors import (
    SafetensorsFile,
    TensorError,
    decode,
    encode,
    manifest_bytes,
    manifest_of,
    max_payload_bytes,
)

MODEL = {
    "0.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "0.bias": np.array([-1.5, 0.0, 2.25], np.float32),
    "2.weight": np.linspace(-1, 1, 30, dtype=np.float32).reshape(2, 3, 5),
}
MANIFEST = manifest_of(MODEL)


def _raw(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors payload built by hand (to make it wrong in one chosen way)."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


def _entry(shape: list, start: int, end: int, dtype: str = "F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == np.float32, name
        assert got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# round trips -------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    meta = {"num_examples": "10", "metrics": json.dumps({"loss": 0.5})}
    got, got_meta = decode(encode(MODEL, meta), MANIFEST)
    _assert_same(got, MODEL)
    assert got_meta == meta


def test_encode_converts_to_little_endian_float32() -> None:
    odd = {
        "f64": np.array([1.0, 2.5]),
        "big": np.array([3.0, -4.0], dtype=">f4"),
        "ints": np.array([[1, 2], [3, 4]]),
        "strided": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    }
    got, meta = decode(encode(odd))
    assert meta == {}
    _assert_same(got, {k: v.astype(np.float32) for k, v in odd.items()})


def test_save_is_read_by_the_reference_parser(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors.save(path, MODEL, {"round": "3"})
    _assert_same(safetensors.numpy.load_file(str(path)), MODEL)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"round": "3"}
    got, meta = tensors.load(path)
    _assert_same(got, MODEL)
    assert meta == {"round": "3"}
    # the streamed file has the same layout rules as the reference writer: 8-aligned header
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert length % 8 == 0


def test_save_writes_no_metadata_when_none(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    tensors.save(path, MODEL)
    assert SafetensorsFile(path).metadata == {}
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert "__metadata__" not in json.loads(raw[8 : 8 + length])


@pytest.mark.parametrize("max_elements", [1, 4, 7, 1 << 20])
def test_chunks_reassemble_each_tensor(tmp_path: Path, max_elements: int) -> None:
    path = tmp_path / "model.safetensors"
    tensors.save(path, MODEL)
    for source in (path, path.read_bytes()):
        f = SafetensorsFile(source, MANIFEST)
        assert f.manifest == MANIFEST
        for name, value in MODEL.items():
            flat = np.full(value.size, np.nan, np.float32)
            sizes = []
            for offset, chunk in f.chunks(name, max_elements):
                assert chunk.dtype == np.float32
                flat[offset : offset + chunk.size] = chunk
                sizes.append(chunk.size)
            np.testing.assert_array_equal(flat.reshape(value.shape), value)
            assert max(sizes) <= max_elements
            assert len(sizes) == -(-value.size // max_elements)  # ceil
        flat = np.concatenate([v.astype(np.float64).reshape(-1) for v in MODEL.values()])
        assert f.finite_norm() == pytest.approx(float(np.linalg.norm(flat)), rel=1e-12)


def test_zero_d_and_empty_tensors(tmp_path: Path) -> None:
    odd = {
        "scale": np.array(2.5, np.float32),  # 0-d: a scalar parameter
        "empty": np.zeros((0, 3), np.float32),
        "w": np.ones((2, 2), np.float32),
    }
    manifest = manifest_of(odd)
    assert manifest["scale"] == () and manifest["empty"] == (0, 3)
    got, _ = decode(encode(odd), manifest)
    _assert_same(got, odd)

    path = tmp_path / "odd.safetensors"
    tensors.save(path, odd)
    _assert_same(safetensors.numpy.load_file(str(path)), odd)
    f = SafetensorsFile(path, manifest)
    assert f.manifest == manifest
    assert list(f.chunks("empty")) == []
    ((offset, values),) = list(f.chunks("scale"))
    assert offset == 0 and values.tolist() == [2.5]


def test_no_tensors_at_all(tmp_path: Path) -> None:
    assert decode(encode({}, {"k": "v"})) == ({}, {"k": "v"})
    path = tmp_path / "empty.safetensors"
    tensors.save(path, {})
    assert SafetensorsFile(path, {}).manifest == {}


def test_max_payload_bytes_fits_a_real_update() -> None:
    assert manifest_bytes(MANIFEST) == 4 * (12 + 3 + 30)
    limit = max_payload_bytes(MANIFEST)
    body = encode(MODEL, {"num_examples": "123456", "metrics": json.dumps({"a": 1.0, "b": 2.0})})
    assert len(body) <= limit
    assert limit < manifest_bytes(MANIFEST) + 128 * 1024  # O(model), not unbounded
    # a big model with many long names still fits; the allowance stays bounded
    many = {f"encoder.layers.{i}.attention.output.dense.weight": (4, 4) for i in range(2000)}
    body = encode({n: np.zeros(s, np.float32) for n, s in many.items()}, {"num_examples": "1"})
    assert len(body) <= max_payload_bytes(many)
    huge = {f"t{i}": (1,) for i in range(200_000)}
    assert max_payload_bytes(huge) == 8 + 4 * 200_000 + tensors.MAX_HEADER_BYTES


# rejections ----------------------------------------------------------------------


def _via_decode(data: bytes, manifest: dict | None) -> object:
    return decode(data, manifest)


def _via_bytes(data: bytes, manifest: dict | None) -> object:
    f = SafetensorsFile(data, manifest)
    f.finite_norm()
    return f


@pytest.fixture(params=["decode", "bytes", "file"])
def reject(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., str]:
    """Feed a payload to one reader; return the TensorError's message."""

    def via_file(data: bytes, manifest: dict | None) -> object:
        path = tmp_path / "upload.safetensors"
        path.write_bytes(data)
        f = SafetensorsFile(path, manifest)
        f.finite_norm()
        return f

    reader = {"decode": _via_decode, "bytes": _via_bytes, "file": via_file}[request.param]

    def check(data: bytes, manifest: dict | None = MANIFEST) -> str:
        with pytest.raises(TensorError) as info:
            reader(data, manifest)
        return str(info.value)

    return check


def test_wrong_names(reject: Callable[..., str]) -> None:
    missing = {k: v for k, v in MODEL.items() if k != "0.bias"}
    assert reject(encode(missing)) == "tensor names do not match the model: missing '0.bias'"
    extra = MODEL | {"head.weight": np.zeros(2, np.float32)}
    assert reject(encode(extra)) == "tensor names do not match the model: unexpected 'head.weight'"
    renamed = {("1.bias" if k == "0.bias" else k): v for k, v in MODEL.items()}
    message = reject(encode(renamed))
    assert "missing '0.bias'" in message and "unexpected '1.bias'" in message


def test_wrong_shape(reject: Callable[..., str]) -> None:
    bad = MODEL | {"0.weight": MODEL["0.weight"].T}
    assert reject(encode(bad)) == "tensor '0.weight': shape [4, 3], expected [3, 4]"
    flat = MODEL | {"0.weight": MODEL["0.weight"].reshape(-1)}
    assert reject(encode(flat)) == "tensor '0.weight': shape [12], expected [3, 4]"


@pytest.mark.parametrize(
    ("dtype", "tag"), [(np.float64, "F64"), (np.float16, "F16"), (np.int32, "I32")]
)
def test_wrong_dtype(reject: Callable[..., str], dtype: type, tag: str) -> None:
    data = safetensors.numpy.save({k: v.astype(dtype) for k, v in MODEL.items()})
    assert f"dtype '{tag}', expected F32" in reject(data)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(reject: Callable[..., str], value: float) -> None:
    bad = {k: v.copy() for k, v in MODEL.items()}
    bad["2.weight"][1, 2, 3] = value
    assert reject(encode(bad)) == "tensor '2.weight' holds NaN or Inf"


def test_largest_float32_values_are_finite() -> None:
    """The norm's float64 sum of squares cannot overflow on float32 input: nothing is flagged."""
    big = {k: np.full_like(v, np.finfo(np.float32).max) for k, v in MODEL.items()}
    norm = SafetensorsFile(encode(big), MANIFEST).finite_norm()
    size = sum(v.size for v in MODEL.values())
    assert norm == pytest.approx(float(np.finfo(np.float32).max) * np.sqrt(size), rel=1e-12)


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_truncated_body(reject: Callable[..., str], cut: int) -> None:
    assert "truncated" in reject(encode(MODEL)[:-cut])


def test_truncated_inside_the_header(reject: Callable[..., str]) -> None:
    data = encode(MODEL)
    assert "header length out of range" in reject(data[:20])
    assert "shorter than its 8-byte header length" in reject(data[:5])
    assert "shorter than its 8-byte header length" in reject(b"")


def test_padded_body(reject: Callable[..., str]) -> None:
    assert "padded" in reject(encode(MODEL) + b"\x00" * 4)


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes(reject: Callable[..., str], seed: int) -> None:
    data = np.random.default_rng(seed).bytes(4096)
    assert reject(data).startswith("not a safetensors payload")


def test_not_safetensors_at_all(reject: Callable[..., str]) -> None:
    assert reject(b'{"weights": [1, 2, 3]}').startswith("not a safetensors payload")
    assert reject(b"\x80\x04\x95" + b"\x00" * 64).startswith("not a safetensors payload")  # pickle


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, tensors.MAX_HEADER_BYTES + 1])
def test_header_length_overflow(reject: Callable[..., str], length: int) -> None:
    data = _raw({"w": _entry([1], 0, 4)}, b"\x00" * 4, length=length)
    assert reject(data, None) == "not a safetensors payload: header length out of range"


def test_header_not_json_or_not_an_object(reject: Callable[..., str]) -> None:
    assert "header is not JSON" in reject(_raw(b"{not json}"))
    assert "header is not JSON" in reject(_raw(b"\xff\xfe{}"))
    assert "header is not JSON" in reject(_raw('{"w": 1}'.encode("utf-16")))
    assert "header is not JSON" in reject(_raw(b"[" * 50_000 + b"]" * 50_000))  # deep nesting
    assert "header is not an object" in reject(_raw(b"[1, 2]"), None)


@pytest.mark.parametrize(
    "header",
    [
        b'{"a": {"dtype": "\\udc00", "shape": [1], "data_offsets": [0, 4]}}',
        b'{"\\ud800": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},'
        b' "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
        b'{"__metadata__": {"metrics": "\\udfff"}, '
        b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
    ],
)
def test_a_lone_surrogate_anywhere_in_the_header(reject: Callable[..., str], header: bytes) -> None:
    """JSON escapes can spell text that no UTF-8 can carry; such a header is refused whole,
    before any of its text reaches a message (the coordinator answered it with a 500)."""
    message = reject(_raw(header, b"\x00" * 4), None)
    assert message == "not a safetensors payload: header holds a lone surrogate"


def test_offsets_not_contiguous(reject: Callable[..., str]) -> None:
    gap = _raw({"a": _entry([1], 0, 4), "b": _entry([1], 8, 12)}, b"\x00" * 12)
    assert reject(gap, None) == "tensor data is not laid out contiguously"
    overlap = _raw({"a": _entry([2], 0, 8), "b": _entry([2], 4, 12)}, b"\x00" * 12)
    assert reject(overlap, None) == "tensor data is not laid out contiguously"
    late = _raw({"a": _entry([1], 4, 8)}, b"\x00" * 8)
    assert reject(late, None) == "tensor data is not laid out contiguously"


def test_offsets_that_do_not_match_the_shape(reject: Callable[..., str]) -> None:
    short = _raw({"a": _entry([3], 0, 8)}, b"\x00" * 8)
    assert reject(short, None) == "tensor 'a': data offsets do not match its shape"
    beyond = _raw({"a": _entry([3], 0, 12)}, b"\x00" * 8)
    assert reject(beyond, None) == "tensor 'a': data runs past the end of the payload (truncated)"
    backwards = _raw({"a": _entry([0], 4, 0)}, b"\x00" * 4)
    assert reject(backwards, None) == "tensor 'a': data offsets do not match its shape"


@pytest.mark.parametrize(
    "entry",
    [
        "F32",
        {"dtype": "F32", "shape": [2], "data_offsets": [0]},
        {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]},
        {"dtype": "F32", "shape": [2], "data_offsets": [False, 8]},
        {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]},
        {"dtype": "F32", "data_offsets": [0, 8]},
    ],
)
def test_malformed_entries(reject: Callable[..., str], entry: object) -> None:
    message = reject(_raw({"a": entry}, b"\x00" * 8), None)
    assert message.startswith("tensor 'a': malformed")


def test_bad_metadata(reject: Callable[..., str]) -> None:
    data = _raw({"__metadata__": {"num_examples": 10}, "a": _entry([1], 0, 4)}, b"\x00" * 4)
    assert reject(data, None) == "safetensors metadata must map strings to strings"
    data = _raw({"__metadata__": ["x"], "a": _entry([1], 0, 4)}, b"\x00" * 4)
    assert reject(data, None) == "safetensors metadata must map strings to strings"


def test_hand_built_valid_payload_is_accepted() -> None:
    """The hand-built payloads above are wrong only in the way each test makes them."""
    data = _raw({"a": _entry([1], 0, 4), "b": _entry([2], 4, 12)}, struct.pack("<3f", 1, 2, 3))
    got, _ = decode(data, {"a": (1,), "b": (2,)})
    assert got["a"].tolist() == [1.0] and got["b"].tolist() == [2.0, 3.0]
    f = SafetensorsFile(data, {"a": (1,), "b": (2,)})
    f.finite_norm()
    assert [c.tolist() for _, c in f.chunks("b")] == [[2.0, 3.0]]
