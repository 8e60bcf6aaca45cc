"""Zero-shot adaptation of one image: MZSR's meta-test (MZSR.md, stage 3).

father = the LR test image; son = father degraded once more with the given kernel and subsampling
(plus optional Gaussian noise, the release's `noise_level`), clipped to [0, 1] as the release does.
n plain SGD steps on L1(f(bicubic_up(son)), father) over the whole image, then the output is
f(bicubic_up(LR)) at the HR size. Every upscale to a target size keeps the scale exact and cuts the
result to the size (the release's and ZSSR's imresize with both). The model is re-initialised
from the given weights per image.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from . import MZSRError, MZSRWarning, settings
from .conv import GRADIENT_PRECISIONS, check_gradient_precision, gradient_precision
from .degrade import blur_torch, degrade_torch, direct_indices
from .device import pick_device, synchronize
from .resize import imresize_torch

# Learning rate per step, as (first step it applies to, lr): the authors' test.py per released model.
LR_SCHEDULES: dict[str, tuple[tuple[int, float], ...]] = {
    "direct_x2": ((0, 0.02), (1, 0.01), (4, 0.005)),  # Direct x2: 0.02, 0.01 for steps 1-3, then 0.005
    "bicubic_x2": ((0, 0.01), (3, 0.001)),  # Bicubic x2: 0.01 for steps 0-2, then 0.001
    "direct_x4": ((0, 0.01), (1, 0.005), (5, 0.001)),  # Direct x4: 0.01, 0.005 for steps 1-4, then 0.001
    "multiscale": ((0, 0.01), (3, 0.005)),  # Multi-scale: 0.01 for steps 0-2, then 0.005
    # The inner-loop lr of meta-training: what the meta-learned init was optimised for.
    "constant_0.01": ((0, 0.01),),
}
# The schedule that comes with weights of a given (subsampling, scale), as released.
RELEASED_SCHEDULES = {("direct", 2): "direct_x2", ("bicubic", 2): "bicubic_x2", ("direct", 4): "direct_x4"}
AUTO = "auto"


def learning_rate(schedule: str, step: int) -> float:
    """The SGD learning rate of adaptation step `step` (0-based) under a named schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    lr = LR_SCHEDULES[schedule][0][1]
    for start, value in LR_SCHEDULES[schedule]:
        if step >= start:
            lr = value
    return lr


def resolve_schedule(schedule: str, subsampling: str, scale: int) -> str:
    """A named schedule as it is; "auto": the released schedule of weights for (subsampling, scale)."""
    if schedule != AUTO:
        if schedule not in LR_SCHEDULES:
            raise MZSRError(f"unknown lr schedule {schedule!r}; known: auto, {', '.join(LR_SCHEDULES)}")
        return schedule
    if (subsampling, scale) not in RELEASED_SCHEDULES:
        raise MZSRError(
            f"no released adaptation schedule for {subsampling}-subsampling x{scale} weights; name one"
            f" ({', '.join(LR_SCHEDULES)})"
        )
    return RELEASED_SCHEDULES[(subsampling, scale)]


def weights_subsampling(metadata: dict, fallback: str) -> str:
    """The subsampling meta-trained weights were trained for (their metadata), else `fallback`
    (the test degradation's): pre-trained weights know only plain bicubic downscaling."""
    if metadata.get("source") == "meta" and metadata.get("degradation") in ("direct", "bicubic"):
        return str(metadata["degradation"])
    return fallback


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
# Out of GPU memory, tiles and adaptation crops are halved down to these sides before giving up.
MIN_TILE = 32
MIN_CROP = 32


def _free() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Paper: plain output, as in the published tables. Best: self-ensemble over the flips/rotations that
# are valid for the kernel, and back-projection.
PRESETS = {
    "paper": {"self_ensemble": False, "back_projection": 0},
    "best": {"self_ensemble": True, "back_projection": 10},
}
# The config's adapt section (mzsr/config.schema.yaml): step counts, schedule, grid, noise_level, preset.
ADAPT_DEFAULTS = settings.defaults("adapt")


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
            _free()
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
    CPU (mzsr.conv)."""

    steps: tuple[int, ...] = tuple(ADAPT_DEFAULTS["steps"])
    schedule: str = ADAPT_DEFAULTS["schedule"]
    preset: str = ADAPT_DEFAULTS["preset"]
    grid: str = ADAPT_DEFAULTS["grid"]
    noise_level: float = float(ADAPT_DEFAULTS["noise_level"])
    seed: int = 0
    tile: int | None = DEFAULT_TILE
    max_adapt_pixels: int | None = DEFAULT_MAX_ADAPT_PIXELS
    grad_precision: str = ADAPT_DEFAULTS["grad_precision"]

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(sorted(set(int(n) for n in self.steps))))
        if self.steps and self.steps[0] < 0:
            raise ValueError("step counts must be >= 0")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")
        if self.grad_precision not in GRADIENT_PRECISIONS:
            raise ValueError(
                f"unknown grad_precision {self.grad_precision!r}; use one of {', '.join(GRADIENT_PRECISIONS)}"
            )

    @classmethod
    def from_config(cls, section: dict, **more) -> AdaptOptions:
        """From a config's adapt section (what it leaves out takes the schema's defaults)."""
        cfg = {**ADAPT_DEFAULTS, **section}
        return cls(
            steps=tuple(cfg["steps"]),
            schedule=cfg["schedule"],
            preset=cfg["preset"],
            grid=cfg["grid"],
            noise_level=float(cfg["noise_level"]),
            grad_precision=cfg["grad_precision"],
            **more,
        )


def adapt(
    model: torch.nn.Module,
    lr_image: np.ndarray,
    kernel: np.ndarray | None,
    scale: int,
    subsampling: str = "direct",
    options: AdaptOptions = AdaptOptions(),
    device: str | torch.device | None = None,
    output_shape: tuple[int, int] | None = None,
) -> list[AdaptationOutput]:
    """Adapt a copy of `model` to one LR image and return the SR output after each of `options.steps`.

    `lr_image` is HxWx3 float in [0, 1]; `kernel` the image's blur kernel (None = plain bicubic);
    `output_shape` the HR size (default ceil(LR size * scale)). Time for each entry counts adaptation
    up to that step plus its own inference (synchronised on GPUs); `step_seconds` of each entry lists
    the time of every adaptation step so far. Out of GPU memory, it starts again on smaller crops.
    """
    while True:
        try:
            return _adapt_once(model, lr_image, kernel, scale, subsampling, options, device, output_shape)
        except torch.OutOfMemoryError:  # inference retries on its own (`upscale`): this is an adaptation step
            h, w = lr_image.shape[:2]
            limit = options.max_adapt_pixels
            area = limit if limit is not None and h * w > limit else h * w
            side = int(area**0.5)
            smaller = side // 2
            _free()
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
    check_gradient_precision(options.grad_precision, device)
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
            with gradient_precision(options.grad_precision):
                F.l1_loss(net(x), y).backward()
            optimizer.step()
            synchronize(device)
            step_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        net.eval()
        if preset["self_ensemble"]:
            sr = self_ensemble(net, father, scale, kernel, subsampling, options.tile, output_shape)
        else:
            sr = upscale(net, father, scale, options.tile, output_shape)
        if preset["back_projection"]:
            sr = back_project(sr, father, k, scale, subsampling, preset["back_projection"], options.grid)
        net.train()
        sr_img = to_uint8_image(sr)
        synchronize(device)
        seconds = sum(step_seconds) + time.perf_counter() - start
        outputs.append(AdaptationOutput(target, sr_img, seconds, list(step_seconds)))
    return outputs


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
