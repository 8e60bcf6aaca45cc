"""ZSSR baseline (Shocher et al., CVPR 2018): the same network trained from scratch on one image.

father = a random crop of the augmented LR image (flips, 90-degree rotations), son = father
degraded with the kernel, L1 loss, Adam from lr 1e-3. Every `check_every` steps a linear fit of the
recent whole-image reconstruction errors decides whether learning has stalled; then lr /= 10.
Training stops when lr falls below `min_lr` (after the third drop) or at the iteration cap.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .adapt import AdaptationOutput, _geometric, _sync, back_project, pick_device, self_ensemble, to_tensor, to_uint8_image, upscale
from .degrade import degrade_torch
from .model import MZSRNet
from .resize import imresize_torch

ZSSR_DEFAULTS = {
    "iterations": 3000,
    "crop_size": 128,
    "lr": 1e-3,
    "min_lr": 9e-6,
    "min_iters": 256,
    "run_test_every": 50,
    "check_every": 60,
    "slope_range": 256,
    "change_ratio": 1.5,
    "self_ensemble": False,
    "back_projection": 0,
}


def _random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return x[..., y0 : y0 + ch, x0 : x0 + cw]


def zssr(lr_image: np.ndarray, kernel: np.ndarray | None, scale: int, method: str = "direct", cfg: dict | None = None,
         device=None, seed: int = 0) -> AdaptationOutput:
    """Train a fresh network on one LR image and return its SR output (HR size, uint8)."""
    cfg = {**ZSSR_DEFAULTS, **(cfg or {})}
    device = pick_device(device) if not isinstance(device, torch.device) else device
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MZSRNet().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    lr_t = to_tensor(lr_image, device)
    k = None if kernel is None else torch.as_tensor(kernel, dtype=torch.float32, device=device)
    with torch.no_grad():
        whole_son_up = imresize_torch(degrade_torch(lr_t, k, scale, method), output_shape=lr_t.shape[-2:])
    errors: list[tuple[int, float]] = []
    last_change = 0
    learning_rate = cfg["lr"]
    _sync(device)
    start = time.perf_counter()
    iteration = 0
    for iteration in range(cfg["iterations"]):
        father = _random_crop(_geometric(lr_t, int(rng.integers(8))), cfg["crop_size"], rng)
        with torch.no_grad():
            son_up = imresize_torch(degrade_torch(father, k, scale, method), output_shape=father.shape[-2:])
        loss = F.l1_loss(net(son_up), father)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if iteration % cfg["run_test_every"] == 0:
            with torch.no_grad():
                errors.append((iteration, float(F.mse_loss(net(whole_son_up), lr_t))))
        window = errors[-max(2, cfg["slope_range"] // cfg["run_test_every"]):]
        if (iteration + 1) % cfg["check_every"] == 0 and iteration - last_change > cfg["min_iters"] and len(window) >= 3:
            steps, values = np.array(window).T
            (slope, _), cov = np.polyfit(steps, values, 1, cov=True)
            if -cfg["change_ratio"] * slope < np.sqrt(cov[0, 0]):
                learning_rate /= 10
                last_change = iteration
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate
        if learning_rate < cfg["min_lr"]:
            break
    net.eval()
    sr = self_ensemble(net, lr_t, scale) if cfg["self_ensemble"] else upscale(net, lr_t, scale)
    if cfg["back_projection"]:
        sr = back_project(sr, lr_t, k, scale, method, int(cfg["back_projection"]))
    _sync(device)
    return AdaptationOutput(iteration + 1, to_uint8_image(sr), time.perf_counter() - start)
