"""Set14 x2 per image and degradation for one weights file: MZSR(0/1/10) under the paper protocol.

Measures what the fidelity work changes (per-model schedules, exact-scale geometry, the release's
subsampling grid, self-ensemble and back-projection valid under direct subsampling). Prints a
mean table and, with --per-image, one row per image; --json keeps every number.

    python -m benchmarks.evaluation.set14_fidelity --weights models/direct_x2.safetensors \
        [--degradations g2.0 ani gb1.3] [--schedule auto] [--grid release] [--preset paper] [--images comic flowers zebra]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import SET14, paper_lr, score, set14, write_result
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.degradation.kernels import named_degradation
from mzsr.files.checkpoints import load_model


def score_rows(
    model,
    meta: dict,
    images,
    degradations,
    steps,
    schedule: str = "auto",
    device="cpu",
    preset: str = "paper",
    grid: str = "release",
) -> list[dict]:
    """One row (degradation, image, steps, lr_size, psnr, ssim) per image (stem, HR of `harness.set14`),
    degradation and step count."""
    rows = []
    for name in degradations:
        deg = named_degradation(name)
        for stem, hr in images:
            lr = paper_lr(hr, deg.kernel, deg.subsampling)
            sched = schedule
            if sched == "weights":
                from mzsr.adaptation.schedules import resolve_schedule, weights_subsampling

                sched = resolve_schedule("auto", weights_subsampling(meta, deg.subsampling), 2)
            for out in adapt(
                model,
                lr,
                deg.kernel,
                2,
                deg.subsampling,
                AdaptOptions(steps=steps, schedule=sched, preset=preset, grid=grid),
                device,
            ):
                p, s = score(out.sr, hr)
                rows.append(
                    {
                        "degradation": name,
                        "image": stem,
                        "steps": out.steps,
                        "lr_size": list(lr.shape[:2]),
                        "psnr": p,
                        "ssim": s,
                    }
                )
    return rows


def mean_table(rows: list[dict]) -> dict[str, dict[int, tuple[float, float]]]:
    """{degradation: {steps: (mean PSNR, mean SSIM)}}."""
    table: dict = {}
    for name in dict.fromkeys(r["degradation"] for r in rows):
        for n in dict.fromkeys(r["steps"] for r in rows):
            sel = [r for r in rows if r["degradation"] == name and r["steps"] == n]
            table.setdefault(name, {})[n] = (
                float(np.mean([r["psnr"] for r in sel])),
                float(np.mean([r["ssim"] for r in sel])),
            )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--set14", type=Path, default=SET14)
    ap.add_argument("--images", nargs="*", help="image stems to use (default: all 14)")
    ap.add_argument("--degradations", nargs="+", default=["g2.0", "ani", "gb1.3"])
    ap.add_argument("--steps", nargs="+", type=int, default=[0, 1, 10])
    ap.add_argument(
        "--schedule",
        default="auto",
        help="auto: the schedule released for the degradation's model (bicubic_x2 for gb1.3, as the"
        " pipeline's Bicubic model); 'weights': the one of these weights' own subsampling",
    )
    ap.add_argument("--grid", default="release", help="direct subsampling grid of the son: release or regular")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-image", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.weights, expected_scale=2, device="cpu")
    images = set14(args.set14, args.images or None)
    t0 = time.perf_counter()
    rows = score_rows(model, meta, images, args.degradations, args.steps, args.schedule, "cpu", args.preset, args.grid)
    print(
        f"Set14 ({len(images)} images), x2, Y, weights {args.weights}, schedule {args.schedule}, grid {args.grid},"
        f" preset {args.preset}; {time.perf_counter() - t0:.0f} s"
    )
    print("| degradation | " + " | ".join(f"MZSR({n})" for n in args.steps) + " |")
    print("|---|" + "---|" * len(args.steps))
    for name, by_steps in mean_table(rows).items():
        print(f"| {name} | " + " | ".join(f"{by_steps[n][0]:.2f}/{by_steps[n][1]:.4f}" for n in args.steps) + " |")
    if args.per_image:
        for r in rows:
            print(
                f"{r['degradation']:6s} {r['image']:10s} LR {r['lr_size'][0]}x{r['lr_size'][1]} steps {r['steps']:2d}"
                f" PSNR {r['psnr']:.3f} SSIM {r['ssim']:.4f}"
            )
    if args.json:
        write_result(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
