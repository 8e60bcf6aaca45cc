"""Per-image blur-kernel estimation: an LR image's x2 kernel (x4 as its analytic square) by the
learned estimator (`mzsr.estimation.kernel_net`, the default) or KernelGAN (`mzsr.estimation.kernelgan`),
returned in MZSR's convention (centre of mass on the correlation origin) beside KernelGAN's own
(`mzsr.degradation.kernels.kernelgan_center`), and the error of an estimate against a true kernel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mzsr import MZSRError, settings
from mzsr.degradation.kernels import analytic_kernel, mzsr_center, mzsr_to_kernelgan, recenter_kernel
from mzsr.estimation import kernelgan
from mzsr.estimation.kernelgan import KERNELGAN_DEFAULTS


@dataclass
class KernelEstimate:
    """One image's estimate. `kernel`: MZSR's convention at `scale` (use it to degrade, adapt, ZSSR);
    `kernelgan`: what the release writes to its .mat file (shifted, not clipped); `method`: learned or
    kernelgan (`iterations`: KernelGAN's, 0 for the learned estimator)."""

    kernel: np.ndarray
    kernelgan: np.ndarray
    scale: int
    iterations: int
    seconds: float
    method: str = "kernelgan"


def check_estimable(
    shape, real_image: bool, source: str = "image", crop: int = KERNELGAN_DEFAULTS["crop"], method: str = "kernelgan"
) -> None:
    """The estimator's size limit: for KernelGAN, G's crops fit after the 10-pixel edge shave (none for
    real images)."""
    if method == "learned":
        from mzsr.estimation.kernel_net import MIN_SIDE

        if min(shape[:2]) < MIN_SIDE:
            raise MZSRError(
                f"{source}: image is {shape[1]}x{shape[0]} pixels; the learned kernel estimator needs at least"
                f" {MIN_SIDE} pixels on each side"
            )
        return
    need = crop + (0 if real_image else 20)
    if min(shape[:2]) < need:
        hint = "" if real_image else f" ({crop} with the real-image setting: --real, estimate.real_image)"
        raise MZSRError(
            f"{source}: image is {shape[1]}x{shape[0]} pixels; KernelGAN needs at least {need} pixels on"
            f" each side{hint}"
        )


def estimate_kernel(
    lr_image: np.ndarray,
    scale: int = 2,
    cfg: dict | None = None,
    device: str | torch.device = "cpu",
    seed: int = settings.default("estimate.seed"),
    progress: bool = False,
    source: str = "image",
    weights: str | Path | None = None,
) -> KernelEstimate:
    """One LR image's (HxWx3 float in [0, 1]) x2 kernel, or for x4 the analytic x4 kernel of it, as
    KernelGAN's release does: by cfg["method"], the learned estimator (`mzsr.estimation.kernel_net`,
    the default; `weights` its file, default the released one) or KernelGAN. Seeded: the same image,
    settings and seed give the same kernel on one device and torch version."""
    if scale not in (2, 4):
        raise MZSRError(f"{source}: kernels are estimated at x2 (and x4 from them); scale {scale} is not supported")
    cfg = settings.with_defaults(cfg, KERNELGAN_DEFAULTS, "kernel estimation")
    if cfg["method"] == "learned":
        return _learned_estimate(lr_image, scale, source, weights)
    return _kernelgan_estimate(lr_image, scale, cfg, device, seed, progress, source)


def _learned_estimate(lr_image: np.ndarray, scale: int, source: str, weights) -> KernelEstimate:
    from mzsr.estimation import kernel_net

    start = time.perf_counter()
    check_estimable(np.shape(lr_image), True, source, method="learned")
    k2 = kernel_net.estimate(lr_image, kernel_net.load(weights))
    release_k2 = mzsr_to_kernelgan(k2, 2)
    if scale == 4:
        k2, release_k2 = analytic_kernel(k2), analytic_kernel(release_k2)
    return KernelEstimate(k2, release_k2, scale, 0, time.perf_counter() - start, "learned")


def _kernelgan_estimate(lr_image, scale, cfg, device, seed, progress, source) -> KernelEstimate:
    check_estimable(np.shape(lr_image), bool(cfg["real_image"]), source, int(cfg["crop"]))
    start = time.perf_counter()
    k2 = kernelgan.train_kernel(lr_image, cfg, device, seed, progress, source)
    mzsr_k2 = recenter_kernel(k2, mzsr_center(k2.shape))
    release_k2 = mzsr_to_kernelgan(k2, 2)
    if scale == 4:
        mzsr_k, release_k = analytic_kernel(mzsr_k2), analytic_kernel(release_k2)
    else:
        mzsr_k, release_k = mzsr_k2, release_k2
    iterations = int(cfg["iterations"])
    return KernelEstimate(mzsr_k, release_k, scale, iterations, time.perf_counter() - start, "kernelgan")


def kernel_error(estimate: np.ndarray, truth: np.ndarray) -> float:
    """Sum of squared differences of two centred kernels (each normalised to sum 1), zero-padded to
    one size about their centres. Both must be in one convention (here MZSR's, centre of mass on the
    middle pixel), since the estimator cannot see a translation."""
    a, b = (np.asarray(k, dtype=np.float64) / np.sum(k) for k in (estimate, truth))
    n = max(a.shape + b.shape) | 1  # odd, so the middle pixels line up

    def pad(k):
        return np.pad(k, [((n - m) // 2, n - m - (n - m) // 2) for m in k.shape])

    return float(np.sum((pad(a) - pad(b)) ** 2))
