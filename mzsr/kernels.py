"""Blur kernels: MZSR's training-kernel sampler, the paper's named test degradations, kernel files.

Gaussian kernels have covariance S = R(theta) diag(l1, l2) R(theta)^T where l1, l2 are VARIANCES
(eigenvalues), sampled on a square grid centred on the middle pixel and normalised to sum 1.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import MZSRError

TRAIN_KERNEL_SIZE = 15


def gaussian_kernel(l1: float, l2: float, theta: float, size: int = TRAIN_KERNEL_SIZE) -> np.ndarray:
    """Anisotropic Gaussian with eigen-variances l1, l2 rotated by theta (radians), summing to 1."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov = rot @ np.diag([l1, l2]) @ rot.T
    inv = np.linalg.inv(cov)
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    xx, yy = np.meshgrid(r, r)  # xx: column offset, yy: row offset
    pts = np.stack([xx, yy], axis=-1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pts, inv, pts))
    return k / k.sum()


def gaussian_kernels_torch(params: torch.Tensor, size: int = TRAIN_KERNEL_SIZE) -> torch.Tensor:
    """Batched twin of `gaussian_kernel` on any device: params (N, 3) = (l1, l2, theta) -> (N, size, size).

    Computed in float64 (as the numpy one) so that the kernels agree to float32 precision and more.
    """
    l1, l2, theta = params.to(torch.float64).unbind(-1)
    c, s = torch.cos(theta), torch.sin(theta)
    # inverse covariance R diag(1/l1, 1/l2) R^T, written out per entry
    a = (c * c / l1 + s * s / l2)[:, None, None]
    b = (c * s * (1 / l1 - 1 / l2))[:, None, None]
    d = (s * s / l1 + c * c / l2)[:, None, None]
    r = torch.arange(size, dtype=torch.float64, device=params.device) - (size - 1) / 2.0
    yy, xx = torch.meshgrid(r, r, indexing="ij")  # yy: row offset, xx: column offset
    k = torch.exp(-0.5 * (a * xx * xx + 2 * b * xx * yy + d * yy * yy))
    return k / k.sum(dim=(-2, -1), keepdim=True)


def sample_training_params(rng: np.random.Generator, scale: int, n: int) -> np.ndarray:
    """(n, 3) (l1, l2, theta) of MZSR's training distribution: t ~ U[0, pi), l1 ~ U[1, 2.5 s], l2 ~ U[1, l1]."""
    theta = rng.uniform(0.0, np.pi, n)
    l1 = rng.uniform(1.0, 2.5 * scale, n)
    l2 = rng.uniform(1.0, l1)
    return np.stack([l1, l2, theta], axis=1)


def sample_training_kernel(rng: np.random.Generator, scale: int, size: int = TRAIN_KERNEL_SIZE) -> np.ndarray:
    """One task kernel of MZSR's training distribution (see `sample_training_params`)."""
    l1, l2, theta = sample_training_params(rng, scale, 1)[0]
    return gaussian_kernel(l1, l2, theta, size)


@dataclass(frozen=True)
class Degradation:
    """A named test degradation: its kernel (None = plain bicubic) and subsampling method."""

    name: str
    kernel: np.ndarray | None
    method: str  # "direct" or "bicubic"
    description: str = ""


def _named() -> dict[str, Degradation]:
    return {
        "g0.2": Degradation("g0.2", gaussian_kernel(0.2, 0.2, 0.0, 15), "direct", "isotropic Gaussian, variance 0.2, direct subsampling"),
        "g2.0": Degradation("g2.0", gaussian_kernel(2.0, 2.0, 0.0, 21), "direct", "isotropic Gaussian, variance 2.0 (21x21), direct subsampling"),
        "ani": Degradation("ani", gaussian_kernel(4.0, 1.0, -np.pi / 4, 15), "direct", "anisotropic Gaussian l1=4, l2=1, theta=-45 deg, direct subsampling"),
        "gb1.3": Degradation("gb1.3", gaussian_kernel(1.3, 1.3, 0.0, 15), "bicubic", "isotropic Gaussian, variance 1.3, then bicubic downscaling"),
        "bicubic": Degradation("bicubic", None, "bicubic", "plain MATLAB bicubic downscaling, no extra blur"),
    }


NAMED_DEGRADATIONS = tuple(_named())


def named_degradation(name: str) -> Degradation:
    table = _named()
    if name not in table:
        raise MZSRError(f"unknown degradation {name!r}; named ones are {', '.join(table)} (or give a kernel file)")
    return table[name]


def validate_kernel(kernel, source: str = "kernel", image_shape: tuple[int, int] | None = None, image=None) -> np.ndarray:
    """Check a kernel and return it as float64 summing to 1 (with a warning when it had to be scaled).

    With `image_shape`, the kernel must also fit the image; `image` (its file) is then named first.
    """
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise MZSRError(f"{source}: kernel must be 2-D, got shape {k.shape}")
    if not np.issubdtype(k.dtype, np.number):
        raise MZSRError(f"{source}: kernel must be numeric, got dtype {k.dtype}")
    k = k.astype(np.float64)
    if k.size == 0:
        raise MZSRError(f"{source}: kernel is empty")
    if not np.all(np.isfinite(k)):
        raise MZSRError(f"{source}: kernel has NaN or infinite values")
    if np.any(k < 0):
        raise MZSRError(f"{source}: kernel has negative values (min {k.min():.3g}); a blur kernel must be non-negative")
    total = k.sum()
    if total <= 0:
        raise MZSRError(f"{source}: kernel sums to zero")
    if image_shape is not None and (k.shape[0] > image_shape[0] or k.shape[1] > image_shape[1]):
        (h, w), (kh, kw) = image_shape, k.shape
        if image is None:
            raise MZSRError(f"{source}: kernel {kw}x{kh} is larger than the image {w}x{h}")
        raise MZSRError(f"{image}: image is {w}x{h} pixels, smaller than the {kw}x{kh} kernel {source}")
    if abs(total - 1.0) > 1e-6:
        warnings.warn(f"{source}: kernel sums to {total:.6g}, normalised to 1", stacklevel=2)
        k = k / total
    return k


def load_kernel_file(path: str | Path) -> np.ndarray:
    """Read a kernel from .npy or .mat (key "kernel" as the MZSR authors, or "Kernel" as KernelGAN)."""
    path = Path(path)
    if not path.is_file():
        raise MZSRError(f"{path}: no such kernel file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            k = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            import scipy.io

            mat = scipy.io.loadmat(path)
            keys = [key for key in ("kernel", "Kernel") if key in mat]
            if not keys:
                found = sorted(k for k in mat if not k.startswith("__"))
                raise MZSRError(f"{path}: no 'kernel' or 'Kernel' variable in the .mat file (found {found})")
            k = mat[keys[0]]
        else:
            raise MZSRError(f"{path}: unsupported kernel file type {suffix!r} (use .mat or .npy)")
    except MZSRError:
        raise
    except Exception as e:  # corrupt files raise a zoo of exception types
        raise MZSRError(f"{path}: cannot read kernel file ({e})") from None
    return validate_kernel(k, str(path))


def resolve_degradation(spec: str, method: str | None = None) -> Degradation:
    """A degradation from a name (g0.2, g2.0, ani, gb1.3, bicubic) or a kernel file plus a method."""
    p = Path(spec)
    if spec in NAMED_DEGRADATIONS:
        d = named_degradation(spec)
        if method is not None and method != d.method:
            raise MZSRError(f"degradation {spec!r} uses {d.method} subsampling; --subsample {method} contradicts it")
        return d
    if p.suffix.lower() in (".mat", ".npy"):
        return Degradation(p.stem, load_kernel_file(p), method or "direct", f"kernel file {p}")
    raise MZSRError(f"{spec!r} is neither a named degradation ({', '.join(NAMED_DEGRADATIONS)}) nor a .mat/.npy kernel file")


def kernel_file_for_image(image: str | Path, scale: int) -> Path | None:
    """The kernel file that belongs to one test image, if any.

    Looks for KernelGAN's `<stem>_kernel_x<scale>.mat` beside the image or in a `kernels/` folder
    beside it, then for the MZSR authors' single `kernel.mat` for the whole folder.
    """
    image = Path(image)
    name = f"{image.stem}_kernel_x{scale}.mat"
    for candidate in (image.parent / name, image.parent / "kernels" / name, image.parent / "kernel.mat"):
        if candidate.is_file():
            return candidate
    return None
