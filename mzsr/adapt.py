"""Zero-shot adaptation of one image: MZSR's meta-test (MZSR.md, stage 3).

father = the LR test image; son = father degraded once more with the given kernel and method.
n plain SGD steps on L1(f(bicubic_up(son)), father) over the whole image, then the output is
f(bicubic_up(LR)) at the HR size. The model is re-initialised from the given weights per image.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .degrade import degrade_torch
from .resize import imresize_torch
from .training import setup_device

# Learning rate per step, as (first step it applies to, lr), for the released models.
LR_SCHEDULES: dict[str, tuple[tuple[int, float], ...]] = {
    # The authors' "Direct x2" model: 0.02 at step 0, 0.01 for steps 1-3, 0.005 after.
    "direct_x2": ((0, 0.02), (1, 0.01), (4, 0.005)),
    # Same schedule as released for the bicubic model; kept separate so it can diverge.
    "bicubic_x2": ((0, 0.02), (1, 0.01), (4, 0.005)),
    # The inner-loop lr of meta-training: what the meta-learned init was optimised for.
    "constant_0.01": ((0, 0.01),),
}


def learning_rate(schedule: str, step: int) -> float:
    """The SGD learning rate of adaptation step `step` (0-based) under a named schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    lr = LR_SCHEDULES[schedule][0][1]
    for start, value in LR_SCHEDULES[schedule]:
        if step >= start:
            lr = value
    return lr


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present unless told otherwise (the trainers' choice, `training.setup_device`)."""
    return setup_device(requested)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_tensor(img: np.ndarray, device) -> torch.Tensor:
    """HxWx3 float image -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().unsqueeze(0).to(device)


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor in [0, 1] -> HxWx3 uint8, clipped and rounded."""
    arr = x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return arr[0].permute(1, 2, 0).cpu().numpy()


@dataclass
class AdaptationOutput:
    """SR result after `steps` adaptation steps, and the wall time spent to get it (seconds)."""

    steps: int
    sr: np.ndarray  # HxWx3 uint8 at the HR size
    seconds: float
    step_seconds: list[float] = field(default_factory=list)


# Receptive-field radius of the network at the HR size: one pixel per 3x3 layer.
RECEPTIVE_RADIUS = 8
# Pixels of the HR-size network input processed at once; above it inference is tiled.
DEFAULT_TILE = 512
# LR pixels trained on at once; above it each adaptation step uses a random crop of this area.
DEFAULT_MAX_ADAPT_PIXELS = 512 * 512

# Paper: plain output, as in the published tables. Best: 8-way self-ensemble and back-projection.
PRESETS = {
    "paper": {"self_ensemble": False, "back_projection": 0},
    "best": {"self_ensemble": True, "back_projection": 10},
}


@torch.no_grad()
def upscale(model: torch.nn.Module, lr: torch.Tensor, scale: int, tile: int | None = DEFAULT_TILE) -> torch.Tensor:
    """f(bicubic_up(LR)) at the HR size (ceil(H * scale), ceil(W * scale)).

    Large images are processed in tiles of `tile` x `tile` HR pixels with a margin of the network's
    receptive field, so the result equals whole-image inference up to float rounding while memory
    stays bounded by the tile size.
    """
    x = imresize_torch(lr, float(scale))
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


def _training_pair(son_up: torch.Tensor, father: torch.Tensor, max_pixels: int | None, rng: np.random.Generator):
    """The whole (input, target) pair, or an aligned random square crop of it for large images."""
    h, w = father.shape[-2:]
    if max_pixels is None or h * w <= max_pixels:
        return son_up, father
    side = int(max_pixels**0.5)
    ch, cw = min(side, h), min(side, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return son_up[..., y : y + ch, x : x + cw], father[..., y : y + ch, x : x + cw]


def adapt(
    model: torch.nn.Module,
    lr_image: np.ndarray,
    kernel: np.ndarray | None,
    scale: int,
    method: str = "direct",
    step_counts=(0, 1, 10),
    schedule: str = "direct_x2",
    device: str | torch.device | None = None,
    preset: str = "paper",
    tile: int | None = DEFAULT_TILE,
    max_adapt_pixels: int | None = DEFAULT_MAX_ADAPT_PIXELS,
    seed: int = 0,
) -> list[AdaptationOutput]:
    """Adapt a copy of `model` to one LR image and return the SR output after each step count.

    `lr_image` is HxWx3 float in [0, 1]; `kernel` the image's blur kernel (None = plain bicubic).
    Time for each entry counts adaptation up to that step plus its own inference (synchronised on
    GPUs); `step_seconds` of each entry lists the time of every adaptation step so far.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    options = PRESETS[preset]
    device = pick_device(device) if not isinstance(device, torch.device) else device
    net = copy.deepcopy(model).to(device).train()
    father = to_tensor(lr_image, device)
    k = None if kernel is None else torch.as_tensor(kernel, dtype=torch.float32, device=device)
    with torch.no_grad():
        son = degrade_torch(father, k, scale, method)
        son_up = imresize_torch(son, output_shape=father.shape[-2:])
    wanted = sorted(set(int(n) for n in step_counts))
    if wanted and wanted[0] < 0:
        raise ValueError("step counts must be >= 0")
    rng = np.random.default_rng(seed)
    outputs: list[AdaptationOutput] = []
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate(schedule, 0))
    step_seconds: list[float] = []
    for target in wanted:
        while len(step_seconds) < target:
            _sync(device)
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(schedule, len(step_seconds))
            x, y = _training_pair(son_up, father, max_adapt_pixels, rng)
            optimizer.zero_grad(set_to_none=True)
            F.l1_loss(net(x), y).backward()
            optimizer.step()
            _sync(device)
            step_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        net.eval()
        if options["self_ensemble"]:
            sr = self_ensemble(net, father, scale, tile)
        else:
            sr = upscale(net, father, scale, tile)
        if options["back_projection"]:
            sr = back_project(sr, father, k, scale, method, options["back_projection"])
        net.train()
        sr_img = to_uint8_image(sr)
        _sync(device)
        seconds = sum(step_seconds) + time.perf_counter() - start
        outputs.append(AdaptationOutput(target, sr_img, seconds, list(step_seconds)))
    return outputs


def _geometric(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of (N, C, H, W)."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _geometric_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, -(k % 4), dims=(-2, -1))


@torch.no_grad()
def self_ensemble(model: torch.nn.Module, lr: torch.Tensor, scale: int, tile: int | None = DEFAULT_TILE) -> torch.Tensor:
    """Median over the 8 flips/rotations of the LR input, each mapped back (ZSSR's final test)."""
    outs = [_geometric_inverse(upscale(model, _geometric(lr, k), scale, tile), k) for k in range(8)]
    return torch.stack(outs).median(dim=0).values


@torch.no_grad()
def back_project(sr: torch.Tensor, lr: torch.Tensor, kernel: torch.Tensor | None, scale: int, method: str, iterations: int = 10) -> torch.Tensor:
    """Iterative back-projection: push D(SR) towards the LR image, error upscaled with bicubic."""
    for _ in range(iterations):
        error = lr - degrade_torch(sr, kernel, scale, method)
        sr = sr + imresize_torch(error, output_shape=sr.shape[-2:])
    return sr
