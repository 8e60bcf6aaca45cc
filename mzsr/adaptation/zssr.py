"""ZSSR baseline (Shocher et al., CVPR 2018): the same network trained from scratch on one image.

Variants (cfg "variant"):
- "original" (default): what the authors' code runs with a given kernel (their configs.py,
  X2_GIVEN_KERNEL_CONF). father = `random_augment` of the LR image (a plain crop, an integer crop or
  a random affine warp: downscale, x/y scale difference, shear; no flips or rotations, because the
  kernel need not be symmetric); the no-bias net with ZSSR's initialisation; output f(bicubic_up(LR))
  followed by 2 back-projection rounds, no self-ensemble.
- "simple": the project's first baseline: random crops of the 8 flips/rotations of the LR image,
  the biased, PyTorch-initialised net, plain output.
Both: son = father degraded with the kernel (the test degradation), L1 loss, Adam from lr 1e-3 and
ZSSR's lr policy (`LrPolicy`), stop when lr < lr_min or at the iteration cap.

The kernel is used in MZSR's convention and NOT moved by ZSSR's kernel_shift: our LR images were
made by correlating with the unshifted kernel, so the son must be made the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mzsr import settings
from mzsr.adaptation.adapt import AdaptationOutput, make_son
from mzsr.adaptation.inference import to_tensor, to_uint8_image, upscale
from mzsr.adaptation.refine import _geometric, back_project, self_ensemble
from mzsr.degradation.resize import imresize_torch
from mzsr.device import pick_device, synchronize
from mzsr.network.model import MZSRNet, init_zssr_

VARIANTS = ("original", "simple")
# The config's zssr section (mzsr/config.schema.yaml) less seed (an argument of `zssr`):
# self_ensemble and back_projection None = the variant's own, VARIANT_OUTPUT.
ZSSR_DEFAULTS = settings.defaults("zssr", without=("seed",))
# The augmentation of the original (its Config defaults, rotation off as for a given kernel): the
# settings of `random_augment`.
AUGMENT_DEFAULTS = {
    key: ZSSR_DEFAULTS[key]
    for key in (
        "leave_as_is_probability",
        "no_interpolate_probability",
        "min_scale",
        "scale_diff_sigma",
        "shear_sigma",
        "allow_rotation",
    )
}
VARIANT_OUTPUT = {
    "original": {"self_ensemble": False, "back_projection": 2},
    "simple": {"self_ensemble": False, "back_projection": 0},
}


def resolve_config(cfg: dict | None) -> dict:
    """ZSSR_DEFAULTS updated with `cfg`; unknown keys are an error, not silently ignored."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(ZSSR_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown ZSSR option(s) {sorted(unknown)}; known: {', '.join(ZSSR_DEFAULTS)}")
    cfg = {**ZSSR_DEFAULTS, **cfg}
    if cfg["variant"] not in VARIANTS:
        raise ValueError(f"unknown ZSSR variant {cfg['variant']!r}; expected one of {VARIANTS}")
    for key, value in VARIANT_OUTPUT[cfg["variant"]].items():
        if cfg[key] is None:
            cfg[key] = value
    return cfg


# ------------------------------------------------------------------------------------ augmentation
def warp(x: torch.Tensor, matrix: np.ndarray, size: int, exact: bool = False) -> torch.Tensor:
    """cv2.warpPerspective(x, matrix, (size, size)) of (N, C, H, W), clipped to [0, 1].

    dst(p) = src(matrix^-1 p), p = (column, row, 1), pixel centres at integers, zero outside the
    image. exact: nearest source pixel (for transforms that only move by whole pixels). Otherwise
    torch's grid_sample bicubic, chosen over scipy's order-3 spline because it is the same
    cubic-convolution kernel as OpenCV's INTER_CUBIC (a = -0.75) with the same zero taps outside
    the image, and it runs on the training device.
    """
    h, w = x.shape[-2:]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    src = np.linalg.inv(matrix) @ np.stack([cols.ravel(), rows.ravel(), np.ones(size * size)])
    sx, sy = (src[:2] / src[2]).reshape(2, size, size)
    if exact:
        ix, iy = np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64)
        inside = torch.from_numpy((ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)).to(x.device, x.dtype)
        iy_t = torch.from_numpy(iy.clip(0, h - 1)).to(x.device)
        ix_t = torch.from_numpy(ix.clip(0, w - 1)).to(x.device)
        out = x[..., iy_t, ix_t] * inside
    else:
        grid = np.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], axis=-1)
        grid_t = torch.from_numpy(grid).to(x.device, x.dtype).expand(x.shape[0], size, size, 2)
        out = F.grid_sample(x, grid_t, mode="bicubic", padding_mode="zeros", align_corners=True)
    return out.clamp(0.0, 1.0)


def random_augment(
    x: torch.Tensor,
    crop_size: int,
    rng: np.random.Generator,
    leave_as_is_probability: float = AUGMENT_DEFAULTS["leave_as_is_probability"],
    no_interpolate_probability: float = AUGMENT_DEFAULTS["no_interpolate_probability"],
    min_scale: float = AUGMENT_DEFAULTS["min_scale"],
    max_scale: float = 1.0,
    allow_rotation: bool = AUGMENT_DEFAULTS["allow_rotation"],
    scale_diff_sigma: float = AUGMENT_DEFAULTS["scale_diff_sigma"],
    shear_sigma: float = AUGMENT_DEFAULTS["shear_sigma"],
) -> torch.Tensor:
    """One father: a crop_size x crop_size view of x under a random transform, as the original draws it.

    Modes: leave-as-is (a crop at whole-pixel offsets), no-interpolation (also 90-degree rotations and
    mirroring when rotation is allowed) and affine (scale in [min_scale, max_scale], x/y scale
    difference, shear and, if allowed, any angle and mirroring). The transform works about the image
    centre, so a shrunk image does not fill the crop: the rest is zero, as in the original.
    """
    h, w = x.shape[-2:]
    chooser = rng.random()
    mode = (
        "leave_as_is"
        if chooser < leave_as_is_probability
        else "no_interp"
        if chooser < leave_as_is_probability + no_interpolate_probability
        else "affine"
    )
    affine = mode == "affine"
    scale = 1.0 if mode == "leave_as_is" else rng.random() * (max_scale - min_scale) + min_scale
    to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    from_centre = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
    if not affine:  # whole-pixel moves only: interpolation free
        to_centre, from_centre = np.round(to_centre), np.round(from_centre)
        scale, scale_diff = 1.0, 0.0
    else:
        scale_diff = rng.standard_normal() * scale_diff_sigma
    reflect = 1.0 if mode == "leave_as_is" or not allow_rotation else np.sign(rng.standard_normal())
    scale_mat = np.diag([reflect * (scale + scale_diff / 2), scale - scale_diff / 2, 1.0])
    shift = np.eye(3)
    shift[0, 2] = -rng.random() * max(scale * w - crop_size, 0)
    shift[1, 2] = -rng.random() * max(scale * h - crop_size, 0)
    if not affine:
        shift = np.round(shift)
    theta = rng.random() * 2 * math.pi if affine else rng.integers(4) * math.pi / 2 if mode == "no_interp" else 0.0
    if not allow_rotation:
        theta = 0.0
    rotation = np.array([[math.cos(theta), math.sin(theta), 0], [-math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    shear = np.eye(3)
    if affine:
        shear[0, 1], shear[1, 0] = rng.standard_normal() * shear_sigma, rng.standard_normal() * shear_sigma
    matrix = from_centre @ shift @ shear @ rotation @ scale_mat @ to_centre
    return warp(x, matrix, crop_size, exact=not affine)


def _random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return x[..., y0 : y0 + ch, x0 : x0 + cw]


# ------------------------------------------------------------------------------------ lr policy
def stalled(steps, errors, change_ratio: float = ZSSR_DEFAULTS["change_ratio"]) -> bool:
    """ZSSR's lr test: a linear fit of the recent reconstruction MSEs no longer falls clearly.

    True when -change_ratio * slope < std(slope). The std comes from the fit's covariance scaled by
    residual / (n - 4), as numpy's polyfit(cov=True) computed it when ZSSR was written (numpy < 1.16;
    today's numpy divides by n - 2 and would drop the lr less often); it needs n >= 5 points.
    """
    x, y = np.asarray(steps, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    if len(x) < 5:
        return False
    a = np.stack([x, np.ones_like(x)], axis=1)
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    variance = float(np.sum((y - a @ coef) ** 2)) / (len(x) - 4) * np.linalg.inv(a.T @ a)[0, 0]
    return bool(-change_ratio * coef[0] < math.sqrt(variance))


class LrPolicy:
    """ZSSR's learning-rate policy: every `check_every` iterations, once more than `min_iters` have
    passed since the last change, lr /= 10 if the last slope_range // run_test_every reconstruction
    MSEs have `stalled`; training is over when lr < lr_min (after the third drop with the defaults)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.lr = cfg["lr"]
        self.window = cfg["slope_range"] // cfg["run_test_every"]  # python 2's integer division in the original
        self.mse_steps: list[int] = []
        self.mse_rec: list[float] = []
        self.changes: list[int] = []  # iterations at which the lr was divided

    def record(self, iteration: int, mse: float) -> None:
        self.mse_steps.append(iteration)
        self.mse_rec.append(mse)

    def update(self, iteration: int) -> float:
        """The lr after `iteration` (0-based), dropped when the policy says so."""
        cfg = self.cfg
        last_change = self.changes[-1] if self.changes else 0
        if (
            (iteration + 1) % cfg["check_every"] == 0
            and iteration - last_change > cfg["min_iters"]
            and stalled(self.mse_steps[-self.window :], self.mse_rec[-self.window :], cfg["change_ratio"])
        ):
            self.lr /= 10
            self.changes.append(iteration)
        return self.lr

    @property
    def finished(self) -> bool:
        return self.lr < self.cfg["lr_min"]


# ------------------------------------------------------------------------------------ training
@dataclass
class ZSSRTraining:
    """A trained ZSSR net, its lr policy (with the reconstruction MSEs) and the iterations run."""

    net: MZSRNet
    policy: LrPolicy
    iterations: int


def train_zssr(
    lr_t: torch.Tensor, kernel: torch.Tensor | None, scale: int, subsampling: str, cfg: dict, rng: np.random.Generator
) -> ZSSRTraining:
    """Train a fresh net on the (1, 3, H, W) LR image `lr_t` (cfg already resolved; seed torch first)."""
    original = cfg["variant"] == "original"
    net = (init_zssr_(MZSRNet(bias=False), cfg["init_variance"]) if original else MZSRNet()).to(lr_t.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    augment = {key: cfg[key] for key in AUGMENT_DEFAULTS}
    policy = LrPolicy(cfg)

    noise = torch.Generator().manual_seed(int(rng.integers(2**31))) if cfg["noise_std"] > 0 else None

    def son_up(father: torch.Tensor) -> torch.Tensor:
        """The network input for `father`: its son (as MZSR's, clipped, with noise_std), bicubic-upscaled
        at the exact scale and cut to its size."""
        son = make_son(father, kernel, scale, subsampling, noise_level=cfg["noise_std"], generator=noise)
        return imresize_torch(son, float(scale), output_shape=father.shape[-2:])

    iteration = 0
    for iteration in range(cfg["iterations"]):
        if original:
            father = random_augment(lr_t, cfg["crop_size"], rng, **augment)
        else:
            father = _random_crop(_geometric(lr_t, int(rng.integers(8))), cfg["crop_size"], rng)
        with torch.no_grad():
            x = son_up(father)
        loss = F.l1_loss(net(x), father)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if iteration % cfg["run_test_every"] == 0:  # reconstruct the whole LR image from its son
            with torch.no_grad():
                policy.record(iteration, float(F.mse_loss(net(son_up(lr_t)).clamp(0.0, 1.0), lr_t)))
        for group in optimizer.param_groups:
            group["lr"] = policy.update(iteration)
        if policy.finished:
            break
    return ZSSRTraining(net.eval(), policy, iteration + 1)


@torch.no_grad()
def final_output(
    net: MZSRNet,
    lr_t: torch.Tensor,
    kernel: torch.Tensor | None,
    scale: int,
    subsampling: str,
    ensemble: bool,
    back_projection: int,
) -> torch.Tensor:
    """f(bicubic_up(LR)) at the HR size (or its self-ensemble), clipped, then back-projection rounds."""
    if ensemble:
        sr = self_ensemble(net, lr_t, scale, kernel=kernel, subsampling=subsampling)
    else:
        sr = upscale(net, lr_t, scale)
    sr = sr.clamp(0.0, 1.0)
    if back_projection:
        sr = back_project(sr, lr_t, kernel, scale, subsampling, int(back_projection))
    return sr


def zssr(
    lr_image: np.ndarray,
    kernel: np.ndarray | None,
    scale: int,
    subsampling: str = "direct",
    cfg: dict | None = None,
    device=None,
    seed: int = settings.default("zssr.seed"),
) -> AdaptationOutput:
    """Train a fresh network on one LR image and return its SR output (HR size, uint8).

    `steps` of the result is the number of iterations actually run (the lr policy may stop early).
    """
    cfg = resolve_config(cfg)
    device = pick_device(device)
    torch.manual_seed(seed)
    lr_t = to_tensor(lr_image, device)
    k = None if kernel is None else torch.as_tensor(kernel, dtype=torch.float32, device=device)
    synchronize(device)
    start = time.perf_counter()
    trained = train_zssr(lr_t, k, scale, subsampling, cfg, np.random.default_rng(seed))
    sr = final_output(trained.net, lr_t, k, scale, subsampling, cfg["self_ensemble"], cfg["back_projection"])
    synchronize(device)
    return AdaptationOutput(trained.iterations, to_uint8_image(sr), time.perf_counter() - start)
