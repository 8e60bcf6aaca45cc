"""What both trainers share: resumable checkpoints bound to their settings, the CSV log, the NaN guard."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from mzsr import MZSRError, MZSRWarning
from mzsr.files.atomic import atomic_open, atomic_write_bytes, atomic_write_text, set_aside


def step_lr(step: int, lr: float, halve_every: int, lr_min: float) -> float:
    """Step-wise schedule of pre-training: lr halved every `halve_every` steps, never below lr_min."""
    return max(lr * 0.5 ** (step // halve_every), lr_min) if halve_every > 0 else lr


SETTINGS_FILE = "settings.json"


def _digest(value, h) -> None:
    """Feed a checkpoint's content (tensors by their bytes, containers in key order) into a hash."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(repr(k).encode())
            _digest(value[k], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _digest(v, h)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    _digest({k: v for k, v in state.items() if k != "digest"}, h)
    return "sha256:" + h.hexdigest()


def _settings_digest(settings) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def bind_settings(work_dir: str | Path, settings: dict) -> None:
    """Record what a training run in `work_dir` is made with (its config and the digests of its
    inputs) in work_dir/settings.json. A checkpoint records the settings digest it was made with;
    one made with other settings (a rebuilt patch store, another theta_T) is stale, and
    `latest_checkpoint` sets it aside instead of resuming from it."""
    work_dir = Path(work_dir)
    atomic_write_text(work_dir / SETTINGS_FILE, json.dumps(settings, sort_keys=True, indent=1, default=str) + "\n")


def _current_settings(work_dir: Path) -> str | None:
    try:
        return _settings_digest(json.loads((work_dir / SETTINGS_FILE).read_text()))
    except (OSError, ValueError):
        return None


def _read_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = " ".join(str(e).split()).split(". ")[0][:160]
        raise MZSRError(f"{path}: unreadable training checkpoint ({reason})") from None
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise MZSRError(f"{path}: not a training checkpoint of mzsr")
    if "digest" in state and state["digest"] != state_digest(state):
        raise MZSRError(f"{path}: corrupt training checkpoint (content digest mismatch)")
    return state


def check_checkpoint(path: str | Path) -> str | None:
    """None for a checkpoint that can be resumed from; else why not (unreadable, corrupt, stale)."""
    path = Path(path)
    try:
        state = _read_state(path)
    except MZSRError as e:
        return str(e).split(": ", 1)[1]
    current, recorded = _current_settings(path.parent), state.get("settings")
    if current is not None and recorded is not None and recorded != current:
        return "stale training checkpoint (made with other settings or inputs than this run's)"
    return None


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    """work_dir/last.pt when it exists and can be resumed from. An unreadable, corrupt (digest
    mismatch) or stale (other settings) checkpoint is set aside as last.pt.bad with a one-line
    warning and training starts over: a checkpoint only saves time, restarting is always right."""
    path = Path(work_dir) / "last.pt"
    if not path.exists():
        return None
    problem = check_checkpoint(path)
    if problem is None:
        return path
    aside = set_aside(path, "bad")
    warnings.warn(f"{path}: {problem}; set aside as {aside.name}, training starts over", MZSRWarning, stacklevel=2)
    return None


def save_training_state(
    work_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None
) -> Path:
    """Weights, optimiser state, step and RNG state, written atomically to work_dir/last.pt, with a
    content digest and the digest of the run's settings (`bind_settings`), checked when resumed.

    Weights that are no longer finite (a finite loss can still give overflowing gradients) are not
    written: the error names the step and the last good checkpoint stays.
    """
    bad = next(
        (k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None
    )
    if bad is not None:
        raise MZSRError(
            f"weights became NaN or infinite by step {step} (first in {bad}); training stopped. The last good"
            f" checkpoint is kept in {work_dir} (lower the learning rate, or check the input data)"
        )
    path = Path(work_dir) / "last.pt"
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].tolist(),
        "extra": extra or {},
    }
    settings = _current_settings(Path(work_dir))
    if settings is not None:
        state["settings"] = settings
    state["digest"] = state_digest(state)
    buf = io.BytesIO()  # in memory first: torch's zip writer hides the errno of a full disk
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a checkpoint written by save_training_state (safe loading: tensors and plain types only)."""
    state = _read_state(Path(path))
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:
        raise MZSRError(f"{path}: cannot resume from this training checkpoint ({e}); delete it to start over") from None
    torch.set_rng_state(state["torch_rng"])
    return state


def check_finite(loss: torch.Tensor, step: int, work_dir: str | Path) -> None:
    """Stop with an error naming the step when the loss diverges; the last good checkpoint stays."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise MZSRError(
            f"loss became {value} at step {step}; training stopped. The last good checkpoint is kept in {work_dir}"
            " (lower the learning rate, or check the input data)"
        )


class CsvLog:
    """Append-only CSV log that, on resume, drops rows past the resumed step (they will be redone)."""

    def __init__(self, path: str | Path, columns: list[str], resume_step: int = 0):
        self.path, self.columns = Path(path), columns
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, columns)
            w.writeheader()
            w.writerows(kept)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
