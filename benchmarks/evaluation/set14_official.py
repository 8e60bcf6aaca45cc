"""Set14 x2 with the authors' pre-trained model (imported from TensorFlow) against bicubic.

Prints Y-PSNR/SSIM (paper protocol) for plain bicubic degradation (no adaptation) and for a named
kernel degradation after 0, 1 and 10 adaptation steps. Optional --weights evaluates another model
(e.g. the project's meta weights) the same way.

    python -m benchmarks.evaluation.set14_official [--degradation g2.0] [--weights W.safetensors] [--json FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import SET14, TF_CHECKPOINT, paper_lr, score, set14, write_result
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.degradation.degrade import to_uint8
from mzsr.degradation.kernels import named_degradation
from mzsr.degradation.resize import imresize
from mzsr.files.checkpoints import import_tf_checkpoint, load_model
from mzsr.network.model import MZSRNet


def evaluate(model, images, deg_name: str, steps, schedule: str, device: str) -> dict:
    """Mean (PSNR, SSIM) for bicubic interpolation and for the model after each step count."""
    deg = named_degradation(deg_name)
    scores: dict = {"bicubic": []}
    for hr in images:
        lr = paper_lr(hr, deg.kernel, deg.subsampling)
        scores["bicubic"].append(score(to_uint8(imresize(lr, 2)), hr))
        for out in adapt(
            model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=steps, schedule=schedule), device
        ):
            scores.setdefault(out.steps, []).append(score(out.sr, hr))
    return {k: tuple(np.mean(v, axis=0)) for k, v in scores.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set14", type=Path, default=SET14)
    ap.add_argument("--checkpoint", type=Path, default=TF_CHECKPOINT)
    ap.add_argument("--weights", type=Path, help="evaluate these weights instead of the imported checkpoint")
    ap.add_argument("--degradation", default="g2.0")
    ap.add_argument("--schedule", default="direct_x2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.weights:
        model, _ = load_model(args.weights, expected_scale=2)
    else:
        model = MZSRNet()
        model.load_state_dict(import_tf_checkpoint(args.checkpoint))
    images = [hr for _, hr in set14(args.set14)]
    print(f"Set14 ({len(images)} images), x2, Y channel, paper protocol; model: {args.weights or args.checkpoint}")
    print("| degradation | method | PSNR | SSIM |\n|---|---|---|---|")
    rows = []
    for name, steps in (("bicubic", (0,)), (args.degradation, (0, 1, 10))):
        for key, (p, s) in evaluate(model, images, name, steps, args.schedule, args.device).items():
            label = key if key == "bicubic" else f"model, {key} steps"
            print(f"| {name} | {label} | {p:.2f} | {s:.4f} |")
            rows.append({"degradation": name, "method": label, "psnr": p, "ssim": s})
    write_result(args.json, {"model": str(args.weights or "theta_T (the authors' TF checkpoint)"), "rows": rows})


if __name__ == "__main__":
    main()
