"""Degradations LR = D(HR) of MZSR, as numpy and batched-torch twins.

- direct ("g^d"): correlate with kernel k (no flip, reflect boundary = scipy.ndimage mode "reflect"),
  then keep rows/columns round(linspace(0, n - s, ceil(n / s))) as the release does (= 0, s, 2s, ...
  when s divides n; grid "regular" keeps 0, s, 2s, ... at every size); no kernel shift;
- bicubic ("g^b"): correlate with k, then MATLAB-bicubic downscale by 1/s;
- plain bicubic: MATLAB-bicubic downscale by 1/s, no extra blur (the pre-training degradation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from mzsr.degradation.resize import imresize, imresize_torch

SUBSAMPLING = ("direct", "bicubic")
# Which rows/columns direct subsampling keeps when the scale does not divide the size.
GRIDS = ("release", "regular")


def direct_indices(n: int, scale: int, grid: str = "release") -> np.ndarray:
    """Rows (or columns) of a length-n axis that direct subsampling keeps: ceil(n / scale) of them.

    "release": round(linspace(0, n - scale, ceil(n / scale))), the authors' imresize (and ZSSR's);
    "regular": 0, scale, 2 scale, ... Both are 0, s, 2s, ... when the scale divides n.
    """
    if grid not in GRIDS:
        raise ValueError(f"unknown subsampling grid {grid!r}; expected one of {GRIDS}")
    count = -(-n // scale)
    if grid == "regular":
        return np.arange(0, n, scale)
    return np.round(np.linspace(0, n - scale, count)).astype(np.int64)


def _check_subsampling(subsampling: str) -> None:
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"unknown subsampling {subsampling!r}; expected one of {SUBSAMPLING}")


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each channel of an HxWxC (or HxW) float image with `kernel`, reflect boundary."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if img.ndim == 2:
        return scipy.ndimage.correlate(img, kernel, mode="reflect")
    return np.stack(
        [scipy.ndimage.correlate(img[..., c], kernel, mode="reflect") for c in range(img.shape[2])], axis=-1
    )


def degrade(
    hr: np.ndarray, kernel: np.ndarray | None, scale: int, subsampling: str = "direct", grid: str = "release"
) -> np.ndarray:
    """LR image from an HxWxC float HR image; kernel None means plain bicubic downscaling."""
    if kernel is None:
        return imresize(hr, 1.0 / scale)
    _check_subsampling(subsampling)
    blurred = blur(hr, kernel)
    if subsampling == "direct":
        rows, cols = direct_indices(hr.shape[0], scale, grid), direct_indices(hr.shape[1], scale, grid)
        return blurred[rows[:, None], cols]
    return imresize(blurred, 1.0 / scale)


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices that pad a length-n axis like scipy's "reflect" (d c b a | a b c d | d c b a)."""
    idx = np.arange(-before, n + after)
    period = 2 * n
    idx = np.mod(idx, period)
    idx = np.where(idx >= n, period - 1 - idx, idx)
    return torch.as_tensor(idx, device=device)


def blur_torch(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate (N, C, H, W) with one 2-D kernel per batch item (N, kh, kw) or a shared (kh, kw) one."""
    n, c, h, w = x.shape
    if kernel.dim() == 2:
        kernel = kernel.expand(n, *kernel.shape)
    kh, kw = kernel.shape[-2:]
    # scipy centres a kernel of size K at K // 2.
    rows = _symmetric_index(h, kh // 2, kh - 1 - kh // 2, x.device)
    cols = _symmetric_index(w, kw // 2, kw - 1 - kw // 2, x.device)
    padded = x.index_select(2, rows).index_select(3, cols)
    # Grouped conv: every (image, channel) plane gets its own image's kernel.
    weight = kernel.to(x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, kh, kw)
    out = F.conv2d(padded.reshape(1, n * c, *padded.shape[-2:]), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def subsample_direct_torch(x: torch.Tensor, scale: int, grid: str = "release") -> torch.Tensor:
    """Keep the rows and columns of `direct_indices` of a (..., H, W) tensor."""
    h, w = x.shape[-2:]
    if h % scale == 0 and w % scale == 0:
        return x[..., ::scale, ::scale]  # the same rows for both grids, and a cheap view
    rows = torch.as_tensor(direct_indices(h, scale, grid), device=x.device)
    cols = torch.as_tensor(direct_indices(w, scale, grid), device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def degrade_torch(
    x: torch.Tensor, kernel: torch.Tensor | None, scale: int, subsampling: str = "direct", grid: str = "release"
) -> torch.Tensor:
    """Batched twin of `degrade` for (N, C, H, W) tensors; kernel (kh, kw), (N, kh, kw) or None."""
    if kernel is None:
        return imresize_torch(x, 1.0 / scale)
    _check_subsampling(subsampling)
    blurred = blur_torch(x, kernel)
    if subsampling == "direct":
        return subsample_direct_torch(blurred, scale, grid)
    return imresize_torch(blurred, 1.0 / scale)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """round(clip(255 * img)) as uint8: how the authors quantised their LR test PNGs."""
    return np.round(np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_lr_png(
    hr: np.ndarray, kernel: np.ndarray | None, scale: int, subsampling: str, path: str | Path
) -> np.ndarray:
    """Degrade a float HR image and save the LR PNG exactly as the authors did; returns the uint8 LR."""
    from mzsr.files.images import write_png

    lr = to_uint8(degrade(hr, kernel, scale, subsampling))
    write_png(path, lr)
    return lr
