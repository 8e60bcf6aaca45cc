"""Training of the learned kernel estimator (mzsr.estimation.kernel_net): crops of HR images, some
softened first, degraded with fresh random kernels; the network learns each kernel's covariance.

The pipeline's rule train_kernel_estimator runs `train` with its config section kernel_estimator
(mzsr/config.schema.yaml, whose defaults are the recipe of the released models/kernel_net_x2.safetensors):

    snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml
"""

from __future__ import annotations

import hashlib
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from mzsr import MZSRError, settings
from mzsr.degradation.degrade import degrade_torch
from mzsr.degradation.kernels import gaussian_kernel, noisy_gaussian_kernel, random_kernel_params
from mzsr.device import cpu_name
from mzsr.estimation.kernel_net import KernelNet, gaussian_from_covariance
from mzsr.facts import IMAGE_SUFFIXES

# The settings of `train`: config section kernel_estimator (mzsr/config.schema.yaml), its defaults the
# released weights' recipe ("threads": torch's thread count while training; null leaves it as it is).
KERNEL_ESTIMATOR_DEFAULTS = settings.defaults("kernel_estimator")

# ------------------------------------------------------------------------------------------ training


def _read_images(folder: Path) -> tuple[list[torch.Tensor], list[Path]]:
    """The training images under `folder` (any depth: T91/, BSD200/) as CHW tensors, and their files."""
    from mzsr.files.images import read_image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MZSRError(f"{folder}: no training images (png, bmp, jpg)")
    return [torch.as_tensor(read_image(p), dtype=torch.float32).permute(2, 0, 1) for p in files], files


SOFT_CONTENT = tuple(
    KERNEL_ESTIMATOR_DEFAULTS["soft_content"]
)  # the shipped ensemble's members: fractions of soft training crops
SOFT_CONTENT_VARIANCE = 5.0  # HR pixels^2: the widest blur already in a "soft" training image
SOFT_CONTENT_SIZE = 15


def soften(crop: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The HR crop blurred by a random anisotropic Gaussian (eigen-variances U(0.05, 5), any angle):
    content that is soft before the kernel acts, as photos with soft optics, motion or a shallow
    depth of field are. Its blur is not part of the kernel to find."""
    l1, l2 = rng.uniform(0.05, SOFT_CONTENT_VARIANCE, 2)
    blur = torch.as_tensor(gaussian_kernel(l1, l2, rng.uniform(-np.pi, np.pi), SOFT_CONTENT_SIZE), dtype=crop.dtype)
    pad = SOFT_CONTENT_SIZE // 2
    padded = torch.nn.functional.pad(crop[:, None], (pad, pad, pad, pad), mode="reflect")
    return torch.nn.functional.conv2d(padded, blur[None, None])[:, 0]


def training_batch(images, rng: np.random.Generator, batch: int, lr_size: int, soft_content: float = 0.0):
    """`batch` LR crops of lr_size x lr_size, each degraded with its own random x2 kernel as the
    pipeline degrades (blur, direct subsampling, uint8 quantisation), a fraction `soft_content` of them
    softened first (`soften`); returns (lr, kernels, the covariances of their Gaussians)."""
    hr_size = 2 * lr_size
    crops, kernels, sigmas = [], [], []
    for _ in range(batch):
        img = images[rng.integers(len(images))]
        top = rng.integers(img.shape[1] - hr_size + 1)
        left = rng.integers(img.shape[2] - hr_size + 1)
        crop = img[:, top : top + hr_size, left : left + hr_size]
        if soft_content and rng.random() < soft_content:
            crop = soften(crop, rng)
        crop = torch.rot90(crop, int(rng.integers(4)), (1, 2))
        crops.append(crop.flip(2) if rng.random() < 0.5 else crop)
        l1, l2, theta, noise = random_kernel_params(rng)
        kernels.append(torch.as_tensor(noisy_gaussian_kernel(l1, l2, theta, noise), dtype=torch.float32))
        sigmas.append(covariance(l1, l2, theta))
    kernels = torch.stack(kernels)
    lr = degrade_torch(torch.stack(crops), kernels, 2, "direct")
    return (lr * 255).round().clamp(0, 255) / 255, kernels, torch.stack(sigmas)


def covariance(l1: float, l2: float, theta: float) -> torch.Tensor:
    """The covariance (row, column axes) of `mzsr.degradation.kernels.gaussian_kernel(l1, l2, theta)`, whose
    rotation acts on (column, row) offsets."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    cov_xy = rot @ np.diag([l1, l2]) @ rot.T
    return torch.as_tensor(cov_xy[::-1, ::-1].copy(), dtype=torch.float32)


def train_member(images, iterations: int, batch: int, lr_size: int, seed: int, soft_content: float, log=print):
    """One network of the ensemble, from its own seed: (network, its final running kernel error)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = KernelNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    start, running = time.perf_counter(), None
    for it in range(1, iterations + 1):
        lr, kernels, sigmas = training_batch(images, rng, batch, lr_size, soft_content)
        sigma = net(lr)
        error = ((gaussian_from_covariance(sigma) - kernels) ** 2).sum((1, 2)).mean()
        loss = error + 1e-3 * ((sigma - sigmas) ** 2).sum((1, 2)).mean()  # the second: a steady pull early on
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = error.item() if running is None else 0.98 * running + 0.02 * error.item()
        if it % 100 == 0 or it == iterations:
            log(f"seed {seed}, soft content {soft_content}: iteration {it}: kernel error {running:.5f} "
                f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    return net, running


def image_digest(files: list[Path]) -> str:
    """SHA-256 of the training images: of their files' SHA-256s, in sorted order (the released weights
    record it, so that a retraining can tell whether it read the same images)."""
    return hashlib.sha256(b"".join(hashlib.sha256(Path(p).read_bytes()).digest() for p in files)).hexdigest()


def machine() -> str:
    """The CPU and torch that trained: one line for the provenance."""
    return f"{cpu_name()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def train(folder: str | Path, out: str | Path, cfg: dict | None = None, log=print) -> dict:
    """Trains one network per (soft-content fraction, seed) on the CPU, each from its own seed, and
    writes them as one ensemble file (tensors "<member>.<name>", `mzsr.estimation.kernel_net.load`)
    with its settings and provenance in the file's metadata: "config" (the settings, kernel_estimator
    of the config), "provenance" (images, their digest, each member's final training kernel error,
    seconds, date, machine, torch). `cfg`: the settings, the section's defaults for what it leaves out
    ("seed": one seed or a list; "threads": torch's thread count while training, null = as it is).
    Returns the metadata."""
    from mzsr.files.checkpoints import save_weights

    cfg = settings.with_defaults(cfg, KERNEL_ESTIMATOR_DEFAULTS, "kernel-estimator training")
    seeds = [cfg["seed"]] if isinstance(cfg["seed"], int) else list(cfg["seed"])
    iterations, batch, lr_size = int(cfg["iterations"]), int(cfg["batch"]), int(cfg["lr_size"])
    images, files = _read_images(Path(folder))
    images = [im for im in images if min(im.shape[1:]) >= 2 * lr_size]
    if not images:
        raise MZSRError(
            f"{folder}: no training image has {2 * lr_size} pixels on each side (kernel_estimator.lr_size {lr_size} x 2)"
        )
    threads = torch.get_num_threads()
    if cfg["threads"] is not None:
        torch.set_num_threads(int(cfg["threads"]))
    try:
        tensors, provenance = _train_members(folder, images, files, iterations, batch, lr_size, seeds, cfg, log)
    finally:
        torch.set_num_threads(threads)
    metadata = {"source": "kernel_estimator", "scale": 2, "step": iterations, "config": cfg, "provenance": provenance}
    save_weights(out, tensors, metadata)
    return metadata


def _train_members(folder, images, files, iterations, batch, lr_size, seeds, cfg, log) -> tuple[dict, dict]:
    """The members' tensors, one after another, and their provenance."""
    start, tensors, members = time.perf_counter(), {}, []
    for soft_content in cfg["soft_content"]:
        for seed in seeds:
            begun = time.perf_counter()
            net, error = train_member(images, iterations, batch, lr_size, seed, soft_content, log)
            tensors.update({f"{len(members)}.{k}": v.contiguous() for k, v in net.state_dict().items()})
            members.append(
                {
                    "seed": seed,
                    "soft_content": soft_content,
                    "final_training_kernel_error": round(error, 6),
                    "seconds": round(time.perf_counter() - begun),
                }
            )
    provenance = {
        "images_folder": str(folder),
        "images": len(files),
        "images_used": len(images),
        "images_sha256": image_digest(files),
        "members": members,
        "seconds": round(time.perf_counter() - start),
        "date": date.today().isoformat(),
        "machine": machine(),
        "torch": torch.__version__,
    }
    return tensors, provenance


def compare_with_release(path: str | Path, released: str | Path | None = None) -> str:
    """One line on how trained weights stand to the released ones (default: `weights_path()`): whether
    they read the same images (the digest in the released metadata) and hold the same tensors (they do
    where the settings, the images and the kind of CPU are the same)."""
    from safetensors.torch import load_file

    from mzsr.estimation.kernel_net import weights_path
    from mzsr.files.released import header_metadata

    released = weights_path() if released is None else Path(released)
    if not released.is_file():
        return f"{path}: no released weights at {released} to compare with"
    digest = (header_metadata(path).get("provenance") or {}).get("images_sha256", "?")
    same_images = digest == (header_metadata(released).get("released") or {}).get("images_sha256")
    ours, theirs = load_file(str(path)), load_file(str(released))
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        tensors = "other networks than theirs"
    else:
        largest = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        tensors = "the same tensors" if largest == 0 else f"tensors that differ from theirs by up to {largest:.3g}"
    images = "the released weights' images" if same_images else "other images than the released weights"
    return f"{path}: trained on {images} (sha256 {digest[:16]}...), {tensors} ({released})"
