"""MATLAB-compatible bicubic imresize, for numpy HxWxC images and batched torch (N, C, H, W) tensors.

Published super-resolution numbers are computed with MATLAB's imresize: cubic kernel (a = -0.5),
kernel width 4, antialiasing when downscaling (the kernel is stretched by 1/scale), symmetric
boundary and output size ceil(in * scale). torch's and PIL's bicubic differ from it, so every
bicubic resize in the project goes through this module. Both twins use the same per-axis
(index, weight) tables, built once in float64, so they agree to float32 precision.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


@lru_cache(maxsize=256)
def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """Per-output-pixel input indices and weights along one axis, as MATLAB computes them.

    Returns (indices (out_len, P) int64, weights (out_len, P) float64); indices are already
    mirrored into [0, in_len) (symmetric boundary) and all-zero weight columns are dropped.
    """
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel = lambda x: scale * cubic(scale * x)  # noqa: E731 - stretched kernel
        kernel_width = kernel_width / scale
    else:
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, len(mirror))]
    keep = np.any(weights != 0, axis=0)
    return indices[:, keep], weights[:, keep]


def output_shape_for(in_shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size: ceil(in * scale) per axis."""
    return tuple(int(math.ceil(n * scale - 1e-9)) for n in in_shape)  # type: ignore[return-value]


def _plan(in_hw, scale, output_shape):
    """Resolve (scale_h, scale_w) and (out_h, out_w) the way MATLAB does.

    With both a scale and a size (as the release and ZSSR resize son -> father), the scale stays
    exact and the result is cut to (or extended to) the size; with a size alone the scale becomes
    size / input per axis.
    """
    if output_shape is not None:
        out_hw = (int(output_shape[0]), int(output_shape[1]))
        if scale is not None:
            scales = (float(scale), float(scale))
        else:
            scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])
    elif scale is not None:
        scales = (float(scale), float(scale))
        out_hw = output_shape_for(in_hw, float(scale))
    else:
        raise ValueError("imresize needs a scale or an output_shape")
    if min(out_hw) < 1 or min(in_hw) < 1:
        raise ValueError(f"cannot resize {in_hw} to {out_hw}")
    return scales, out_hw


def imresize(img: np.ndarray, scale: float | None = None, output_shape=None, antialias: bool = True) -> np.ndarray:
    """Resize an HxW or HxWxC float image like MATLAB's imresize(img, scale, 'bicubic').

    Give `scale` and `output_shape` together for an upscale to a target size (son -> father,
    LR -> HR): the scale stays exact and the output is cut to the size, as the release does.
    """
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float64)
    scales, out_hw = _plan(img.shape[:2], scale, output_shape)
    out = img
    # MATLAB resizes the axis with the smaller scale first.
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        idx, w = contributions(img.shape[axis], out_hw[axis], scales[axis], antialias)
        moved = np.moveaxis(out, axis, 0)  # (in, ...)
        acc = np.zeros((idx.shape[0],) + moved.shape[1:], dtype=out.dtype)
        # One tap at a time keeps memory at the size of the output, whatever the image size.
        for tap in range(idx.shape[1]):
            acc += w[:, tap].reshape((-1,) + (1,) * (moved.ndim - 1)).astype(out.dtype) * moved[idx[:, tap]]
        out = np.moveaxis(acc, 0, axis)
    return out


def imresize_torch(
    x: torch.Tensor, scale: float | None = None, output_shape=None, antialias: bool = True
) -> torch.Tensor:
    """Batched twin of `imresize` for (N, C, H, W) or (C, H, W) tensors on any device; differentiable."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    scales, out_hw = _plan(tuple(x.shape[-2:]), scale, output_shape)
    out = x
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        dim = axis + 2
        idx, w = contributions(x.shape[dim], out_hw[axis], scales[axis], antialias)
        idx_t = torch.as_tensor(idx, device=x.device)
        w_t = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        w_shape = [1] * out.dim()
        w_shape[dim] = idx.shape[0]
        acc = None
        for tap in range(idx.shape[1]):  # tap by tap: memory stays at the size of the output
            term = out.index_select(dim, idx_t[:, tap]) * w_t[:, tap].reshape(w_shape)
            acc = term if acc is None else acc + term
        out = acc
    return out.squeeze(0) if squeeze else out
