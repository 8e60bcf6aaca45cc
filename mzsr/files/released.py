"""The released models: meta-trained weights that ship with the code in `models/`, one per
subsampling and scale (`direct_x2`, `bicubic_x2`, `direct_x4`), as the authors released theirs;
and beside them the learned kernel estimator's weights (`kernel_net_x2`, mzsr.estimation.kernel_net),
which is no SR model. Each file's provenance is its "released" metadata.

`mzsr upscale` without `--weights` and the pipeline with `meta.weights_folder` take them from here.
The folder is the repository's `models/`, or the one that the environment variable MZSR_MODELS
names (for an installation that is not a checkout).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mzsr import MZSRError
from mzsr.facts import SR_MODEL_NAME

MODELS_ENV = "MZSR_MODELS"
SUBSAMPLINGS = ("direct", "bicubic")


def models_folder() -> Path:
    """$MZSR_MODELS, else the checkout's models/ beside the package."""
    return Path(os.environ.get(MODELS_ENV) or Path(__file__).resolve().parents[2] / "models")


def released_name(subsampling: str, scale: int) -> str:
    """File stem of the model for a subsampling and scale: direct_x2, bicubic_x2, direct_x4, ..."""
    if subsampling not in SUBSAMPLINGS:
        raise MZSRError(f"unknown subsampling {subsampling!r}; use one of {', '.join(SUBSAMPLINGS)}")
    return f"{subsampling}_x{int(scale)}"


def available(folder: str | Path | None = None) -> list[str]:
    """Stems of the SR models (<subsampling>_x<scale>) that the folder holds; not the kernel estimator."""
    folder = Path(folder) if folder is not None else models_folder()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*_x*.safetensors") if SR_MODEL_NAME.fullmatch(p.stem))


def released_weights(subsampling: str, scale: int, folder: str | Path | None = None) -> Path:
    """Path of the released model for the kernel's subsampling and the scale; a clear error where
    none has been released (a model of the other subsampling would run, but is not the paper's)."""
    folder = Path(folder) if folder is not None else models_folder()
    name = released_name(subsampling, scale)
    path = folder / f"{name}.safetensors"
    if path.is_file():
        return path
    if not folder.is_dir():
        raise MZSRError(
            f"{folder}: no models folder (set {MODELS_ENV} to the folder of the released models, "
            "or give --weights FILE)"
        )
    have = ", ".join(available(folder)) or "none"
    raise MZSRError(
        f"no released model {name} (for {subsampling} subsampling at x{int(scale)}) in {folder} "
        f"(released: {have}); give --weights FILE, e.g. a model meta-trained by the pipeline"
    )


def config_digest(cfg: dict) -> str:
    """Short digest of a training configuration, recorded with a released model."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def release_info(path: str | Path) -> dict:
    """The "released" metadata of a model file ({} for a file that was never released): an SR model's
    or the kernel estimator's (`header_metadata`: read for any safetensors file, whatever network its
    tensors are); a .pt/.pth file's through `load_weights`."""
    if Path(path).suffix.lower() == ".safetensors":
        return header_metadata(path).get("released") or {}
    from mzsr.files.checkpoints import load_weights

    return load_weights(path)[1].get("released") or {}


def header_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file from its header alone: no torch, so that the report's
    environment (pandas, matplotlib) can name the models in its tables. {} for another format."""
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else 0
        try:
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else {}
        except ValueError:
            header = {}
    out = {}
    for key, value in (header.get("__metadata__") or {}).items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


def describe_weights(path: str | Path) -> str:
    """One line on where a model comes from, for tables and reports. A released model by its name, not
    its path, which differs between checkouts of the same run."""
    meta = header_metadata(path)
    info = meta.get("released") or {}
    if info:
        steps = "meta-iterations" if meta.get("source", "meta") == "meta" else "iterations"
        return (
            f"released {info.get('name', Path(path).stem)}, {info.get('iterations', '?')} {steps}"
            f" on {info.get('device', '?')} ({info.get('data', '?')})"
        )
    return f"{path}: {meta.get('source', 'unknown')} weights, step {meta.get('step', '?')}"
