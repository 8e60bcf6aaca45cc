"""The network's output at the HR size, f(bicubic_up(LR)), computed in tiles for large images so that
memory stays bounded; out of GPU memory the tiles shrink and the result stays the same."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mzsr import MZSRError, MZSRWarning
from mzsr.degradation.resize import imresize_torch


def to_tensor(img: np.ndarray, device) -> torch.Tensor:
    """HxWx3 float image -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().unsqueeze(0).to(device)


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor in [0, 1] -> HxWx3 uint8, clipped and rounded."""
    arr = x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return arr[0].permute(1, 2, 0).cpu().numpy()


# Receptive-field radius of the network at the HR size: one pixel per 3x3 layer.
RECEPTIVE_RADIUS = 8
# Pixels of the HR-size network input processed at once; above it inference is tiled.
DEFAULT_TILE = 512
# Out of GPU memory, tiles and adaptation crops are halved down to these sides before giving up.
MIN_TILE = 32


def free_gpu_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def upscale(
    model: torch.nn.Module, lr_image: torch.Tensor, scale: int, tile: int | None = DEFAULT_TILE, output_shape=None
) -> torch.Tensor:
    """f(bicubic_up(LR)) at the HR size: `output_shape`, else (ceil(H * scale), ceil(W * scale)).

    Large images are processed in tiles of `tile` x `tile` HR pixels with a margin of the network's
    receptive field, so the result equals whole-image inference up to float rounding while memory
    stays bounded by the tile size. Out of GPU memory, the tiles are halved (down to MIN_TILE) with
    a one-line warning, and the result stays the same.
    """
    x = imresize_torch(lr_image, float(scale), output_shape)
    h, w = x.shape[-2:]
    while True:
        try:
            return _tiled(model, x, tile)
        except torch.OutOfMemoryError:
            current = tile if tile is not None and h * w > tile * tile else max(h, w)
            smaller = current // 2
            free_gpu_memory()
            if smaller < MIN_TILE:
                raise MZSRError(
                    f"out of GPU memory in inference even with {current}x{current} tiles; use a smaller image "
                    "or --device cpu"
                ) from None
            warnings.warn(
                f"out of GPU memory in inference with {current}x{current} tiles; retrying with "
                f"{smaller}x{smaller} tiles (same result)",
                MZSRWarning,
                stacklevel=2,
            )
            tile = smaller


def _tiled(model: torch.nn.Module, x: torch.Tensor, tile: int | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    if tile is None or h * w <= tile * tile:
        return model(x)
    out = torch.empty_like(x)
    m = RECEPTIVE_RADIUS
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - m, 0), max(x0 - m, 0)
            piece = model(x[..., ya : min(y1 + m, h), xa : min(x1 + m, w)])
            out[..., y0:y1, x0:x1] = piece[..., y0 - ya : y1 - ya, x0 - xa : x1 - xa]
    return out
