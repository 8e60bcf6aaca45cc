"""Refinements of an SR output that MZSR and ZSSR share: the self-ensemble over the flips and
rotations that the kernel allows, and back-projection onto the LR image through its degradation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mzsr.adaptation.inference import DEFAULT_TILE, upscale
from mzsr.degradation.degrade import blur_torch, degrade_torch, direct_indices
from mzsr.degradation.resize import imresize_torch

# ------------------------------------------------------------------------------------ self-ensemble
# The 8 flips/rotations as (transpose, flip rows, flip columns), applied in that order.
TRANSFORMS = tuple((t, fr, fc) for t in (False, True) for fr in (False, True) for fc in (False, True))


def apply_transform(x, transform):
    """One of TRANSFORMS on the last two axes of a tensor or numpy array."""
    transpose, flip_rows, flip_cols = transform
    flip = torch.flip if isinstance(x, torch.Tensor) else np.flip
    if transpose:
        x = x.transpose(-1, -2) if isinstance(x, torch.Tensor) else np.swapaxes(x, -1, -2)
    if flip_rows:
        x = flip(x, (-2,)) if isinstance(x, torch.Tensor) else flip(x, -2)
    if flip_cols:
        x = flip(x, (-1,)) if isinstance(x, torch.Tensor) else flip(x, -1)
    return x


def invert_transform(x, transform):
    transpose, flip_rows, flip_cols = transform
    x = apply_transform(x, (False, flip_rows, flip_cols))  # flips are their own inverses
    return apply_transform(x, (transpose, False, False))


def _geometric(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of (N, C, H, W) (augmentation, where alignment does not matter)."""
    return apply_transform(x, TRANSFORMS[k])


def valid_transforms(
    kernel: np.ndarray | None, subsampling: str, scale: int
) -> list[tuple[tuple[bool, bool, bool], tuple[int, int]]]:
    """The flips/rotations under which the degradation keeps its form, each with its sampling phase.

    Transforming an LR image made with kernel k transforms k with it, so only transforms that leave k
    unchanged give the model an input of the degradation it was adapted to (an odd-sized kernel,
    centred; an even-sized one has no centre pixel and keeps only the identity). Direct subsampling
    keeps HR rows 0, s, 2s, ...: in a reversed axis those rows become s-1, 2s-1, ..., so the model's
    output there lies s-1 HR pixels off and is shifted back (bicubic subsampling is centred: no
    shift). Returns [(transform, (row phase, column phase))].
    """
    out = []
    for transform in TRANSFORMS:
        if kernel is not None:
            k = np.asarray(kernel, dtype=np.float64)
            odd = k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
            moved = apply_transform(k, transform)
            if transform != TRANSFORMS[0] and (
                not odd or moved.shape != k.shape or not np.allclose(moved, k, rtol=0, atol=1e-6 * k.max())
            ):
                continue
        phase = scale - 1 if (kernel is not None and subsampling == "direct") else 0
        out.append((transform, (phase * transform[1], phase * transform[2])))
    return out


def _shift_back(x: torch.Tensor, phase: tuple[int, int]) -> torch.Tensor:
    """x[i] <- x[i - p] along rows and columns, the first p lines repeated (content moves by +p)."""
    for dim, p in ((-2, phase[0]), (-1, phase[1])):
        if p:
            n = x.shape[dim]
            idx = torch.clamp(torch.arange(n, device=x.device) - p, min=0)
            x = x.index_select(dim, idx)
    return x


@torch.no_grad()
def geometric_ensemble(
    sr_fn, lr_image: torch.Tensor, scale: int, kernel: np.ndarray | None, subsampling: str, output_shape=None
) -> torch.Tensor:
    """Median over the valid flips/rotations (`valid_transforms`) of sr_fn(T(LR)), each shifted back
    by its sampling phase and transformed back; `sr_fn(lr_image, output_shape)` maps LR to HR."""
    hr_shape = (
        tuple(output_shape) if output_shape is not None else tuple(-(-n * scale // 1) for n in lr_image.shape[-2:])
    )
    outs = []
    for transform, phase in valid_transforms(kernel, subsampling, scale):
        shape = hr_shape[::-1] if transform[0] else hr_shape
        out = _shift_back(sr_fn(apply_transform(lr_image, transform), shape), phase)
        outs.append(invert_transform(out, transform))
    return torch.stack(outs).median(dim=0).values


@torch.no_grad()
def self_ensemble(
    model: torch.nn.Module,
    lr_image: torch.Tensor,
    scale: int,
    kernel: np.ndarray | None = None,
    subsampling: str = "direct",
    tile: int | None = DEFAULT_TILE,
    output_shape=None,
) -> torch.Tensor:
    """ZSSR's final test (median over flips/rotations), restricted to the transforms valid for the kernel."""
    if isinstance(kernel, torch.Tensor):
        kernel = kernel.detach().cpu().numpy()
    return geometric_ensemble(
        lambda x, shape: upscale(model, x, scale, tile, shape), lr_image, scale, kernel, subsampling, output_shape
    )


# ------------------------------------------------------------------------------------ back-projection
def _lattice_gain(kernel: torch.Tensor, scale: int) -> float:
    """Largest eigenvalue of D D^T for direct subsampling of a correlation with a non-negative kernel:
    the kernel's autocorrelation summed over the offsets that are multiples of the scale."""
    k = kernel.double()
    auto = F.conv2d(k[None, None], k[None, None], padding=(k.shape[0] - 1, k.shape[1] - 1))[0, 0]
    cy, cx = k.shape[0] - 1, k.shape[1] - 1
    return float(auto[cy % scale :: scale, cx % scale :: scale].sum())


def _direct_adjoint(error: torch.Tensor, kernel: torch.Tensor, scale: int, hr_shape, grid: str) -> torch.Tensor:
    """D^T of direct subsampling: the LR error placed at its HR sampling positions, then convolved
    with the kernel (the adjoint of correlating with it)."""
    h, w = hr_shape
    up = error.new_zeros(error.shape[:-2] + (h, w))
    rows = torch.as_tensor(direct_indices(h, scale, grid), device=error.device)
    cols = torch.as_tensor(direct_indices(w, scale, grid), device=error.device)
    up[..., rows[:, None], cols] = error
    return blur_torch(up, torch.flip(kernel, (0, 1)))


@torch.no_grad()
def back_project(
    sr: torch.Tensor,
    lr_image: torch.Tensor,
    kernel: torch.Tensor | None,
    scale: int,
    subsampling: str,
    iterations: int = 10,
    grid: str = "release",
) -> torch.Tensor:
    """Iterative back-projection: push D(SR) towards the LR image, clipping to [0, 1] each round.

    Bicubic subsampling (and plain bicubic): the release's and ZSSR's rule, the error bicubic-upscaled.
    Direct subsampling: bicubic upscaling would put the error half an LR pixel away from the HR rows
    0, s, 2s, ... it came from, so the error goes back through the adjoint of D with the step
    1 / ||D D^T|| (Landweber), aligned by construction.
    """
    if kernel is not None and subsampling == "direct":
        step = 1.0 / _lattice_gain(kernel, scale)
        for _ in range(iterations):
            error = lr_image - degrade_torch(sr, kernel, scale, subsampling, grid)
            sr = (sr + step * _direct_adjoint(error, kernel.to(sr.dtype), scale, sr.shape[-2:], grid)).clamp(0.0, 1.0)
        return sr
    for _ in range(iterations):
        error = lr_image - degrade_torch(sr, kernel, scale, subsampling, grid)
        sr = (sr + imresize_torch(error, float(scale), output_shape=sr.shape[-2:])).clamp(0.0, 1.0)
    return sr
