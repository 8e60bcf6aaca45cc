"""Weights on disk: safetensors save/load for MZSRNet, and a TensorFlow-1 checkpoint reader.

Why safetensors: loading it never runs code, so a downloaded or shared file cannot execute anything.
`.pt`/`.pth` files are accepted only through `torch.load(..., weights_only=True)` for the same reason.

Why a hand-written TF reader: the authors' released theta_T is a TF-1 "tensor bundle"
(`<prefix>.index` SSTable + `<prefix>.data-00000-of-00001`); installing TensorFlow only to read
16 float arrays is heavy, and the format is small enough to parse directly.
"""
from __future__ import annotations

import json
import struct
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mzsr import MZSRError
from mzsr.model import NUM_LAYERS, PARAMETER_COUNT, MZSRNet

__all__ = [
    "save_weights",
    "load_weights",
    "load_model",
    "read_tf_bundle",
    "list_tf_bundle",
    "import_tf_checkpoint",
    "expected_shapes",
]

_PICKLE_SUFFIXES = {".pt", ".pth"}


# --------------------------------------------------------------------------------------------------
# Expected layout
# --------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _expected_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Key -> shape of MZSRNet's state_dict, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = MZSRNet()
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The state_dict layout every weights file must match (ordered as in MZSRNet)."""
    return dict(_expected_shapes())


def _validate_state_dict(state: dict[str, Any], path: Path | str) -> dict[str, torch.Tensor]:
    """Check keys, shapes, dtype and finiteness; return float32 CPU tensors in MZSRNet key order.

    Done on every load so a wrong file fails here with its name, not deep inside training.
    """
    expected = expected_shapes()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
        if extra:
            parts.append(f"unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
        raise MZSRError(f"{path}: not MZSRNet weights: {', '.join(parts)}")
    out: dict[str, torch.Tensor] = {}
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise MZSRError(f"{path}: {key!r} is a {type(value).__name__}, expected a tensor")
        if tuple(value.shape) != shape:
            raise MZSRError(
                f"{path}: shape mismatch at {key!r}: expected {list(shape)}, got {list(value.shape)}"
            )
        if not value.is_floating_point():
            raise MZSRError(f"{path}: {key!r} has dtype {value.dtype}, expected a floating-point tensor")
        value = value.detach().to(device="cpu", dtype=torch.float32)
        if not torch.isfinite(value).all():
            raise MZSRError(f"{path}: {key!r} contains NaN or infinite values")
        out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# safetensors save / load
# --------------------------------------------------------------------------------------------------

WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")


def check_weights_suffix(path: str | Path) -> str:
    """The format a weights file name asks for: safetensors for `.safetensors`, a plain-tensor
    torch file (read back with weights_only=True) for `.pt`/`.pth`; any other suffix is refused
    before any work, so that the file written is the file asked for."""
    suffix = Path(path).suffix.lower()
    if suffix not in WEIGHTS_SUFFIXES:
        raise MZSRError(f"{path}: unsupported weights file suffix {suffix or '(none)'!r}; use .safetensors (or .pt/.pth)")
    return "torch" if suffix in _PICKLE_SUFFIXES else "safetensors"


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write `state_dict` + `metadata` atomically in the format the suffix names (`check_weights_suffix`).

    Atomic (temp file in the same directory, fsync, os.replace: `mzsr.io.atomic_path`) so an
    interrupted run or a parallel reader never sees a half-written file under the final name, and a
    full disk or read-only folder is one error naming the path. Safetensors metadata must be
    str -> str, so values are stored as JSON strings; `load_weights` decodes them back. A `.pt`/`.pth`
    file holds {"state_dict": tensors, "metadata": the same JSON strings}: plain types only.
    """
    import io

    import safetensors.torch

    from .io import atomic_path

    kind = check_weights_suffix(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {str(k): json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    with atomic_path(path) as tmp:
        if kind == "safetensors":
            safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
        else:  # serialised in memory first: torch's zip writer reports a full disk without its errno
            buf = io.BytesIO()
            torch.save({"state_dict": tensors, "metadata": meta}, buf)
            tmp.write_bytes(buf.getvalue())


def _decode_metadata(raw: dict[str, str] | None) -> dict[str, Any]:
    """Undo save_weights' JSON encoding; keep foreign (non-JSON) strings as they are."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw_meta = f.metadata()
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError, OSError, ...: all mean "unreadable file"
        raise MZSRError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from exc
    return state, _decode_metadata(raw_meta)


def _load_torch_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a .pt/.pth only with weights_only=True: a pickle that would build arbitrary objects
    (and so could run code) is refused instead of executed."""
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": moot, the file is refused or read safely
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with open(path, "rb") as fh:  # a file object: torch.load would go by a path's suffix
                obj = torch.load(fh, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's message is many lines around the one that says what was refused (e.g. "Trying to
        # load unsupported GLOBAL posix.system ..."), and suggests weights_only=False: keep that line.
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
        raise MZSRError(
            f"{path}: refused to load: not a plain tensor checkpoint "
            f"(unsafe or corrupt pickle; only tensors are ever unpickled): {lines[0] if lines else type(exc).__name__}"
        ) from exc
    metadata: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        if isinstance(obj.get("metadata"), dict):
            metadata = _decode_metadata({k: v for k, v in obj["metadata"].items() if isinstance(v, str)})
            metadata.update({k: v for k, v in obj["metadata"].items() if not isinstance(v, str)})
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MZSRError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj), metadata


def _sniff(path: Path) -> str:
    """"safetensors" for an 8-byte little-endian header length that fits the file followed by a JSON
    header, "torch" for a torch.save zip (PK..) or a raw pickle (protocol byte 0x80), else
    "safetensors" (whose reader then names the problem)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        from .io import os_problem

        raise MZSRError(f"{path}: cannot read: {os_problem(e)}") from None
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"  # checked first: a header length's low byte may be 0x80, a pickle's first byte
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "safetensors"


def load_weights(
    path: str | Path, expected_scale: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and validate MZSRNet weights; return (state_dict as float32 CPU tensors, metadata).

    The format is recognised by content, not by name: a zip (torch.save) or a pickle goes through
    torch.load(weights_only=True), anything else is read as safetensors.
    If `expected_scale` is given and the file records a different `scale`, fail: x4 weights used
    for x2 run silently but give wrong results. A file without a recorded scale is accepted.
    """
    path = Path(path)
    if not path.exists():
        raise MZSRError(f"{path}: weights file not found")
    if not path.is_file():
        raise MZSRError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise MZSRError(f"{path}: weights file is empty")
    if _sniff(path) == "torch":
        state, metadata = _load_torch_pickle(path)
    else:
        state, metadata = _load_safetensors(path)
    state = _validate_state_dict(state, path)
    if expected_scale is not None and metadata.get("scale") is not None:
        try:
            scale = int(metadata["scale"])
        except (TypeError, ValueError):
            raise MZSRError(f"{path}: metadata scale {metadata['scale']!r} is not an integer") from None
        if scale != int(expected_scale):
            raise MZSRError(f"{path}: was trained for x{scale}, expected x{int(expected_scale)}")
    return state, metadata


def load_model(
    path: str | Path, expected_scale: int | None = None, device: str | torch.device = "cpu"
) -> tuple[MZSRNet, dict[str, Any]]:
    """Build an MZSRNet with the validated weights from `path`; return (model in eval mode, metadata)."""
    state, metadata = load_weights(path, expected_scale=expected_scale)
    model = MZSRNet()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), metadata


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
            value = bytes(buf[pos:pos + length])
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
    if stored != masked_crc32c(data[offset:end + 1]):
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
            key = key[:shared] + block[pos:pos + non_shared]
            pos += non_shared
            entries.append((key, block[pos:pos + value_len]))
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
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    9: "int64", 10: "bool", 14: "bfloat16", 19: "float16",
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
                    raise MZSRError(f"{index_path}: bundle has {header[1]} shards; only single-shard checkpoints are supported")
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
        name: (_TF_DTYPE_NAMES.get(e["dtype"], f"dtype#{e['dtype']}"), tuple(e["shape"]))
        for name, e in entries.items()
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
            raise MZSRError(f"{index_path}: tensor {name!r} records {e['size']} bytes, shape {list(shape)} needs {nbytes}")
        start, end = e["offset"], e["offset"] + e["size"]
        if end > len(data):
            raise MZSRError(f"{data_path}: tensor {name!r} at bytes {start}..{end} lies past the end of the file ({len(data)} bytes)")
        raw = data[start:end]
        if e["crc32c"] is not None and masked_crc32c(raw) != e["crc32c"]:
            raise MZSRError(f"{data_path}: checksum mismatch for tensor {name!r} (corrupt data file)")
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=True)
    return out


def import_tf_checkpoint(prefix: str | Path) -> dict[str, torch.Tensor]:
    """Convert the authors' TF-1 MZSR checkpoint into an MZSRNet state_dict.

    `MODEL/conv{i}/kernel` (HWIO: [kh, kw, cin, cout]) -> `convs.{i-1}.weight` (OIHW, transpose 3,2,0,1);
    `MODEL/conv{i}/bias` -> `convs.{i-1}.bias`. Adam slots, beta powers and global_step are ignored.
    Note: TF's conv2d is a cross-correlation like torch's Conv2d, so no kernel flip is needed.
    """
    names = []
    for i in range(1, NUM_LAYERS + 1):
        names += [f"MODEL/conv{i}/kernel", f"MODEL/conv{i}/bias"]
    prefix = Path(prefix)
    arrays = read_tf_bundle(prefix, names)
    state: dict[str, torch.Tensor] = {}
    for i in range(1, NUM_LAYERS + 1):
        kernel = arrays[f"MODEL/conv{i}/kernel"]
        if kernel.ndim != 4:
            raise MZSRError(f"{prefix}.index: MODEL/conv{i}/kernel has shape {list(kernel.shape)}, expected 4-D HWIO")
        state[f"convs.{i - 1}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()
        state[f"convs.{i - 1}.bias"] = torch.from_numpy(arrays[f"MODEL/conv{i}/bias"]).float()
    state = _validate_state_dict(state, f"{prefix}.index")
    total = sum(v.numel() for v in state.values())
    if total != PARAMETER_COUNT:  # guaranteed by the shape check; kept as a cheap invariant
        raise MZSRError(f"{prefix}.index: imported {total} values, expected {PARAMETER_COUNT}")
    return state
