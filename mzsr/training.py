"""What both trainers share: resumable checkpoints, the CSV log, device set-up, NaN guard."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch

from . import MZSRError
from .io import atomic_path


def setup_device(requested: str | None = None, tf32: bool = True) -> torch.device:
    """CUDA when present (unless told otherwise); TF32 convolutions on Ampere+ when allowed."""
    device = torch.device(requested if requested and requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return device


def step_lr(step: int, lr: float, halve_every: int, lr_min: float) -> float:
    """Step-wise schedule of pre-training: lr halved every `halve_every` steps, never below lr_min."""
    return max(lr * 0.5 ** (step // halve_every), lr_min) if halve_every > 0 else lr


def latest_checkpoint(work_dir: str | Path) -> Path | None:
    path = Path(work_dir) / "last.pt"
    return path if path.exists() else None


def save_training_state(work_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict | None = None) -> Path:
    """Weights, optimiser state, step and RNG state, written atomically to work_dir/last.pt.

    Weights that are no longer finite (a finite loss can still give overflowing gradients) are not
    written: the error names the step and the last good checkpoint stays.
    """
    bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore a checkpoint written by save_training_state (safe loading: tensors and plain types only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, columns)
                w.writeheader()
                w.writerows(kept)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(row)
