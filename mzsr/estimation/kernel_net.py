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
direct x2 subsampling, uint8 quantisation) with the kernel error of `mzsr.estimation.estimate.kernel_error`
between the Gaussian of the predicted Sigma and the true (noisy) kernel as the loss.

Soft content: photos are often soft before any kernel acts (motion, depth of field, optics), and a
network that saw only sharp training crops reads that softness as kernel blur. Too wide a kernel makes
MZSR over-sharpen, which costs far more PSNR than too narrow a one; so part of the training crops are
blurred first (`soften`), with the label still the kernel alone, and the network learns to hold back
where softness may be the scene's. The shipped weights are an ensemble of two networks (soft-content
fractions 0.3 and 0.5) whose covariances are averaged: single networks trained alike differ by tenths
of a dB on the benchmarks (docs/results.md, "Blind SR").

They are a released model, `models/kernel_net_x2.safetensors` (the folder of
`mzsr.files.released.models_folder()`, $MZSR_MODELS where set), with their provenance in the file's
"released" metadata. Its training (`mzsr.training.kernel_net`) is the pipeline's rule
train_kernel_estimator (config section kernel_estimator); from the repository's root

    snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml

retrains them from the shared training images into results/models/kernel_net_x2.safetensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mzsr import MZSRError
from mzsr.degradation.kernels import RANDOM_KERNEL_SIZE
from mzsr.facts import KERNEL_NET_WEIGHTS

RETRAIN_COMMAND = "snakemake train_kernel_estimator --cores 2 --configfile config/kernel_estimator.yaml"
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


def weights_path() -> Path:
    """The released weights, models/kernel_net_x2.safetensors of the models folder (the checkout's
    models/, or $MZSR_MODELS), looked up when called."""
    from mzsr.files.released import models_folder

    return models_folder() / Path(KERNEL_NET_WEIGHTS).name


def load(path: str | Path | None = None) -> list[KernelNet]:
    """The networks of a weights file (default: the released weights, `weights_path()`): an ensemble
    whose members' tensors are named "<member>.<name>" (what training writes), or one network's plain
    state dict."""
    from safetensors.torch import load_file

    path = weights_path() if path is None else Path(path)
    if not path.is_file():
        raise MZSRError(
            f"{path}: no kernel-estimator weights (the released ones are models/{Path(KERNEL_NET_WEIGHTS).name}; "
            f"retrain them from the repository's root: {RETRAIN_COMMAND}, then copy "
            f"results/models/{Path(KERNEL_NET_WEIGHTS).name} there or give the file)"
        )
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
