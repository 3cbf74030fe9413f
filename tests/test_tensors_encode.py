"""``tensors.encode`` writes what the reference safetensors writer writes, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from fedaas import tensors

ARRAYS = {
    "layer.1.weight": np.arange(12, dtype=np.float64).reshape(3, 4),  # converted to float32
    "b": np.float32(2.5) * np.ones((), np.float32),  # 0-d stays 0-d
    "empty": np.zeros((0, 4), np.float32),
    "ünïcode": np.arange(3, dtype=np.float32),
    "B": np.ones(5, np.float32),
}


@pytest.mark.parametrize("metadata", [None, {}, {"metrics": '{"loss": 0.5}'}, {"ké": 'ü"x'}])
def test_encode_is_the_reference_layout(metadata: dict[str, str] | None) -> None:
    wire = {name: np.asarray(a, dtype="<f4") for name, a in ARRAYS.items()}
    # the reference orders metadata keys at random (a hash map): one key at most here
    reference = safetensors.numpy.save(wire, metadata=metadata or None)  # {}: none, as before
    assert tensors.encode(ARRAYS, metadata) == reference
    decoded, meta = tensors.decode(tensors.encode(ARRAYS, metadata))
    assert meta == (metadata or {})
    assert all(
        np.array_equal(decoded[k], wire[k]) and decoded[k].shape == wire[k].shape for k in wire
    )


def test_encode_refuses_metadata_that_is_not_text() -> None:
    with pytest.raises(TypeError):
        tensors.encode(ARRAYS, {"num_examples": 3})  # type: ignore[dict-item]


def test_save_writes_the_header_json_dumps_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Model files keep their exact bytes: ASCII-escaped header, sorted names, padded."""
    import json
    import struct

    metadata = {"job": "j-ü", "round": "3"}
    tensors.save(tmp_path / "m.safetensors", ARRAYS, metadata)
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in sorted(ARRAYS):
        size = 4 * ARRAYS[name].size
        header[name] = {
            "dtype": "F32",
            "shape": list(ARRAYS[name].shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    data = b"".join(np.asarray(ARRAYS[n], dtype="<f4").tobytes() for n in sorted(ARRAYS))
    assert (tmp_path / "m.safetensors").read_bytes() == struct.pack("<Q", len(blob)) + blob + data
