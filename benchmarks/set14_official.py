"""Set14 x2 with the authors' pre-trained model (imported from TensorFlow) against bicubic.

Prints Y-PSNR/SSIM (paper protocol) for plain bicubic degradation (no adaptation) and for a named
kernel degradation after 0, 1 and 10 adaptation steps. Optional --weights evaluates another model
(e.g. the project's meta weights) the same way.

    python benchmarks/set14_official.py [--degradation g2.0] [--weights W.safetensors]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mzsr.adapt import AdaptOptions, adapt
from mzsr.checkpoints import import_tf_checkpoint, load_model
from mzsr.degrade import degrade, to_uint8
from mzsr.images import read_image_uint8
from mzsr.kernels import named_degradation
from mzsr.metrics import modcrop, psnr, ssim
from mzsr.model import MZSRNet
from mzsr.resize import imresize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def evaluate(model, images, deg_name: str, steps, schedule: str, device: str) -> dict:
    """Mean (PSNR, SSIM) for bicubic interpolation and for the model after each step count."""
    deg = named_degradation(deg_name)
    scores: dict = {"bicubic": []}
    for hr in images:
        lr = to_uint8(degrade(hr / 255.0, deg.kernel, 2, deg.subsampling)) / 255.0
        bic = to_uint8(imresize(lr, 2))
        scores["bicubic"].append((psnr(bic, hr, 2), ssim(bic, hr, 2)))
        for out in adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=steps, schedule=schedule), device):
            scores.setdefault(out.steps, []).append((psnr(out.sr, hr, 2), ssim(out.sr, hr, 2)))
    return {k: tuple(np.mean(v, axis=0)) for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set14", type=Path, default=SHARED / "test" / "Set14")
    ap.add_argument("--checkpoint", type=Path, default=SHARED / "checkpoints" / "mzsr-official-pretrained" / "Pretrained")
    ap.add_argument("--weights", type=Path, help="evaluate these weights instead of the imported checkpoint")
    ap.add_argument("--degradation", default="g2.0")
    ap.add_argument("--schedule", default="direct_x2")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.weights:
        model, _ = load_model(args.weights, expected_scale=2)
    else:
        model = MZSRNet()
        model.load_state_dict(import_tf_checkpoint(args.checkpoint))
    images = [modcrop(read_image_uint8(p), 2) for p in sorted(args.set14.glob("*.png"))]
    print(f"Set14 ({len(images)} images), x2, Y channel, paper protocol; model: {args.weights or args.checkpoint}")
    print("| degradation | method | PSNR | SSIM |\n|---|---|---|---|")
    for name, steps in (("bicubic", (0,)), (args.degradation, (0, 1, 10))):
        for key, (p, s) in evaluate(model, images, name, steps, args.schedule, args.device).items():
            label = key if key == "bicubic" else f"model, {key} steps"
            print(f"| {name} | {label} | {p:.2f} | {s:.4f} |")


if __name__ == "__main__":
    main()
