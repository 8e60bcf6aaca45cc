"""Training of the learned kernel estimator (mzsr.estimation.kernel_net): crops of HR images, some
softened first, degraded with fresh random kernels; the network learns each kernel's covariance."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from mzsr import MZSRError
from mzsr.degradation.degrade import degrade_torch
from mzsr.degradation.kernels import gaussian_kernel, noisy_gaussian_kernel, random_kernel_params
from mzsr.estimation.kernel_net import WEIGHTS, KernelNet, gaussian_from_covariance
from mzsr.facts import IMAGE_SUFFIXES

# ------------------------------------------------------------------------------------------ training


def _read_images(folder: Path) -> tuple[list[torch.Tensor], list[Path]]:
    """The training images under `folder` (any depth: T91/, BSD200/) as CHW tensors, and their files."""
    from mzsr.files.images import read_image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MZSRError(f"{folder}: no training images (png, bmp, jpg)")
    return [torch.as_tensor(read_image(p), dtype=torch.float32).permute(2, 0, 1) for p in files], files


SOFT_CONTENT = (0.3, 0.5)  # the shipped ensemble's members: fractions of soft training crops
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


def train(
    folder: Path,
    out: Path,
    iterations: int,
    batch: int,
    lr_size: int,
    seeds: list[int],
    soft_contents: list[float],
    log=print,
) -> dict:
    """Trains one network per (soft-content fraction, seed) and writes them as one ensemble file, with
    the command that made it in its metadata and beside it (.json)."""
    images, files = _read_images(folder)
    images = [im for im in images if min(im.shape[1:]) >= 2 * lr_size]
    if not images:
        raise MZSRError(f"{folder}: no training image has {2 * lr_size} pixels on each side (--lr-size {lr_size} x 2)")
    start, tensors, members = time.perf_counter(), {}, []
    for soft_content in soft_contents:
        for seed in seeds:
            net, error = train_member(images, iterations, batch, lr_size, seed, soft_content, log)
            tensors.update({f"{len(members)}.{k}": v.contiguous() for k, v in net.state_dict().items()})
            members.append({"seed": seed, "soft_content": soft_content, "final_training_kernel_error": round(error, 6)})
    digest = hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in files)).hexdigest()
    provenance = {
        "command": f"python -m mzsr.estimation --images {folder} --iterations {iterations} --batch {batch} "
        f"--lr-size {lr_size} --seed {' '.join(map(str, seeds))} --soft-content {' '.join(map(str, soft_contents))}",
        "images": len(files),
        "images_sha256": digest,
        "members": members,
        "seconds": round(time.perf_counter() - start),
        "torch": torch.__version__,
    }
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"provenance": json.dumps(provenance)})
    out.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    return provenance


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train the learned x2 kernel estimator (mzsr.estimation).")
    ap.add_argument("--images", type=Path, required=True, help="folder of HR training images (searched recursively)")
    ap.add_argument("--out", type=Path, default=WEIGHTS)
    ap.add_argument("--iterations", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--lr-size", type=int, default=64, help="side of the LR training crops")
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="one ensemble member per seed (and fraction)")
    ap.add_argument(
        "--soft-content",
        type=float,
        nargs="+",
        default=list(SOFT_CONTENT),
        help="fractions of crops blurred before the kernel (soft photos): one ensemble member per fraction",
    )
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    provenance = train(args.images, args.out, args.iterations, args.batch, args.lr_size, args.seed, args.soft_content)
    print(json.dumps(provenance, indent=1))


if __name__ == "__main__":
    main()
