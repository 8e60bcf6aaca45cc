"""Weights on disk: safetensors save/load for MZSRNet, and import of the authors' TF-1 checkpoint.

Why safetensors: loading it never runs code, so a downloaded or shared file cannot execute anything.
`.pt`/`.pth` files are accepted only through `torch.load(..., weights_only=True)` for the same reason.

The TF-1 tensor-bundle format itself is read by `mzsr.files.tf_bundle` (by hand, no TensorFlow);
`import_tf_checkpoint` here maps its tensors onto MZSRNet's state_dict and validates them.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mzsr import MZSRError
from mzsr.files.tf_bundle import read_tf_bundle
from mzsr.network.model import NUM_LAYERS, PARAMETER_COUNT, MZSRNet

__all__ = [
    "save_weights",
    "load_weights",
    "load_model",
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
            raise MZSRError(f"{path}: shape mismatch at {key!r}: expected {list(shape)}, got {list(value.shape)}")
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
        raise MZSRError(
            f"{path}: unsupported weights file suffix {suffix or '(none)'!r}; use .safetensors (or .pt/.pth)"
        )
    return "torch" if suffix in _PICKLE_SUFFIXES else "safetensors"


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write `state_dict` + `metadata` atomically in the format the suffix names (`check_weights_suffix`).

    Atomic (temp file in the same directory, fsync, os.replace: `mzsr.files.atomic.atomic_path`) so an
    interrupted run or a parallel reader never sees a half-written file under the final name, and a
    full disk or read-only folder is one error naming the path. Safetensors metadata must be
    str -> str, so values are stored as JSON strings; `load_weights` decodes them back. A `.pt`/`.pth`
    file holds {"state_dict": tensors, "metadata": the same JSON strings}: plain types only.
    """
    import io

    import safetensors.torch

    from mzsr.files.atomic import atomic_path, atomic_write_bytes

    kind = check_weights_suffix(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    meta = {str(k): json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    if kind == "safetensors":
        with atomic_path(path) as tmp:
            safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    else:  # serialised in memory first: torch's zip writer reports a full disk without its errno
        buf = io.BytesIO()
        torch.save({"state_dict": tensors, "metadata": meta}, buf)
        atomic_write_bytes(path, buf.getvalue())


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
        lines = [
            line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(boilerplate)
        ]
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
    """ "safetensors" for an 8-byte little-endian header length that fits the file followed by a JSON
    header, "torch" for a torch.save zip (PK..) or a raw pickle (protocol byte 0x80), else
    "safetensors" (whose reader then names the problem)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        from mzsr.files.atomic import os_problem

        raise MZSRError(f"{path}: cannot read: {os_problem(e)}") from None
    size = path.stat().st_size
    if len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"  # checked first: a header length's low byte may be 0x80, a pickle's first byte
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "safetensors"


def load_weights(path: str | Path, expected_scale: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
# The authors' TF-1 checkpoint -> MZSRNet state_dict (the bundle itself: mzsr.files.tf_bundle)
# --------------------------------------------------------------------------------------------------


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
