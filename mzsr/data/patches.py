"""Cutting HR patches from images as the authors' generators do: grid positions, the flat-patch test,
the eight flips and rotations, and MATLAB-bicubic LR versions."""

from __future__ import annotations

import numpy as np

# The authors' generators keep a patch when log(gradient energy + 1e-10) >= -6: the default of the
# config's patches.*.flat_threshold (tests/test_settings.py checks that they agree).
FLAT_THRESHOLD = -6.0


def gradient_energy(patches: np.ndarray) -> np.ndarray:
    """Mean over the [:-1, :-1] region and channels of the squared row and column differences of
    uint8 patches (..., P, P, C) taken to [0, 1]: the authors' `gradients()`."""
    x = patches.astype(np.float64) / 255.0
    corner = x[..., :-1, :-1, :]
    energy = (corner - x[..., 1:, :-1, :]) ** 2 + (corner - x[..., :-1, 1:, :]) ** 2
    return energy.mean(axis=(-3, -2, -1))


def is_flat(patches: np.ndarray, threshold: float = FLAT_THRESHOLD) -> np.ndarray:
    """True for the patches the authors' generators drop: log(gradient energy + 1e-10) < threshold."""
    return np.log(gradient_energy(patches) + 1e-10) < threshold


def dihedral(x: np.ndarray, mode: int) -> np.ndarray:
    """Flip/rotation `mode` (0-7) of (..., H, W, C) arrays, numbered as the release's augmentation():
    `mode // 2` quarter turns (np.rot90), then an up-down flip when `mode` is odd."""
    y = np.rot90(x, mode // 2, axes=(-3, -2))
    return y[..., ::-1, :, :] if mode % 2 else y


def grid_positions(h: int, w: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the patch_size x patch_size crops of an h x w image on a regular grid."""
    return [(y, x) for y in range(0, h - patch_size + 1, stride) for x in range(0, w - patch_size + 1, stride)]


def grid_patches(img: np.ndarray, patch_size: int, stride: int, scale: int = 1) -> np.ndarray:
    """The crops at `grid_positions` of an HxWxC image, (n, P, P, C); with `scale`, the crops of its
    x1/scale version at the same places (corners and size divided by the scale)."""
    h, w = img.shape[:2]
    size = patch_size // scale
    corners = grid_positions(h * scale, w * scale, patch_size, stride)
    if not corners:
        return np.empty((0, size, size, img.shape[2]), img.dtype)
    return np.stack([img[y // scale : y // scale + size, x // scale : x // scale + size] for y, x in corners])


def bicubic_lr(img: np.ndarray, scale: int) -> np.ndarray:
    """The LR image of the release's pre-training pairs: the HR image mod-cropped to the scale, MATLAB
    bicubic x1/scale, rounded to uint8 (what DIV2K_train_LR_bicubic holds)."""
    from mzsr.degradation.degrade import to_uint8
    from mzsr.degradation.resize import imresize

    return to_uint8(imresize(img.astype(np.float64) / 255.0, 1.0 / scale))


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """The image cut to a multiple of the scale on each side (bottom and right), as the generators do."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]
