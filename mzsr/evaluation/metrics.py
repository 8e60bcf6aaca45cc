"""The evaluation protocol behind the paper's tables.

HR mod-cropped to the scale; RGB rounded to uint8; Y = BT.601 from uint8 RGB, rounded; `scale`
pixels shaved on every border; PSNR with peak 255; SSIM with an 11x11 Gaussian window
(sigma 1.5, K = 0.01/0.03, data range 255) on the same Y.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so that height and width are multiples of `scale`."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def rgb_to_y(img_uint8: np.ndarray) -> np.ndarray:
    """BT.601 luma from uint8 RGB: round(16 + (65.481 R + 128.553 G + 24.966 B) / 255), as float64."""
    rgb = np.asarray(img_uint8, dtype=np.float64)
    if rgb.ndim == 2:
        return rgb
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return np.round(y)


def _prepare(sr: np.ndarray, hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR image {sr.shape} and ground truth {hr.shape} differ in shape")
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise TypeError("the protocol compares uint8 images; round the SR output first")
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    if scale > 0:
        ys, yh = ys[scale:-scale, scale:-scale], yh[scale:-scale, scale:-scale]
    return ys, yh


def psnr(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Y-channel PSNR (dB, peak 255) with a `scale`-pixel shave; infinite for identical images."""
    ys, yh = _prepare(sr, hr, scale)
    mse = float(np.mean((ys - yh) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim(sr: np.ndarray, hr: np.ndarray, scale: int) -> float:
    """Y-channel SSIM of the paper's protocol (Gaussian window, sigma 1.5, data range 255)."""
    ys, yh = _prepare(sr, hr, scale)
    return float(
        structural_similarity(ys, yh, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0)
    )


def redegradation_psnr(sr: np.ndarray, lr_image: np.ndarray, kernel, scale: int, subsampling: str) -> float:
    """RGB PSNR between the LR input and the SR output degraded again with the given kernel.

    A high value means the kernel explains the LR image from the SR result; a wrong or misaligned
    kernel shows up as a low value. Borders reached by the kernel's boundary handling are shaved.
    """
    from mzsr.degradation.degrade import degrade, to_uint8

    redone = to_uint8(degrade(sr / 255.0, kernel, scale, subsampling)).astype(np.float64)
    lr_image = np.asarray(lr_image, dtype=np.float64)
    if redone.shape != lr_image.shape:
        raise ValueError(f"re-degraded SR {redone.shape} does not match the LR image {lr_image.shape}")
    k = 0 if kernel is None else max(np.shape(kernel)) // 2
    shave = max(1, -(-k // scale))
    diff = (redone - lr_image)[shave:-shave, shave:-shave]
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
