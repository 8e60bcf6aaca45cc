"""A learned x2 blur-kernel estimator: a small CNN that reads an LR image and returns the covariance
of the Gaussian kernel that made it, trained here on the DIV2KRK-style random kernels (`rk`).

Why: KernelGAN's kernels are no closer to the truth than the best fixed guess (README, blind Set14),
and a user without a kernel meets MZSR through its estimate. Every x2 kernel of the family is an
anisotropic Gaussian (eigen-variances in [0.6, 5], any angle) times 25% pixel noise; the Gaussian
part, three numbers, is what decides the SR result, and blur of that kind leaves its mark in every
edge and texture of the LR image. So a network sees the LR image once and is done: milliseconds on a
CPU where KernelGAN takes minutes.

The network is fully convolutional: at every position of the LR image (at 1/4 resolution) it proposes
a covariance Sigma = L L^T (L lower-triangular with a positive diagonal) and a confidence; the image's
Sigma is the confidence-weighted mean of the proposals (flat regions say little about blur and learn
to abstain). It is trained end to end on crops degraded as the pipeline degrades images (the kernel,
direct x2 subsampling, uint8 quantisation) with the kernel error of `mzsr.estimate.kernel_error`
between the Gaussian of the predicted Sigma and the true (noisy) kernel as the loss.

Soft content: photos are often soft before any kernel acts (motion, depth of field, optics), and a
network that saw only sharp training crops reads that softness as kernel blur. Too wide a kernel makes
MZSR over-sharpen, which costs far more PSNR than too narrow a one; so part of the training crops are
blurred first (`soften`), with the label still the kernel alone, and the network learns to hold back
where softness may be the scene's. The shipped weights are an ensemble of two networks (soft-content
fractions 0.3 and 0.5) whose covariances are averaged: single networks trained alike differ by tenths
of a dB on the benchmarks (docs/results.md, "Blind SR").

    python -m mzsr.kernel_net --images ../shared/data/train --out mzsr/weights/kernel_net_x2.safetensors

trains the shipped weights (their provenance is in the file's metadata and `kernel_net_x2.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import MZSRError
from .degrade import degrade_torch
from .facts import IMAGE_SUFFIXES, KERNEL_NET_WEIGHTS
from .kernels import RANDOM_KERNEL_SIZE, gaussian_kernel, noisy_gaussian_kernel, random_kernel_params

WEIGHTS = Path(__file__).parent / KERNEL_NET_WEIGHTS
MIN_SIDE = 16  # LR pixels: the trunk's two stride-2 stages leave a 4x4 map


class KernelNet(nn.Module):
    """LR image (N, 3, H, W) in [0, 1] -> kernel covariance (N, 2, 2) in LR pixels, (row, column) axes."""

    def __init__(self, width: int = 48):
        super().__init__()

        def conv(cin, cout, stride=1):
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)

        self.trunk = nn.Sequential(
            conv(3, 32), nn.ReLU(), conv(32, width), nn.ReLU(),
            conv(width, width, 2), nn.ReLU(), conv(width, width), nn.ReLU(), conv(width, width), nn.ReLU(),
            conv(width, width, 2), nn.ReLU(), conv(width, width), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Conv2d(width, 4, 1)  # log L11, log L22, L21, confidence logit

    def proposals(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per position: Sigma (N, P, 2, 2) and confidence logits (N, P)."""
        out = self.head(self.trunk(lr - 0.5)).flatten(2).transpose(1, 2)  # (N, P, 4)
        l11, l22 = out[..., 0].exp(), out[..., 1].exp()
        l21 = out[..., 2]
        zero = torch.zeros_like(l11)
        chol = torch.stack([torch.stack([l11, zero], -1), torch.stack([l21, l22], -1)], -2)
        return chol @ chol.transpose(-1, -2), out[..., 3]

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return pool(*self.proposals(lr))


def pool(sigma: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The confidence-weighted mean (..., 2, 2) of per-position proposals (..., P, 2, 2), weights the
    softmax of their logits (..., P)."""
    weights = torch.softmax(logits, dim=-1).to(sigma.dtype)
    return (weights[..., None, None] * sigma).sum(-3)


def gaussian_from_covariance(sigma: torch.Tensor, size: int = RANDOM_KERNEL_SIZE) -> torch.Tensor:
    """The normalised size x size Gaussian kernels (N, size, size) of covariances (N, 2, 2) in (row,
    column) axes, centred on the middle pixel (MZSR's convention)."""
    r = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2.0
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    pts = torch.stack([yy, xx], -1)  # (size, size, 2): row, column offsets
    inv = torch.linalg.inv(sigma)
    k = torch.exp(-0.5 * torch.einsum("...i,nij,...j->n...", pts, inv, pts))
    return k / k.sum(dim=(-2, -1), keepdim=True)


def load(path: Path = WEIGHTS) -> list[KernelNet]:
    """The networks of a weights file: an ensemble whose members' tensors are named "<member>.<name>"
    (what training writes), or one network's plain state dict."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise MZSRError(f"{path}: no kernel-estimator weights (train them: python -m mzsr.kernel_net)")
    tensors = load_file(str(path))
    members: dict[str, dict] = {}
    for name, value in tensors.items():
        member, _, rest = name.partition(".")
        if not member.isdigit():
            members = {"0": tensors}
            break
        members.setdefault(member, {})[rest] = value
    nets = []
    for member in sorted(members, key=int):
        net = KernelNet()
        net.load_state_dict(members[member])
        nets.append(net.eval())
    return nets


TILE = 512  # LR pixels a side per pass: bounds the memory on large photos


@torch.no_grad()
def covariance_of(lr_image: np.ndarray, net: KernelNet) -> torch.Tensor:
    """One network's kernel covariance (2, 2) for an HxWx3 float LR image in [0, 1]: the proposals of
    every position, made tile by tile, pooled together (`pool`, as `KernelNet.forward` pools them)."""
    x = torch.as_tensor(np.ascontiguousarray(lr_image), dtype=torch.float32).permute(2, 0, 1)[None]
    sigmas, logits = [], []
    for top in range(0, x.shape[2], TILE):
        for left in range(0, x.shape[3], TILE):
            tile = x[..., top : top + TILE, left : left + TILE]
            if min(tile.shape[2:]) >= MIN_SIDE or (top == 0 and left == 0):  # (edge slivers say little)
                sigma, logit = net.proposals(tile)
                sigmas.append(sigma[0])
                logits.append(logit[0])
    return pool(torch.cat(sigmas).double(), torch.cat(logits))


def estimate(lr_image: np.ndarray, nets: list[KernelNet] | None = None) -> np.ndarray:
    """The x2 kernel (11x11, MZSR convention) of an HxWx3 float LR image in [0, 1]: the Gaussian of
    the ensemble's mean covariance (single networks trained alike differ by tenths of a dB from seed to
    seed; their mean is steadier)."""
    nets = nets or load()
    sigma = torch.stack([covariance_of(lr_image, net) for net in nets]).mean(0)
    return gaussian_from_covariance(sigma[None])[0].numpy()


# ------------------------------------------------------------------------------------------ training


def _read_images(folder: Path) -> tuple[list[torch.Tensor], list[Path]]:
    """The training images under `folder` (any depth: T91/, BSD200/) as CHW tensors, and their files."""
    from .images import read_image

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
    """The covariance (row, column axes) of `mzsr.kernels.gaussian_kernel(l1, l2, theta)`, whose
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
        "command": f"python -m mzsr.kernel_net --images {folder} --iterations {iterations} --batch {batch} "
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
    ap = argparse.ArgumentParser(description="Train the learned x2 kernel estimator (mzsr.kernel_net).")
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
