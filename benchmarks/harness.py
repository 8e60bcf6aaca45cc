"""What the benchmarks share: where the development data is, the device, Set14 made into the paper's LR
inputs and scored, peak memory, the machine a figure comes from, and one result format.

Every script runs from the repository root as a module (`python -m benchmarks.speed.adapt`, ...) and,
with --json, writes `write_result`'s format: {"command", "machine", "date", "results"}.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from mzsr import MZSRError
from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.device import cpu_name, pick_device
from mzsr.evaluation.metrics import modcrop, psnr, ssim
from mzsr.files.atomic import atomic_write_text
from mzsr.files.images import read_image_uint8

REPO = Path(__file__).resolve().parents[1]
# The development data folder (T91, BSD200, Set14, photos, the authors' checkpoint), beside the checkout
# unless MZSR_SHARED_DATA names another.
SHARED = Path(os.environ.get("MZSR_SHARED_DATA") or REPO.parent / "shared" / "data")
SET14 = SHARED / "test" / "Set14"
TRAIN_FOLDERS = (SHARED / "train" / "T91", SHARED / "train" / "BSD200")
TF_CHECKPOINT = SHARED / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"


def run_device(requested: str) -> torch.device:
    """The device a benchmark runs on, chosen as meta_train and the command choose it
    (mzsr.device.pick_device: cuDNN autotuning and TF32 on CUDA); one that does not exist ends the run."""
    try:
        return pick_device(requested)
    except MZSRError as e:
        raise SystemExit(str(e)) from None


def set14(folder: Path = SET14, stems=None, scale: int = 2) -> list[tuple[str, np.ndarray]]:
    """(stem, mod-cropped uint8 HR image) of every Set14 image, or of the given stems, by name."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise SystemExit(f"no Set14 images in {folder} (set MZSR_SHARED_DATA or --set14)")
    return [(p.stem, modcrop(read_image_uint8(p), scale)) for p in paths if stems is None or p.stem in stems]


def paper_lr(hr_u8: np.ndarray, kernel, subsampling: str, scale: int = 2) -> np.ndarray:
    """The LR input as the authors made theirs: the uint8 HR degraded, quantised to uint8, as float."""
    return to_uint8(degrade(hr_u8 / 255.0, kernel, scale, subsampling)) / 255.0


def score(sr_u8: np.ndarray, hr_u8: np.ndarray, scale: int = 2) -> tuple[float, float]:
    """(PSNR, SSIM) on the Y channel, `scale` pixels shaved: the paper's protocol."""
    return psnr(sr_u8, hr_u8, scale), ssim(sr_u8, hr_u8, scale)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


@contextlib.contextmanager
def peak_memory(device="cpu"):
    """Peak memory of the code inside, in bytes, in the dict it yields (set on exit): CUDA's allocator
    peak on a GPU; on a CPU the growth of this process's peak RSS (VmHWM, reset to the current RSS
    on entry through /proc/self/clear_refs, after freed heap is handed back)."""
    out = {"bytes": None}
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        out["bytes"] = torch.cuda.max_memory_allocated(device)
        return
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    yield out
    out["bytes"] = (_status_kib("VmHWM") - base) * 1024


def machine() -> dict:
    """The machine a figure comes from: CPU, threads, torch, and the GPU when one is used."""
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(path: Path | None, results) -> None:
    """The one result format: the command that made it, the machine, the date (UTC) and the results."""
    if path is None:
        return
    record = {
        "command": " ".join(["python", "-m", _module(), *sys.argv[1:]]),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "results": results,
    }
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")


def _module() -> str:
    main = Path(sys.argv[0]).resolve()
    try:
        return ".".join(main.relative_to(REPO).with_suffix("").parts)
    except ValueError:
        return str(main)
