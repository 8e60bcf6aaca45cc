"""Blur kernels: MZSR's training-kernel sampler, the paper's named test degradations, the kernel
conventions, DIV2KRK-style random kernels (mzsr.degradation.resolve reads a degradation's spec).

Gaussian kernels have covariance S = R(theta) diag(l1, l2) R(theta)^T where l1, l2 are VARIANCES
(eigenvalues), sampled on a square grid centred on the middle pixel and normalised to sum 1.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from mzsr import MZSRError
from mzsr.facts import NAMED_SUBSAMPLING, RANDOM_KERNEL_SPEC

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


@dataclass(frozen=True)
class Degradation:
    """A named test degradation: its kernel (None = plain bicubic) and subsampling."""

    name: str
    kernel: np.ndarray | None
    subsampling: str  # "direct" or "bicubic"
    description: str = ""


def _named() -> dict[str, Degradation]:
    return {
        "g0.2": Degradation(
            "g0.2", gaussian_kernel(0.2, 0.2, 0.0, 15), "direct", "isotropic Gaussian, variance 0.2, direct subsampling"
        ),
        "g2.0": Degradation(
            "g2.0",
            gaussian_kernel(2.0, 2.0, 0.0, 21),
            "direct",
            "isotropic Gaussian, variance 2.0 (21x21), direct subsampling",
        ),
        "ani": Degradation(
            "ani",
            gaussian_kernel(4.0, 1.0, -np.pi / 4, 15),
            "direct",
            "anisotropic Gaussian l1=4, l2=1, theta=-45 deg, direct subsampling",
        ),
        "gb1.3": Degradation(
            "gb1.3",
            gaussian_kernel(1.3, 1.3, 0.0, 15),
            "bicubic",
            "isotropic Gaussian, variance 1.3, then bicubic downscaling",
        ),
        "bicubic": Degradation("bicubic", None, "bicubic", "plain MATLAB bicubic downscaling, no extra blur"),
    }


NAMED_DEGRADATIONS = tuple(_named())
assert {d.name: d.subsampling for d in _named().values()} == NAMED_SUBSAMPLING, "mzsr.facts and the kernels disagree"


def named_degradation(name: str) -> Degradation:
    table = _named()
    if name not in table:
        raise MZSRError(f"unknown degradation {name!r}; named ones are {', '.join(table)} (or give a kernel file)")
    return table[name]


def validate_kernel(
    kernel, source: str = "kernel", image_shape: tuple[int, int] | None = None, image=None
) -> np.ndarray:
    """Check a kernel and return it as float64 summing to 1 (with a warning when it had to be scaled).

    With `image_shape`, the kernel must also fit the image; `image` (its file) is then named first.
    """
    k = np.asarray(kernel)
    if k.ndim != 2:
        raise MZSRError(f"{source}: kernel must be 2-D, got shape {k.shape}")
    if not np.issubdtype(k.dtype, np.number):
        raise MZSRError(f"{source}: kernel must be numeric, got dtype {k.dtype}")
    k = np.ascontiguousarray(k, dtype=np.float64)
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


# ------------------------------------------------------------------ kernel conventions
# MZSR correlates with the kernel and keeps rows 0, s, 2s, ...: a kernel is centred when its centre of
# mass sits on the correlation origin, index size // 2 (the middle pixel of an odd kernel); no shift.
# KernelGAN (and the ZSSR it feeds) moves the centre of mass further, by 0.5 (sf - size % 2) pixels
# down and right, so that the first LR pixel sits in the middle of the first sf x sf HR block (their
# kernel_shift). The same blur in the two conventions differs by that sub-pixel shift; converting is
# a re-centring of the centre of mass.


def mzsr_center(shape) -> np.ndarray:
    """Where MZSR wants a kernel's centre of mass: the correlation origin, size // 2 per axis."""
    return np.asarray(shape) // 2


def kernelgan_center(shape, sf: int = 2) -> np.ndarray:
    """Where KernelGAN's kernel_shift puts the centre of mass: size // 2 + 0.5 (sf - size % 2)."""
    shape = np.asarray(shape)
    return shape // 2 + 0.5 * (sf - shape % 2)


def recenter_kernel(kernel: np.ndarray, center, clip: bool = True) -> np.ndarray:
    """Shift `kernel` (cubic spline, as KernelGAN's kernel_shift) so that its centre of mass lands on
    `center` (in the unpadded kernel's coordinates). It is first zero-padded by ceil(max |shift|) + 1
    on every side, as KernelGAN does, so no mass is lost. `clip`: zero the spline's small negative
    ringing and normalise to sum 1 (a blur kernel for MZSR); KernelGAN itself does neither."""
    import scipy.ndimage

    k = np.asarray(kernel, dtype=np.float64)
    shift = np.asarray(center, dtype=np.float64) - np.asarray(scipy.ndimage.center_of_mass(k))
    pad = int(np.ceil(np.max(np.abs(shift)) - 1e-9)) + 1  # (a rounding-level shift needs no extra pixel)
    k = scipy.ndimage.shift(np.pad(k, pad), shift)
    if clip:
        k = np.clip(k, 0.0, None)
        # zeroing the ringing moves the centre of mass (by ~0.01-0.03 pixel): a linear-interpolation
        # shift of the residual moves it exactly (it keeps first moments) and makes no new ringing
        # (in a frame one pixel larger, since the spline's tails reach the border; cut back if unused)
        k = np.pad(k, 1)
        residual = np.asarray(center, dtype=np.float64) + pad + 1 - np.asarray(scipy.ndimage.center_of_mass(k))
        k = scipy.ndimage.shift(k, residual, order=1)
        ring = k.sum() - k[1:-1, 1:-1].sum()
        if ring <= 1e-9 * k.sum():  # (moves the centre of mass by < 1e-8 pixel)
            k = k[1:-1, 1:-1]
        k = k / k.sum()
    return k


# How the LR images were made, which the LR image alone cannot tell (a global half-pixel shift against
# the unseen HR grid): "mzsr", the paper's test sets (the kernel centred on the correlation origin);
# "kernelgan", DIV2KRK and every LR image that KernelGAN's or ZSSR's code made (its kernel_shift).
KERNEL_CONVENTIONS = ("mzsr", "kernelgan")


def convention_center(shape, convention: str, sf: int = 2) -> np.ndarray:
    """Where a kernel's centre of mass belongs in `convention`: MZSR's origin or KernelGAN's."""
    check_convention(convention)
    return mzsr_center(shape) if convention == "mzsr" else kernelgan_center(shape, sf)


def place_kernel(kernel: np.ndarray, convention: str = "mzsr", sf: int = 2, source: str = "kernel") -> np.ndarray:
    """A kernel, centred anywhere, with its centre of mass moved to where `convention` wants it
    (`recenter_kernel`), as a non-negative kernel summing to 1. Negative spline ringing down to 15% of
    the peak is clipped first: KernelGAN shifts its hard-edged, thresholded kernels without clipping,
    and they ring by 1.5-8%."""
    k = np.asarray(kernel)
    if k.ndim == 2 and np.issubdtype(k.dtype, np.number) and k.size and np.all(np.isfinite(k)):
        k = k.astype(np.float64)
        if k.max() > 0 and k.min() >= -0.15 * k.max():
            total = k.sum()
            # its own sum kept, so that validate_kernel warns if the file is off; KernelGAN's spline
            # shift itself moves the sum by ~0.1%, which is normalised without a word
            total = 1.0 if abs(total - 1.0) < 0.01 else total
            k = np.clip(k, 0.0, None)
            k = k * (total / k.sum())
    k = validate_kernel(k, source)
    return recenter_kernel(k, convention_center(k.shape, convention, sf))


def check_convention(convention: str, subsampling: str = "direct", scale: int = 2, source: str = "kernel") -> None:
    """A known convention, and KernelGAN's only with direct subsampling (its LR keeps one pixel in
    `scale`; bicubic subsampling has no such grid)."""
    if convention not in KERNEL_CONVENTIONS:
        raise MZSRError(f"unknown kernel convention {convention!r}; use one of {', '.join(KERNEL_CONVENTIONS)}")
    if convention == "kernelgan" and subsampling != "direct":
        raise MZSRError(
            f"{source}: the kernelgan convention is one of direct subsampling (KernelGAN keeps one pixel"
            f" in {scale} per axis); {subsampling} subsampling has none"
        )


def in_convention(
    kernel: np.ndarray | None, convention: str, scale: int, subsampling: str = "direct", source: str = "kernel"
) -> np.ndarray | None:
    """A kernel in MZSR's convention (named, random, estimated) as LR images made in `convention` need
    it: unchanged for "mzsr", re-centred on KernelGAN's centre for "kernelgan" (`check_convention`)."""
    check_convention(convention, subsampling, scale, source)
    if convention == "mzsr" or kernel is None:
        return kernel
    return place_kernel(kernel, "kernelgan", scale, source)


def shift_image(image: np.ndarray, offset) -> np.ndarray:
    """An HxWx3 uint8 image moved by `offset` (rows, columns; pixels, fractional) with a cubic spline,
    edges continued: the output of a network on one grid moved to another."""
    import scipy.ndimage

    planes = [
        scipy.ndimage.shift(image[..., c].astype(np.float64), offset, order=3, mode="nearest")
        for c in range(image.shape[2])
    ]
    return np.clip(np.round(np.stack(planes, axis=-1)), 0, 255).astype(np.uint8)


def kernelgan_to_mzsr(kernel: np.ndarray, source: str = "kernel") -> np.ndarray:
    """A kernel in KernelGAN's convention (its .mat files, key "Kernel") as MZSR uses it: centre of
    mass back on the correlation origin (`place_kernel`)."""
    return place_kernel(kernel, "mzsr", source=source)


def mzsr_to_kernelgan(kernel: np.ndarray, sf: int = 2) -> np.ndarray:
    """The inverse: an MZSR-convention kernel as KernelGAN writes it (its kernel_shift, no clipping)."""
    k = np.asarray(kernel, dtype=np.float64)
    return recenter_kernel(k, kernelgan_center(k.shape, sf), clip=False)


def analytic_kernel(kernel: np.ndarray) -> np.ndarray:
    """The x4 kernel equal to blurring and subsampling twice by 2 with `kernel` (KernelGAN's analytic
    kernel, appendix of its paper): big[2r + u] += k[r] k[u], then the (size // 2)-pixel border of
    negligible values cropped. A centred x2 kernel gives a centred x4 kernel."""
    k = np.asarray(kernel, dtype=np.float64)
    n = k.shape[0]
    if k.shape != (n, n):
        raise MZSRError(f"analytic x4 kernel: needs a square x2 kernel, got shape {k.shape}")
    big = np.zeros((3 * n - 2, 3 * n - 2))
    for r in range(n):
        for c in range(n):
            big[2 * r : 2 * r + n, 2 * c : 2 * c + n] += k[r, c] * k
    crop = n // 2
    big = big[crop : big.shape[0] - crop, crop : big.shape[1] - crop]
    return big / big.sum()


# ------------------------------------------------------------------ random per-image kernels (DIV2KRK)
# KernelGAN (Bell-Kligler et al., NeurIPS 2019, sec. 5) made its blind benchmark DIV2KRK by degrading
# every image with a random kernel of its own: an 11x11 anisotropic Gaussian at x2 with eigen-variances
# l1, l2 ~ U(0.6, 5) drawn independently and a rotation theta ~ U(-pi, pi), times uniform
# multiplicative noise of up to 25% per pixel, normalised, its centre of mass re-centred; at x4 the
# analytic x4 kernel of such an x2 kernel. Here in MZSR's convention: the Gaussian's mean on the middle
# pixel and the noisy kernel's centre of mass moved back there, no half-pixel shift.

RANDOM_KERNEL_SIZE = 11
RANDOM_KERNEL_VARIANCES = (0.6, 5.0)
RANDOM_KERNEL_NOISE = 0.25


def random_kernel_params(rng: np.random.Generator, size: int = RANDOM_KERNEL_SIZE):
    """(l1, l2, theta, noise) of one random x2 kernel, drawn in this order: the eigen-variances
    l1, l2 ~ U(0.6, 5) independently (so l2 may exceed l1), theta ~ U(-pi, pi), and the size x size
    multiplicative noise ~ U(-0.25, 0.25) per pixel."""
    lo, hi = RANDOM_KERNEL_VARIANCES
    l1, l2 = rng.uniform(lo, hi, 2)
    theta = rng.uniform(-np.pi, np.pi)
    noise = rng.uniform(-RANDOM_KERNEL_NOISE, RANDOM_KERNEL_NOISE, (size, size))
    return float(l1), float(l2), float(theta), noise


def noisy_gaussian_kernel(
    l1: float, l2: float, theta: float, noise: np.ndarray | None = None, size: int = RANDOM_KERNEL_SIZE
) -> np.ndarray:
    """The Gaussian `gaussian_kernel(l1, l2, theta, size)` times (1 + noise), normalised, with its
    centre of mass re-centred on the middle pixel. `noise` None: the plain Gaussian (centred already).

    The re-centring is `recenter_kernel` (a cubic-spline shift into a zero-padded frame), cut back to
    size x size as KernelGAN's generator keeps its frame (the spline's spill over the border is under
    0.1% of the mass), then a first-order correction k *= 1 + a . (x - c), with a chosen so that the
    first moment about the middle pixel c is zero: the spline's clipped ringing and the cut leave the
    centre of mass up to about 0.006 px off, and the correction (at most about 1% per pixel, far below
    the 25% noise) puts it on the middle pixel to rounding error.
    """
    k = gaussian_kernel(l1, l2, theta, size)
    if noise is None:
        return k
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != k.shape:
        raise MZSRError(f"random kernel: noise of shape {noise.shape} for a {size}x{size} kernel")
    k = k * (1.0 + noise)
    k = recenter_kernel(k / k.sum(), mzsr_center(k.shape))
    pad = (k.shape[0] - size) // 2
    k = k[pad : pad + size, pad : pad + size]
    k = k / k.sum()
    offsets = np.arange(size, dtype=np.float64) - mzsr_center((size,))[0]
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")  # row, column offsets from the middle pixel
    first = np.array([(k * yy).sum(), (k * xx).sum()])
    second = np.array([[(k * yy * yy).sum(), (k * yy * xx).sum()], [(k * yy * xx).sum(), (k * xx * xx).sum()]])
    a = -np.linalg.solve(second, first)
    k = np.clip(k * (1.0 + a[0] * yy + a[1] * xx), 0.0, None)
    return k / k.sum()


def random_kernel(rng: np.random.Generator, scale: int) -> np.ndarray:
    """One random DIV2KRK-style kernel, MZSR convention: x2 the noisy Gaussian of
    `random_kernel_params` (11x11), x4 the `analytic_kernel` of such an x2 kernel (21x21)."""
    if scale == 2:
        return noisy_gaussian_kernel(*random_kernel_params(rng))
    if scale == 4:
        return analytic_kernel(random_kernel(rng, 2))
    raise MZSRError(f"random kernels (rk) exist for x2 and x4 as in KernelGAN's DIV2KRK, not for scale {scale}")


def random_kernel_seed(spec: str) -> int | None:
    """The seed of a random per-image degradation spec, `rk` (seed 0) or `rk<N>` (seed N); else None."""
    m = RANDOM_KERNEL_SPEC.fullmatch(str(spec))
    return None if m is None else int(m.group(1) or 0)


def random_kernel_rng(seed: int, stem: str) -> np.random.Generator:
    """The generator of one image's random kernel: seeded by (seed, CRC-32 of the image's stem)."""
    return np.random.default_rng([int(seed), zlib.crc32(str(stem).encode())])


def random_kernel_for_image(seed: int, stem: str, scale: int) -> np.ndarray:
    """The kernel of degradation rk<seed> for the image named `stem` (its file name without suffix):
    the same for the same (seed, stem, scale), and drawn afresh for another image or seed."""
    return random_kernel(random_kernel_rng(seed, stem), scale)
