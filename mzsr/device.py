"""Which device runs the network: one choice for the `mzsr` command, the rule scripts, adaptation, ZSSR
and both trainers, so that a device that does not exist is the same clear error everywhere."""

from __future__ import annotations

import ctypes
import functools
import platform
from pathlib import Path

import torch

from mzsr import MZSRError


def pick_device(requested: str | torch.device | None = None, tf32: bool = True) -> torch.device:
    """CUDA when present unless told otherwise ("auto" or None); "cpu", "cuda", "cuda:N" or "mps" as
    asked. A device that does not exist here (`cuda:7`, `cuda` without a GPU, `tpu`) is one clear
    error. On CUDA, cuDNN autotuning and (with `tf32`) TF32 convolutions and matrix products."""
    if requested is None or str(requested) == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = _checked(requested)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    elif device.type == "cpu":
        keep_freed_memory()
    return device


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAX_MMAP_THRESHOLD = 32 * 2**20
_NO_TRIM = 2**31 - 1  # the largest value it takes: a free heap top of 2 GiB before any trimming


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the system (glibc's
    malloc; elsewhere nothing changes). Returns whether the setting took.

    By default glibc gives an activation buffer of a few MiB its own fresh pages (mmap) and returns
    them when the tensor dies, and trims the heap once its free top passes twice that threshold: every
    adaptation step and meta-iteration then first-touches all of its activations again, a page fault per
    4 KiB (about 190 MiB and 10% of a 256x256 adaptation step's time). Up to 32 MiB from the heap and
    no trimming keeps those pages mapped from step to step. The process's peak memory stays what it
    was; it just keeps it until it exits, as a caching allocator on a GPU does."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _NO_TRIM))


def _checked(requested) -> torch.device:
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise MZSRError(f"device {requested!r}: not a torch device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MZSRError(f"device {requested!r}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= count:
            raise MZSRError(
                f"device {requested!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise MZSRError(f"device {requested!r}: MPS is not available on this machine (use cpu or auto)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise MZSRError(f"device {requested!r}: not supported (use auto, cpu, cuda, cuda:N or mps)")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for wall-clock timings); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what the platform says), for provenance."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
