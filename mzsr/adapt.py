"""Zero-shot adaptation of one image: MZSR's meta-test (MZSR.md, stage 3).

father = the LR test image; son = father degraded once more with the given kernel and method.
n plain SGD steps on L1(f(bicubic_up(son)), father) over the whole image, then the output is
f(bicubic_up(LR)) at the HR size. The model is re-initialised from the given weights per image.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .degrade import degrade_torch
from .resize import imresize_torch

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
    """CUDA when present unless told otherwise."""
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


@torch.no_grad()
def upscale(model: torch.nn.Module, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """f(bicubic_up(LR)) at the HR size (ceil(H * scale), ceil(W * scale))."""
    return model(imresize_torch(lr, float(scale)))


def adapt(
    model: torch.nn.Module,
    lr_image: np.ndarray,
    kernel: np.ndarray | None,
    scale: int,
    method: str = "direct",
    step_counts=(0, 1, 10),
    schedule: str = "direct_x2",
    device: str | torch.device | None = None,
) -> list[AdaptationOutput]:
    """Adapt a copy of `model` to one LR image and return the SR output after each step count.

    `lr_image` is HxWx3 float in [0, 1]; `kernel` the image's blur kernel (None = plain bicubic).
    Time for each entry counts adaptation up to that step plus its own inference.
    """
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
    outputs: list[AdaptationOutput] = []
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate(schedule, 0))
    elapsed = 0.0
    done = 0
    for target in wanted:
        _sync(device)
        start = time.perf_counter()
        while done < target:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(schedule, done)
            optimizer.zero_grad(set_to_none=True)
            loss = F.l1_loss(net(son_up), father)
            loss.backward()
            optimizer.step()
            done += 1
        _sync(device)
        elapsed += time.perf_counter() - start
        start = time.perf_counter()
        sr = upscale(net, father, scale)
        _sync(device)
        sr_img = to_uint8_image(sr)
        outputs.append(AdaptationOutput(target, sr_img, elapsed + time.perf_counter() - start))
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
def self_ensemble(model: torch.nn.Module, lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Median over the 8 flips/rotations of the LR input, each mapped back (ZSSR's final test)."""
    outs = [_geometric_inverse(upscale(model, _geometric(lr, k), scale), k) for k in range(8)]
    return torch.stack(outs).median(dim=0).values


@torch.no_grad()
def back_project(sr: torch.Tensor, lr: torch.Tensor, kernel: torch.Tensor | None, scale: int, method: str, iterations: int = 10) -> torch.Tensor:
    """Iterative back-projection: push D(SR) towards the LR image, error upscaled with bicubic."""
    for _ in range(iterations):
        error = lr - degrade_torch(sr, kernel, scale, method)
        sr = sr + imresize_torch(error, output_shape=sr.shape[-2:])
    return sr
