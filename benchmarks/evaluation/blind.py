"""Blind x2 SR on Set14 with the DIV2KRK-style random kernels (degradation rk): how MZSR(10) does with
the true kernel, with KernelGAN's estimate and with the best fixed guess, beside KernelGAN + ZSSR and
bicubic; the kernel error of the estimate and of the guess; seconds per image of each part.

"Best fixed guess": the mean kernel of the rk distribution (4,000 draws of other stems), the one fixed
kernel with the least expected squared error to a random rk kernel; it sees no test image.

Resumable: every finished (image, part) is kept in the JSON file (--json), so a rerun continues
where the last one stopped and `--zssr-iterations` can be raised later for ZSSR alone.

    python -m benchmarks.evaluation.blind_set14 --threads 1 [--images face comic] [--zssr-iterations 300] \
        [--json benchmarks/results/blind_set14_cpu.json] [--phases estimate mzsr zssr]

Two processes may share the work (e.g. ZSSR beside MZSR) on copies of the JSON file; merge them
with `--merge OTHER.json --phases` (no phase: only the table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, SET14, paper_lr, set14
from mzsr.adapt import AdaptOptions, adapt, resolve_schedule, weights_subsampling
from mzsr.checkpoints import load_model
from mzsr.degrade import to_uint8
from mzsr.estimate import estimate_kernel, kernel_error
from mzsr.kernels import random_kernel, random_kernel_rng, resolve_degradation
from mzsr.metrics import psnr, ssim
from mzsr.resize import imresize
from mzsr.zssr import zssr


def mean_rk_kernel(draws: int = 4000) -> np.ndarray:
    """The expected rk kernel, from stems no test set uses."""
    ks = [random_kernel(random_kernel_rng(0, f"__mean_{i}"), 2) for i in range(draws)]
    return np.mean(ks, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=REPO / "models" / "direct_x2.safetensors")
    ap.add_argument("--set14", type=Path, default=SET14)
    ap.add_argument("--images", nargs="*", help="image stems (default: all 14)")
    ap.add_argument("--degradation", default="rk", help="rk or rk<seed>")
    ap.add_argument("--iterations", type=int, default=3000, help="KernelGAN iterations (the release's 3000)")
    ap.add_argument("--zssr-iterations", type=int, default=300, help="ZSSR iteration cap (0: skip ZSSR)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "blind_set14_cpu.json")
    ap.add_argument(
        "--phases",
        nargs="*",
        default=["estimate", "mzsr", "zssr"],
        help="parts to run, in order (none: only print the table of the JSON file)",
    )
    ap.add_argument("--merge", nargs="*", type=Path, default=[], help="JSON files of other runs to merge in")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    state = json.loads(args.json.read_text()) if args.json.exists() else {"images": {}}
    for other in args.merge:
        for stem, rec in json.loads(other.read_text())["images"].items():
            state["images"].setdefault(stem, {}).update(
                {k: v for k, v in rec.items() if k not in state["images"].get(stem, {})}
            )
    state["setup"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "weights": str(args.weights.name),
        "degradation": args.degradation,
        "kernelgan_iterations": args.iterations,
    }

    def save():
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, args.json)

    model, meta = load_model(args.weights, expected_scale=2, device=device)
    schedule = resolve_schedule("auto", weights_subsampling(meta, "direct"), 2)
    guess = mean_rk_kernel()
    images = set14(args.set14, args.images or None)
    for phase in args.phases:
        for stem, hr in images:
            rec = state["images"].setdefault(stem, {})
            truth = resolve_degradation(args.degradation, image=stem, scale=2).kernel
            lr = paper_lr(hr, truth, "direct")
            if phase == "estimate" and "estimate" not in rec:
                est = estimate_kernel(lr, 2, {"iterations": args.iterations}, device, seed=0, source=f"{stem}.png")
                rec["estimate"] = {
                    "kernel": est.kernel.tolist(),
                    "seconds": est.seconds,
                    "error": kernel_error(est.kernel, truth),
                    "guess_error": kernel_error(guess, truth),
                }
                sr = to_uint8(imresize(lr, 2.0, output_shape=hr.shape[:2]))
                rec["bicubic"] = {"psnr": psnr(sr, hr, 2), "ssim": ssim(sr, hr, 2), "seconds": 0.0}
            elif phase == "mzsr":
                kernels = {"mzsr_true": truth, "mzsr_kgan": np.array(rec["estimate"]["kernel"]), "mzsr_guess": guess}
                for name, k in kernels.items():
                    if name in rec:
                        continue
                    (out,) = adapt(
                        model, lr, k, 2, "direct", AdaptOptions(steps=(10,), schedule=schedule), device, hr.shape[:2]
                    )
                    rec[name] = {"psnr": psnr(out.sr, hr, 2), "ssim": ssim(out.sr, hr, 2), "seconds": out.seconds}
            elif phase == "zssr" and args.zssr_iterations > 0:
                key = f"zssr_kgan_{args.zssr_iterations}"
                if key in rec:
                    continue
                out = zssr(
                    lr,
                    np.array(rec["estimate"]["kernel"]),
                    2,
                    "direct",
                    {"iterations": args.zssr_iterations},
                    device,
                    seed=0,
                )
                rec[key] = {
                    "psnr": psnr(out.sr, hr, 2),
                    "ssim": ssim(out.sr, hr, 2),
                    "seconds": out.seconds,
                    "iterations": out.steps,
                }
            else:
                continue
            save()
            print(
                f"{phase:8s} {stem:10s} "
                + " ".join(f"{k}={v['psnr']:.2f}" for k, v in rec.items() if isinstance(v, dict) and "psnr" in v),
                flush=True,
            )
    if args.merge:
        save()
    print(table(state, [stem for stem, _ in images], args.zssr_iterations))


def table(state: dict, stems: list[str], zssr_iterations: int) -> str:
    """The mean over the images that finished each row."""
    rows = [
        ("Bicubic", "bicubic"),
        ("MZSR(10), true kernel", "mzsr_true"),
        ("MZSR(10), KernelGAN kernel", "mzsr_kgan"),
        ("MZSR(10), best fixed guess (mean rk kernel)", "mzsr_guess"),
        (f"KernelGAN + ZSSR ({zssr_iterations}-iteration cap)", f"zssr_kgan_{zssr_iterations}"),
    ]
    recs = [state["images"][s] for s in stems if s in state["images"]]
    s = state["setup"]
    lines = [
        f"Set14 x2, degradation {s['degradation']}, Y channel; {s['device']}, {s['threads']} thread(s), torch {s['torch']};"
        f" weights {s['weights']}",
        "",
        "| method | images | PSNR (dB) | SSIM | seconds / image |",
        "|---|---|---|---|---|",
    ]
    for label, key in rows:
        done = [r[key] for r in recs if key in r]
        if done:
            lines.append(
                f"| {label} | {len(done)} | {np.mean([d['psnr'] for d in done]):.2f} | "
                f"{np.mean([d['ssim'] for d in done]):.4f} | {np.mean([d['seconds'] for d in done]):.1f} |"
            )
    est = [r["estimate"] for r in recs if "estimate" in r]
    if est:
        lines += [
            "",
            f"KernelGAN ({s['kernelgan_iterations']} iterations): {np.mean([e['seconds'] for e in est]):.1f} s / image;"
            f" kernel error (sum of squared differences) {np.mean([e['error'] for e in est]):.5f},"
            f" best fixed guess {np.mean([e['guess_error'] for e in est]):.5f} ({len(est)} images)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
