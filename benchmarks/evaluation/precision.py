"""What bfloat16 costs in accuracy: MZSR(1) and MZSR(10) with grad_precision bfloat16 (the whole
network in bfloat16: the steps' forward and backward, and the inference) against float32, per image.

Set14 and the 12 photo crops of `benchmarks.evaluation.blind` (800x800 HR), each degraded by g2.0 at
x2 as the paper makes its LR inputs, adapted from models/direct_x2.safetensors; PSNR and SSIM on the Y
channel. It prints each image's change and the means, and the largest grey-level difference of the
outputs. Needs a CPU with AMX or AVX512-BF16.

    python -m benchmarks.evaluation.precision --json benchmarks/results/precision_cpu.json   # ~15 min, 2 threads
    python -m benchmarks.evaluation.precision --sets set14 --images baboon --quick           # smoke test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluation.blind import images_of
from benchmarks.harness import REPO, SET14, paper_lr, score, write_result
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.degradation.kernels import named_degradation
from mzsr.files.checkpoints import load_model
from mzsr.network.conv import native_bfloat16

PRECISIONS = ("float32", "bfloat16")


def study(model, hr_images, steps: tuple[int, ...]) -> list[dict]:
    """Per image: PSNR/SSIM and seconds of each precision after each step count, and the largest
    grey-level difference between the two precisions' outputs."""
    deg = named_degradation("g2.0")
    rows = []
    for stem, hr in hr_images:
        lr = paper_lr(hr, deg.kernel, deg.subsampling)
        row = {"image": stem, "lr_shape": list(lr.shape[:2])}
        outputs = {}
        for precision in PRECISIONS:
            options = AdaptOptions(steps=steps, grad_precision=precision)
            outputs[precision] = adapt(model, lr, deg.kernel, 2, deg.subsampling, options, "cpu", hr.shape[:2])
        for i, n in enumerate(steps):
            entry = {}
            for precision in PRECISIONS:
                out = outputs[precision][i]
                p, s = score(out.sr, hr)
                entry[precision] = {"psnr": p, "ssim": s, "seconds": out.seconds}
            a, b = (outputs[p][i].sr.astype(int) for p in PRECISIONS)
            entry["max_grey_difference"] = int(np.abs(a - b).max())
            entry["psnr_change"] = entry["bfloat16"]["psnr"] - entry["float32"]["psnr"]
            row[f"mzsr{n}"] = entry
        rows.append(row)
        print(
            f"{stem:>14} "
            + "  ".join(
                f"MZSR({n}) {row[f'mzsr{n}']['float32']['psnr']:.3f} -> {row[f'mzsr{n}']['bfloat16']['psnr']:.3f}"
                f" ({row[f'mzsr{n}']['psnr_change']:+.3f} dB, {row[f'mzsr{n}']['max_grey_difference']} grey)"
                for n in steps
            ),
            flush=True,
        )
    return rows


def summary(rows: list[dict], steps) -> dict:
    out = {}
    for n in steps:
        entries = [r[f"mzsr{n}"] for r in rows]
        changes = np.array([e["psnr_change"] for e in entries])
        out[f"mzsr{n}"] = {
            "mean_psnr": {p: float(np.mean([e[p]["psnr"] for e in entries])) for p in PRECISIONS},
            "mean_ssim": {p: float(np.mean([e[p]["ssim"] for e in entries])) for p in PRECISIONS},
            "mean_seconds": {p: float(np.mean([e[p]["seconds"] for e in entries])) for p in PRECISIONS},
            "mean_psnr_change": float(changes.mean()),
            "largest_psnr_drop": float(changes.min()),
            "largest_psnr_gain": float(changes.max()),
            "largest_grey_difference": max(e["max_grey_difference"] for e in entries),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", choices=("set14", "photos"), default=["set14", "photos"])
    ap.add_argument("--images", nargs="*", help="image stems to use (default: all)")
    ap.add_argument("--weights", type=Path, default=REPO / "models" / "direct_x2.safetensors")
    ap.add_argument("--steps", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="MZSR(1) only")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not native_bfloat16():
        raise SystemExit("bfloat16 needs a CPU with AMX or AVX512-BF16; this one has neither")
    torch.set_num_threads(args.threads)
    steps = (1,) if args.quick else tuple(args.steps)
    model = load_model(args.weights, expected_scale=2)[0]
    results = {}
    for name in args.sets:
        start = time.perf_counter()
        print(f"{name}: PSNR float32 -> bfloat16 (Y channel, g2.0 x2)", flush=True)
        rows = study(model, images_of(name, args.images, SET14), steps)
        results[name] = {"images": rows, "summary": summary(rows, steps)}
        for key, s in results[name]["summary"].items():
            print(
                f"{name} {key}: mean {s['mean_psnr']['float32']:.3f} -> {s['mean_psnr']['bfloat16']:.3f} dB "
                f"({s['mean_psnr_change']:+.4f}; per image {s['largest_psnr_drop']:+.3f} to "
                f"{s['largest_psnr_gain']:+.3f}), SSIM {s['mean_ssim']['float32']:.4f} -> "
                f"{s['mean_ssim']['bfloat16']:.4f}, largest grey difference {s['largest_grey_difference']}, "
                f"s/image {s['mean_seconds']['float32']:.2f} -> {s['mean_seconds']['bfloat16']:.2f}",
                flush=True,
            )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        write_result(args.json, results)


if __name__ == "__main__":
    main()
