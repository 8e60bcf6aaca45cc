"""A TensorFlow tensor bundle (SSTable + protobuf) written by hand, so that the tests of
mzsr.files.tf_bundle and of the checkpoint import need no TensorFlow: byte for byte what TF writes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from mzsr.files.checkpoints import expected_shapes
from mzsr.files.tf_bundle import masked_crc32c


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def pb_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _pb_fixed32(field: int, value: int) -> bytes:
    return _varint(field << 3 | 5) + struct.pack("<I", value)


def _bundle_entry(dtype: int, shape, offset: int, raw: bytes, slices: bool = False) -> bytes:
    shape_msg = b"".join(pb_bytes(2, pb_varint(1, d)) for d in shape)
    msg = pb_varint(1, dtype) + pb_bytes(2, shape_msg) + pb_varint(4, offset) + pb_varint(5, len(raw))
    msg += _pb_fixed32(6, masked_crc32c(raw))
    if slices:
        msg += pb_bytes(7, b"")
    return msg


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    """LevelDB block: prefix-compressed entries, restart offsets, restart count."""
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(entries):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        prev = key
    for r in restarts or [0]:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _write_sstable(
    path: Path,
    entries: list[tuple[bytes, bytes]],
    per_block: int = 6,
    compression: int = 0,
    magic: int = 0xDB4775248B80FB57,
) -> None:
    """Data blocks of `per_block` entries each, an empty metaindex block, an index block, a footer."""
    out = bytearray()

    def put(block: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(block))
        trailer_type = bytes([compression])
        out.extend(block + trailer_type + struct.pack("<I", masked_crc32c(block + trailer_type)))
        return handle

    index_entries = []
    for start in range(0, len(entries), per_block):
        chunk = entries[start : start + per_block]
        index_entries.append((chunk[-1][0], put(_block(chunk, restart_interval=3))))
    meta_handle = put(_block([]))
    index_handle = put(_block(index_entries))
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", magic)
    out += footer
    path.write_bytes(bytes(out))


def write_bundle(
    prefix: Path, tensors: dict[str, np.ndarray], extra: dict[str, bytes] | None = None, **sstable_kwargs
) -> None:
    """A TF-style tensor bundle: header under key b"", entries sorted by name, data concatenated."""
    dtypes = {np.dtype("float32"): 1, np.dtype("float64"): 2, np.dtype("int32"): 3, np.dtype("int64"): 9}
    data = bytearray()
    entries = {b"": pb_varint(1, 1) + pb_varint(2, 0) + pb_bytes(3, pb_varint(1, 1))}
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
        entries[name.encode()] = _bundle_entry(dtypes[arr.dtype], arr.shape, len(data), raw)
        data += raw
    for name, value in (extra or {}).items():
        entries[name.encode()] = value
    _write_sstable(Path(str(prefix) + ".index"), sorted(entries.items()), **sstable_kwargs)
    Path(str(prefix) + ".data-00000-of-00001").write_bytes(bytes(data))


def synthetic_mzsr_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, (key, shape) in enumerate(expected_shapes().items()):
        layer = int(key.split(".")[1]) + 1
        if key.endswith("weight"):
            o, c, kh, kw = shape
            name = f"MODEL/conv{layer}/kernel"
            out[name] = rng.standard_normal((kh, kw, c, o)).astype(np.float32)
        else:
            name = f"MODEL/conv{layer}/bias"
            out[name] = rng.standard_normal(shape).astype(np.float32)
        out[name + "/Adam"] = np.zeros_like(out[name])
        out[name + "/Adam_1"] = np.ones_like(out[name])
    out["global_step"] = np.array(1000, dtype=np.int64)
    return out
