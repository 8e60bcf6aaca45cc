"""Zero-shot adaptation of one image: MZSR's meta-test (MZSR.md, stage 3).

father = the LR test image; son = father degraded once more with the given kernel and subsampling
(plus optional Gaussian noise, the release's `noise_level`), clipped to [0, 1] as the release does.
n plain SGD steps on L1(f(bicubic_up(son)), father) over the whole image, then the output is
f(bicubic_up(LR)) at the HR size. Every upscale to a target size keeps the scale exact and cuts the
result to the size (the release's and ZSSR's imresize with both). The model is re-initialised
from the given weights per image."""

from __future__ import annotations

import copy
import functools
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from mzsr import MZSRError, MZSRWarning, settings
from mzsr.adaptation.inference import DEFAULT_TILE, free_gpu_memory, to_tensor, to_uint8_image, upscale
from mzsr.adaptation.refine import back_project, self_ensemble
from mzsr.adaptation.schedules import learning_rate, resolve_schedule
from mzsr.degradation.degrade import degrade_torch
from mzsr.degradation.kernels import convention_center, mzsr_center, place_kernel, shift_image
from mzsr.degradation.resize import imresize_torch
from mzsr.device import pick_device, synchronize
from mzsr.network.conv import grad_dtype


@dataclass
class AdaptationOutput:
    """SR result after `steps` adaptation steps, and the wall time spent to get it (seconds)."""

    steps: int
    sr: np.ndarray  # HxWx3 uint8 at the HR size
    seconds: float
    step_seconds: list[float] = field(default_factory=list)


# LR pixels trained on at once; above it each adaptation step uses a random crop of this area.
DEFAULT_MAX_ADAPT_PIXELS = 512 * 512
MIN_CROP = 32


# Paper: plain output, as in the published tables. Best: self-ensemble over the flips/rotations that
# are valid for the kernel, and back-projection.
PRESETS = {
    "paper": {"self_ensemble": False, "back_projection": 0},
    "best": {"self_ensemble": True, "back_projection": 10},
}
# The config's adapt section (mzsr/config.schema.yaml): step counts, schedule, grid, noise_level, preset.
ADAPT_DEFAULTS = settings.defaults("adapt")


def _training_pair(son_up: torch.Tensor, father: torch.Tensor, max_pixels: int | None, rng: np.random.Generator):
    """The whole (input, target) pair, or an aligned random square crop of it for large images."""
    h, w = father.shape[-2:]
    if max_pixels is None or h * w <= max_pixels:
        return son_up, father
    side = int(max_pixels**0.5)
    ch, cw = min(side, h), min(side, w)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return son_up[..., y : y + ch, x : x + cw], father[..., y : y + ch, x : x + cw]


def make_son(
    father: torch.Tensor,
    kernel: torch.Tensor | None,
    scale: int,
    subsampling: str,
    grid: str = ADAPT_DEFAULTS["grid"],
    noise_level: float = float(ADAPT_DEFAULTS["noise_level"]),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The release's son: father degraded once more, plus N(0, noise_level^2) noise, clipped to [0, 1]."""
    son = degrade_torch(father, kernel, scale, subsampling, grid)
    if noise_level > 0:
        noise = torch.randn(son.shape, generator=generator, dtype=son.dtype, device="cpu").to(son.device)
        son = son + noise_level * noise
    return son.clamp(0.0, 1.0)


@dataclass(frozen=True)
class AdaptOptions:
    """How one image is adapted: the config's adapt section (steps, schedule, preset, grid, noise_level;
    its defaults are theirs), the son's noise seed, and the tile and crop sizes that bound memory.

    `steps`: the step counts to return an SR image after; `schedule` the lr schedule ("auto": the
    released one for the model's subsampling and scale); `grid` the direct-subsampling grid of the son;
    `max_adapt_pixels` adapts on random crops of that many pixels for larger images; `tile` the
    inference tile (None: whole image); `grad_precision` that of the steps' gradient convolutions on a
    CPU (mzsr.network.conv)."""

    steps: tuple[int, ...] = tuple(ADAPT_DEFAULTS["steps"])
    schedule: str = ADAPT_DEFAULTS["schedule"]
    preset: str = ADAPT_DEFAULTS["preset"]
    grid: str = ADAPT_DEFAULTS["grid"]
    noise_level: float = ADAPT_DEFAULTS["noise_level"]
    seed: int = 0
    tile: int | None = DEFAULT_TILE
    max_adapt_pixels: int | None = DEFAULT_MAX_ADAPT_PIXELS
    grad_precision: str = ADAPT_DEFAULTS["grad_precision"]

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(sorted(set(int(n) for n in self.steps))))
        object.__setattr__(self, "noise_level", float(self.noise_level))
        if self.steps and self.steps[0] < 0:
            raise ValueError("step counts must be >= 0")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")

    @classmethod
    def from_config(cls, section: dict, **more) -> AdaptOptions:
        """From a config's adapt section; what it leaves out keeps the defaults above (the schema's)."""
        keys = ("steps", "schedule", "preset", "grid", "noise_level", "grad_precision")
        return cls(**{k: section[k] for k in keys if k in section}, **more)


def adapt(
    model: torch.nn.Module,
    lr_image: np.ndarray,
    kernel: np.ndarray | None,
    scale: int,
    subsampling: str = "direct",
    options: AdaptOptions = AdaptOptions(),
    device: str | torch.device | None = None,
    output_shape: tuple[int, int] | None = None,
    convention: str = "mzsr",
) -> list[AdaptationOutput]:
    """Adapt a copy of `model` to one LR image and return the SR output after each of `options.steps`.

    `lr_image` is HxWx3 float in [0, 1]; `kernel` the image's blur kernel (None = plain bicubic), placed
    as the LR image was made (`convention`, mzsr.degradation.kernels.KERNEL_CONVENTIONS);
    `output_shape` the HR size (default ceil(LR size * scale)). Time for each entry counts adaptation
    up to that step plus its own inference (synchronised on GPUs); `step_seconds` of each entry lists
    the time of every adaptation step so far. Out of GPU memory, it starts again on smaller crops.

    An LR image made in KernelGAN's convention is, on MZSR's grid, the LR image of the HR image moved
    by the conventions' offset (half a pixel at x2): MZSR, trained on its own grid, adapts with the
    kernel centred its way, and each output is moved back by that offset (`shift_image`).
    Adapting with the kernel as placed instead keeps the network's grid and loses about 2 dB.
    """
    offset = None
    if convention != "mzsr" and kernel is not None:
        offset = convention_center(kernel.shape, convention, scale) - mzsr_center(kernel.shape)
        kernel = place_kernel(kernel, "mzsr", scale)
    while True:
        try:
            outputs = _adapt_once(model, lr_image, kernel, scale, subsampling, options, device, output_shape)
            if offset is not None:
                outputs = [replace(o, sr=shift_image(o.sr, offset)) for o in outputs]
            return outputs
        except torch.OutOfMemoryError:  # inference retries on its own (`upscale`): this is an adaptation step
            h, w = lr_image.shape[:2]
            limit = options.max_adapt_pixels
            area = limit if limit is not None and h * w > limit else h * w
            side = int(area**0.5)
            smaller = side // 2
            free_gpu_memory()
            if smaller < MIN_CROP:
                raise MZSRError(f"out of GPU memory adapting even on {side}x{side} crops; use --device cpu") from None
            warnings.warn(
                f"out of GPU memory adapting on {side}x{side} crops; starting the image again with "
                f"{smaller}x{smaller} crops",
                MZSRWarning,
                stacklevel=2,
            )
            options = replace(options, max_adapt_pixels=smaller * smaller)


def _adapt_once(
    model, lr_image, kernel, scale, subsampling, options: AdaptOptions, device, output_shape
) -> list[AdaptationOutput]:
    schedule = options.schedule
    if any(n > 0 for n in options.steps):  # zero steps need no schedule (e.g. a pre-trained model as it is)
        schedule = resolve_schedule(schedule, subsampling, scale)
    preset = PRESETS[options.preset]
    device = pick_device(device)
    gradients = grad_dtype(options.grad_precision, device)
    net = copy.deepcopy(model).to(device).train()
    father = to_tensor(lr_image, device)
    k = None if kernel is None else torch.as_tensor(kernel, dtype=torch.float32, device=device)
    with torch.no_grad():
        son = make_son(
            father,
            k,
            scale,
            subsampling,
            options.grid,
            options.noise_level,
            torch.Generator().manual_seed(options.seed),
        )
        son_up = imresize_torch(son, float(scale), output_shape=father.shape[-2:])
    rng = np.random.default_rng(options.seed)
    outputs: list[AdaptationOutput] = []
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # each step sets its own lr
    step_seconds: list[float] = []
    for target in options.steps:
        while len(step_seconds) < target:
            synchronize(device)
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(schedule, len(step_seconds))
            x, y = _training_pair(son_up, father, options.max_adapt_pixels, rng)
            optimizer.zero_grad(set_to_none=True)
            out = net(x) if gradients is None else net(x, grad_dtype=gradients)  # any module in float32
            F.l1_loss(out, y).backward()
            optimizer.step()
            synchronize(device)
            step_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        net.eval()
        infer = net if gradients is None else functools.partial(net, grad_dtype=gradients)
        if preset["self_ensemble"]:
            sr = self_ensemble(infer, father, scale, kernel, subsampling, options.tile, output_shape)
        else:
            sr = upscale(infer, father, scale, options.tile, output_shape)
        if preset["back_projection"]:
            sr = back_project(sr, father, k, scale, subsampling, preset["back_projection"], options.grid)
        net.train()
        sr_img = to_uint8_image(sr)
        synchronize(device)
        seconds = sum(step_seconds) + time.perf_counter() - start
        outputs.append(AdaptationOutput(target, sr_img, seconds, list(step_seconds)))
    return outputs
