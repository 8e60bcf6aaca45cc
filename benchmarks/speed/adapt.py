"""Per-image cost and quality of MZSR(1), MZSR(10) and ZSSR on this machine, in one run.

1. Seconds per image on the same 256x256 LR image (astronaut, g2.0): MZSR(1), MZSR(10), ZSSR, and
   the ratios ZSSR / MZSR(n).
2. MZSR(10)'s achieved GFLOP/s against a plain conv forward/backward loop of the same sizes run in
   this script (the floor: adaptation should add nothing beyond its convolutions).
3. Optionally Set14 Y-PSNR/SSIM under g2.0 for each method, with the imported pre-trained model and
   with meta weights (--weights), and the effect of the "best" preset.

    python -m benchmarks.speed.adapt [--zssr-iterations 3000] [--weights META.safetensors] [--set14]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

from benchmarks.harness import SHARED, paper_lr, score, set14
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.zssr import zssr
from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.degradation.kernels import named_degradation
from mzsr.files.checkpoints import import_tf_checkpoint, load_model
from mzsr.network.model import MZSRNet

CONV_FLOPS_PER_PIXEL = 2 * 9 * (3 * 64 + 6 * 64 * 64 + 64 * 3)  # one forward pass of the 8 layers


def adaptation_flops(lr_hw, scale: int, steps: int) -> float:
    """Analytic conv FLOPs of MZSR(steps): steps x (forward + 2x backward) at LR size + one HR forward."""
    lr_px = lr_hw[0] * lr_hw[1]
    return CONV_FLOPS_PER_PIXEL * (3 * steps * lr_px + scale * scale * lr_px)


def floor_seconds(lr_hw, scale: int, steps: int, repeats: int) -> float:
    """The same convolutions as plain module calls: steps x fwd+bwd at LR size, one HR forward."""
    net = MZSRNet()
    x = torch.rand(1, 3, *lr_hw)
    y = torch.rand(1, 3, lr_hw[0] * scale, lr_hw[1] * scale)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            F.l1_loss(net(x), x).backward()
        with torch.no_grad():
            net(y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--checkpoint", type=Path, default=SHARED / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"
    )
    ap.add_argument("--weights", type=Path, help="meta weights to compare with the imported pre-trained model")
    ap.add_argument("--zssr-iterations", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set14", action="store_true", help="also score Set14 under g2.0 (slow on a CPU)")
    ap.add_argument("--skip-timing", action="store_true", help="only the Set14 part")
    ap.add_argument("--only-weights", action="store_true", help="Set14 for --weights alone, not the imported model")
    ap.add_argument("--set14-zssr-iterations", type=int, default=0, help="ZSSR on Set14 too, with this cap (0 = skip)")
    args = ap.parse_args()
    models = {}
    if args.checkpoint.with_suffix(".index").exists():
        m = MZSRNet()
        m.load_state_dict(import_tf_checkpoint(args.checkpoint))
        models["pre-trained (authors)"] = m
    else:
        models["random init"] = MZSRNet()
    if args.weights:
        models["meta"] = load_model(args.weights, expected_scale=2)[0]
    deg = named_degradation("g2.0")
    hr = data.astronaut()  # 512x512 -> 256x256 LR
    lr = to_uint8(degrade(hr / 255.0, deg.kernel, 2, deg.subsampling)) / 255.0
    model = next(iter(models.values()))
    print(f"CPU threads {torch.get_num_threads()}; LR {lr.shape[1]}x{lr.shape[0]} (astronaut, g2.0)")

    if args.only_weights and args.weights:
        models = {"meta": models["meta"]}
    timing = {}
    for steps in (1, 10) if not args.skip_timing else ():
        runs = [
            adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(steps,)), device="cpu")[0].seconds
            for _ in range(args.repeats)
        ]
        timing[f"MZSR({steps})"] = float(np.median(runs))
    if not args.skip_timing:
        z = zssr(lr, deg.kernel, 2, deg.subsampling, {"iterations": args.zssr_iterations}, device="cpu")
        timing[f"ZSSR ({z.steps} iterations)"] = z.seconds
        floor = floor_seconds(lr.shape[:2], 2, 10, args.repeats)
        flops = adaptation_flops(lr.shape[:2], 2, 10)
        print("\n| method | seconds per image | ZSSR / method |\n|---|---|---|")
        for name, sec in timing.items():
            print(f"| {name} | {sec:.2f} | {z.seconds / sec:.1f} |")
        print(
            f"\nMZSR(10): {flops / 1e9:.0f} GFLOP of convolutions; {flops / timing['MZSR(10)'] / 1e9:.1f} GFLOP/s achieved, "
            f"floor (plain conv fwd/bwd loop, same sizes) {flops / floor / 1e9:.1f} GFLOP/s "
            f"-> {100 * floor / timing['MZSR(10)']:.0f}% of the floor"
        )

    if args.set14:
        images = [hr for _, hr in set14()]
        print(
            "\nSet14 x2, g2.0 (Y-PSNR/SSIM, paper protocol)\n| model | method | preset | PSNR | SSIM |\n|---|---|---|---|---|"
        )
        for name, m in models.items():
            for preset in ("paper", "best"):
                scores: dict[int, list] = {}
                for hr_img in images:
                    lr_img = paper_lr(hr_img, deg.kernel, deg.subsampling)
                    for out in adapt(
                        m,
                        lr_img,
                        deg.kernel,
                        2,
                        deg.subsampling,
                        AdaptOptions(steps=(0, 1, 10), preset=preset),
                        device="cpu",
                    ):
                        scores.setdefault(out.steps, []).append(score(out.sr, hr_img))
                for steps, v in scores.items():
                    p, s = np.mean(v, axis=0)
                    print(f"| {name} | MZSR({steps}) | {preset} | {p:.2f} | {s:.4f} |", flush=True)
        if args.set14_zssr_iterations:
            v = []
            for hr_img in images:
                lr_img = paper_lr(hr_img, deg.kernel, deg.subsampling)
                out = zssr(
                    lr_img, deg.kernel, 2, deg.subsampling, {"iterations": args.set14_zssr_iterations}, device="cpu"
                )
                v.append(score(out.sr, hr_img))
            p, s = np.mean(v, axis=0)
            print(f"| - | ZSSR (cap {args.set14_zssr_iterations}) | paper | {p:.2f} | {s:.4f} |")


if __name__ == "__main__":
    main()
