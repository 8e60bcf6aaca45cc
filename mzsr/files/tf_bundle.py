"""Reader for TensorFlow-1 checkpoints ("tensor bundles"), written by hand: no TensorFlow needed.

A TF-1 checkpoint is `<prefix>.index`, an uncompressed LevelDB-format SSTable whose values are
protobuf messages (a BundleHeaderProto under the empty key, then one BundleEntryProto per tensor:
dtype, shape, shard, offset, size, CRC32C), and `<prefix>.data-00000-of-00001`, the tensors' raw
little-endian bytes. The authors' released theta_T of MZSR is such a bundle; installing TensorFlow
only to read 16 float arrays is heavy, and the format is small enough to parse directly, so this
module decodes varints, the protobuf wire format, CRC-32C, SSTable blocks and bundle entries itself
(numpy only). Every error is an MZSRError naming the file. Mapping the tensors onto MZSRNet's
state_dict is `mzsr.files.checkpoints.import_tf_checkpoint`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from mzsr import MZSRError

__all__ = ["read_tf_bundle", "list_tf_bundle", "crc32c", "masked_crc32c"]


# --------------------------------------------------------------------------------------------------
# Minimal protobuf wire-format + CRC32C
# --------------------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _parse_proto(buf: bytes) -> list[tuple[int, int, Any]]:
    """Split a protobuf message into (field number, wire type, value) triples.

    Varints come back as int, fixed32/fixed64 as int, length-delimited fields as bytes (the caller
    knows whether that is a sub-message). Groups (wire types 3/4) are not used by TF bundles.
    """
    fields = []
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, wire, value))
    return fields


def _make_crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as LevelDB/TF use; pure Python (~10 MB/s, enough for a 1 MB model)."""
    table = _CRC32C_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """LevelDB's masked CRC (rotate 15 bits, add a constant) stored in block trailers and bundle entries."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# SSTable (.index) reader
# --------------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5


def _read_block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    """Return the contents of the block at (offset, size) after checking its 5-byte trailer."""
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_SIZE > len(data):
        raise MZSRError(f"{path}: block at offset {offset} (size {size}) runs past the end of the file")
    contents = data[offset:end]
    compression = data[end]
    if compression != 0:
        raise MZSRError(
            f"{path}: block at offset {offset} is compressed (type {compression}); only uncompressed tables are supported"
        )
    stored = struct.unpack_from("<I", data, end + 1)[0]
    if stored != masked_crc32c(data[offset : end + 1]):
        raise MZSRError(f"{path}: checksum mismatch in block at offset {offset} (corrupt index file)")
    return contents


def _block_entries(block: bytes, path: Path) -> list[tuple[bytes, bytes]]:
    """Decode a block's prefix-compressed (key, value) entries, ignoring the restart array."""
    if len(block) < 4:
        raise MZSRError(f"{path}: block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise MZSRError(f"{path}: bad restart count {num_restarts} in block")
    entries = []
    pos = 0
    key = b""
    try:
        while pos < limit:
            shared, pos = _read_varint(block, pos)
            non_shared, pos = _read_varint(block, pos)
            value_len, pos = _read_varint(block, pos)
            if shared > len(key) or pos + non_shared + value_len > limit:
                raise ValueError("entry overruns block")
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            entries.append((key, block[pos : pos + value_len]))
            pos += value_len
    except ValueError as exc:
        raise MZSRError(f"{path}: corrupt block entry: {exc}") from exc
    return entries


def _read_sstable(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an uncompressed LevelDB-format table, in file order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MZSRError(f"{path}: TensorFlow checkpoint index not found") from None
    except OSError as exc:
        raise MZSRError(f"{path}: cannot read: {exc}") from exc
    if len(data) < _FOOTER_SIZE:
        raise MZSRError(f"{path}: too short to be a TensorFlow checkpoint index ({len(data)} bytes)")
    footer = data[-_FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != _TABLE_MAGIC:
        raise MZSRError(f"{path}: bad table magic {magic:#018x}; not a TensorFlow checkpoint index")
    try:
        _meta_off, pos = _read_varint(footer, 0)
        _meta_size, pos = _read_varint(footer, pos)
        index_off, pos = _read_varint(footer, pos)
        index_size, pos = _read_varint(footer, pos)
    except ValueError as exc:
        raise MZSRError(f"{path}: corrupt table footer: {exc}") from exc
    entries = []
    for _last_key, handle in _block_entries(_read_block(data, index_off, index_size, path), path):
        try:
            off, p = _read_varint(handle, 0)
            size, _ = _read_varint(handle, p)
        except ValueError as exc:
            raise MZSRError(f"{path}: corrupt block handle in index block: {exc}") from exc
        entries.extend(_block_entries(_read_block(data, off, size, path), path))
    return entries


# --------------------------------------------------------------------------------------------------
# TF tensor bundle
# --------------------------------------------------------------------------------------------------

# TF DataType enum values we can map straight onto numpy (little-endian, as bundles are written).
_TF_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8")}
_TF_DTYPE_NAMES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    19: "float16",
}


def _parse_bundle_entry(value: bytes) -> dict[str, Any]:
    """BundleEntryProto -> dict(dtype, shape, shard_id, offset, size, crc32c, has_slices)."""
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "has_slices": False}
    for number, _wire, field in _parse_proto(value):
        if number == 1:
            entry["dtype"] = field
        elif number == 2:
            dims = []
            for dnum, _dw, dim in _parse_proto(field):
                if dnum == 2:  # TensorShapeProto.dim
                    size = 0
                    for snum, _sw, sval in _parse_proto(dim):
                        if snum == 1:
                            size = sval
                    dims.append(size)
            entry["shape"] = dims
        elif number == 3:
            entry["shard_id"] = field
        elif number == 4:
            entry["offset"] = field
        elif number == 5:
            entry["size"] = field
        elif number == 6:
            entry["crc32c"] = field
        elif number == 7:
            entry["has_slices"] = True
    return entry


def _bundle_index(prefix: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    index_path = Path(str(prefix) + ".index")
    entries: dict[str, dict[str, Any]] = {}
    for key, value in _read_sstable(index_path):
        try:
            if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2), version (3)
                header = {n: v for n, _w, v in _parse_proto(value)}
                if header.get(1, 1) != 1:
                    raise MZSRError(
                        f"{index_path}: bundle has {header[1]} shards; only single-shard checkpoints are supported"
                    )
                if header.get(2, 0) != 0:
                    raise MZSRError(f"{index_path}: big-endian bundle is not supported")
                continue
            entries[key.decode("utf-8")] = _parse_bundle_entry(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MZSRError(f"{index_path}: corrupt entry for key {key!r}: {exc}") from exc
    return index_path, entries


def list_tf_bundle(prefix: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype name, shape) of every tensor in a TF-1 checkpoint, without reading the data."""
    _, entries = _bundle_index(Path(prefix))
    return {
        name: (_TF_DTYPE_NAMES.get(e["dtype"], f"dtype#{e['dtype']}"), tuple(e["shape"])) for name, e in entries.items()
    }


def read_tf_bundle(prefix: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors of a TF-1 checkpoint (`<prefix>.index` + `<prefix>.data-00000-of-00001`).

    Without `names`, every tensor of a supported dtype (float32/float64/int32/int64) is returned and
    others are skipped silently; a name asked for explicitly must exist and be supported. Each
    tensor's size and CRC32C are checked against the index, so a truncated .data file is caught.
    """
    prefix = Path(prefix)
    index_path, entries = _bundle_index(prefix)
    if names is None:
        wanted = [n for n, e in entries.items() if e["dtype"] in _TF_DTYPES and not e["has_slices"]]
    else:
        wanted = list(names)
        for name in wanted:
            if name not in entries:
                raise MZSRError(f"{index_path}: no tensor named {name!r}")
            e = entries[name]
            if e["dtype"] not in _TF_DTYPES:
                dname = _TF_DTYPE_NAMES.get(e["dtype"], f"dtype#{e['dtype']}")
                raise MZSRError(f"{index_path}: tensor {name!r} has unsupported dtype {dname}")
            if e["has_slices"]:
                raise MZSRError(f"{index_path}: tensor {name!r} is stored as slices; not supported")
    data_path = Path(str(prefix) + ".data-00000-of-00001")
    if not wanted:
        return {}
    try:
        data = data_path.read_bytes()
    except FileNotFoundError:
        raise MZSRError(f"{data_path}: TensorFlow checkpoint data file not found") from None
    except OSError as exc:
        raise MZSRError(f"{data_path}: cannot read: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        e = entries[name]
        dtype = _TF_DTYPES[e["dtype"]]
        shape = tuple(e["shape"])
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if e["shard_id"] != 0:
            raise MZSRError(f"{index_path}: tensor {name!r} is in shard {e['shard_id']}; only shard 0 is supported")
        if e["size"] != nbytes:
            raise MZSRError(
                f"{index_path}: tensor {name!r} records {e['size']} bytes, shape {list(shape)} needs {nbytes}"
            )
        start, end = e["offset"], e["offset"] + e["size"]
        if end > len(data):
            raise MZSRError(
                f"{data_path}: tensor {name!r} at bytes {start}..{end} lies past the end of the file ({len(data)} bytes)"
            )
        raw = data[start:end]
        if e["crc32c"] is not None and masked_crc32c(raw) != e["crc32c"]:
            raise MZSRError(f"{data_path}: checksum mismatch for tensor {name!r} (corrupt data file)")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    return out
