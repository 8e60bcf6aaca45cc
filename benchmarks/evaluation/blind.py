"""Blind x2 SR with the DIV2KRK-style random kernels (degradation rk), on Set14 or on 12 large photo
crops: how MZSR(10) does with the true kernel, with the learned estimator's kernel (mzsr.estimation,
the default of `--degradation estimate`), with KernelGAN's and with three fixed guesses, beside
KernelGAN + ZSSR and bicubic; the kernel error of each estimate and of the mean rk kernel; seconds
per image.

Fixed guesses, what a user without a kernel would try; none sees a test image. The mean kernel of the
rk distribution (4,000 draws of other stems), the one fixed kernel with the least expected squared
error to a random rk kernel; the paper's g2.0 (narrower: covariance trace 4.0 against 5.3); and no
kernel at all (bicubic: MZSR adapted with bicubic-downscaled sons). The best fixed guess of a set is
the one of the three with the highest mean PSNR there.
"photos": each of ../shared/data/photos downscaled to 800 px on its shorter side, the central 800x800
crop (LR 400x400, DIV2KRK-like sizes). "skimage": five scikit-image photos, 384x384 crops, each under
three kernels (--degradation rk1, rk2, rk3): held out, the set on which the estimator's training
recipe was chosen (docs/results.md).

`--convention kernelgan` makes the LR images the KernelGAN way (as DIV2KRK: every kernel's centre of
mass moved to size//2 + 0.5 (s - size mod 2) before correlating) and places every kernel MZSR adapts
with (true, estimated, guessed) the same way (`mzsr.degradation.kernels.in_convention`, what
`--kernel-convention kernelgan` does); one more row then reads the true kernel in MZSR's convention,
the cost of the mismatch.

Resumable: every finished (image, part) is kept in the JSON file (--json), so a rerun continues
where the last one stopped and `--zssr-iterations` can be raised later for ZSSR alone.

    python -m benchmarks.evaluation.blind --set set14 --threads 1 [--images face comic] [--zssr-iterations 300] \
        [--json benchmarks/results/blind_set14_cpu.json] [--phases learned estimate mzsr zssr]
    python -m benchmarks.evaluation.blind --set photos --threads 1 --zssr-iterations 0
    python -m benchmarks.evaluation.blind --set skimage --degradation rk1 --threads 1 --zssr-iterations 0 --phases learned mzsr
    python -m benchmarks.evaluation.blind --set set14 --convention kernelgan --threads 1 --zssr-iterations 0 --phases learned mzsr

Two processes may share the work (e.g. KernelGAN beside MZSR) on copies of the JSON file; merge them
with `--merge OTHER.json --phases` (no phase: only the table).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, SET14, SHARED, paper_lr, set14, write_result
from mzsr import MZSRError
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.schedules import resolve_schedule, weights_subsampling
from mzsr.adaptation.zssr import zssr
from mzsr.degradation.degrade import to_uint8
from mzsr.degradation.kernels import KERNEL_CONVENTIONS, in_convention, random_kernel, random_kernel_rng
from mzsr.degradation.resize import imresize
from mzsr.degradation.resolve import resolve_degradation
from mzsr.estimation import kernel_net
from mzsr.estimation.estimate import estimate_kernel, kernel_error
from mzsr.evaluation.metrics import psnr, ssim
from mzsr.files.checkpoints import load_model
from mzsr.files.images import read_image_uint8


def mean_rk_kernel(draws: int = 4000) -> np.ndarray:
    """The expected rk kernel, from stems no test set uses."""
    ks = [random_kernel(random_kernel_rng(0, f"__mean_{i}"), 2) for i in range(draws)]
    return np.mean(ks, axis=0)


# The fixed guesses beside the mean rk kernel (the module's docstring): the row's key and the degradation.
FIXED_GUESSES = {"mzsr_g2.0": "g2.0", "mzsr_bicubic": "bicubic"}
PHOTOS = SHARED / "photos"
SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
SET_TITLES = {"set14": "Set14", "photos": "12 photo crops", "skimage": "5 scikit-image crops (held out)"}
SETS = tuple(SET_TITLES)


def skimage_crops(stems=None, side: int = 384) -> list[tuple[str, np.ndarray]]:
    """(stem, HR image) of five scikit-image photos, their top-left side x side crops: a held-out set
    (neither a training nor a benchmark image) on which the estimator's recipe was chosen. Run it
    with --degradation rk1, rk2 and rk3 for three kernels per image."""
    import skimage.data

    return [(name, getattr(skimage.data, name)()[:side, :side]) for name in SKIMAGE if stems is None or name in stems]


def images_of(name: str, stems, set14_folder: Path) -> list[tuple[str, np.ndarray]]:
    if name == "set14":
        return set14(set14_folder, stems)
    return photo_crops(stems=stems) if name == "photos" else skimage_crops(stems)


def photo_crops(folder: Path = PHOTOS, stems=None, side: int = 800) -> list[tuple[str, np.ndarray]]:
    """(stem, HR image) of every photo in `folder`, or of the given stems: the photo downscaled (MATLAB
    bicubic) to `side` pixels on its shorter side, then its central side x side crop. Whole scenes, as
    DIV2K's images are, and sharper than the JPEG at full size (camera blur, compression)."""
    paths = sorted(p for p in Path(folder).glob("*.jpg") if stems is None or p.stem in stems)
    if not paths:
        raise SystemExit(f"no photos (*.jpg) in {folder} (set MZSR_SHARED_DATA)")
    out = []
    for p in paths:
        img = read_image_uint8(p)
        factor = side / min(img.shape[:2])
        small = to_uint8(imresize(img / 255.0, factor))
        top, left = (small.shape[0] - side) // 2, (small.shape[1] - side) // 2
        out.append((p.stem, small[top : top + side, left : left + side]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=REPO / "models" / "direct_x2.safetensors")
    ap.add_argument("--set14", type=Path, default=SET14)
    ap.add_argument(
        "--kernel-net", type=Path, default=kernel_net.weights_path(), help="the learned estimator's weights"
    )
    ap.add_argument(
        "--set",
        choices=SETS,
        default="set14",
        help="Set14, 800x800 crops of the 12 photos, or the held-out scikit-image crops",
    )
    ap.add_argument("--images", nargs="*", help="image stems (default: all of the set)")
    ap.add_argument("--degradation", default="rk", help="rk or rk<seed>")
    ap.add_argument(
        "--convention",
        choices=KERNEL_CONVENTIONS,
        default="mzsr",
        help="how the LR images are made: mzsr (the paper's) or kernelgan (as DIV2KRK); kernels placed to match",
    )
    ap.add_argument("--iterations", type=int, default=3000, help="KernelGAN iterations (the release's 3000)")
    ap.add_argument("--zssr-iterations", type=int, default=300, help="ZSSR iteration cap (0: skip ZSSR)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="default: benchmarks/results/blind_<set>_cpu.json")
    ap.add_argument(
        "--phases",
        nargs="*",
        default=["learned", "estimate", "mzsr", "zssr"],
        help="parts to run, in order (none: only print the table of the JSON file)",
    )
    ap.add_argument("--merge", nargs="*", type=Path, default=[], help="JSON files of other runs to merge in")
    args = ap.parse_args()
    deg = "" if args.degradation == "rk" else f"_{args.degradation}"
    deg += "" if args.convention == "mzsr" else f"_{args.convention}"
    args.json = args.json or REPO / "benchmarks" / "results" / f"blind_{args.set}{deg}_cpu.json"
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    state = _load(args.json) if args.json.exists() else {"images": {}}
    for other in args.merge:
        for stem, rec in _load(other)["images"].items():
            state["images"].setdefault(stem, {}).update(
                {k: v for k, v in rec.items() if k not in state["images"].get(stem, {})}
            )
    state["setup"] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": args.threads,
        "torch": torch.__version__,
        "weights": str(args.weights.name),
        "kernel_net": str(args.kernel_net.name),
        "set": args.set,
        "degradation": args.degradation,
        "convention": args.convention,
        "kernelgan_iterations": args.iterations,
    }

    def save():
        write_result(args.json, state)

    model, meta = load_model(args.weights, expected_scale=2, device=device)
    schedule = resolve_schedule("auto", weights_subsampling(meta, "direct"), 2)
    guess = mean_rk_kernel()
    fixed_guesses = {
        name: resolve_degradation(d, convention=args.convention).kernel for name, d in FIXED_GUESSES.items()
    }
    images = images_of(args.set, args.images or None, args.set14)
    estimator = kernel_net.load(args.kernel_net) if "learned" in args.phases else None
    for phase in args.phases:
        for stem, hr in images:
            rec = state["images"].setdefault(stem, {})
            truth = resolve_degradation(args.degradation, image=stem, scale=2).kernel  # MZSR's convention
            lr = paper_lr(hr, in_convention(truth, args.convention, 2), "direct")
            if phase in ("learned", "estimate") and phase not in rec:
                start = time.perf_counter()
                if phase == "learned":
                    kernel = kernel_net.estimate(lr, estimator)  # what estimate_kernel(method learned) returns
                else:
                    cfg = {"method": "kernelgan", "iterations": args.iterations}
                    try:
                        kernel = estimate_kernel(lr, 2, cfg, device, seed=0, source=f"{stem}.png").kernel
                    except MZSRError as e:  # KernelGAN can diverge: the image keeps the other rows
                        rec[phase] = {"failed": str(e), "seconds": time.perf_counter() - start}
                        save()
                        print(f"{phase:8s} {stem:10s} failed: {e}", flush=True)
                        continue
                rec[phase] = {
                    "kernel": kernel.tolist(),
                    "seconds": time.perf_counter() - start,
                    "error": kernel_error(kernel, truth),
                    "guess_error": kernel_error(guess, truth),
                }
                sr = to_uint8(imresize(lr, 2.0, output_shape=hr.shape[:2]))
                rec["bicubic"] = {"psnr": psnr(sr, hr, 2), "ssim": ssim(sr, hr, 2), "seconds": 0.0}
            elif phase == "mzsr":
                kernels = {"mzsr_true": truth, "mzsr_guess": guess}
                kernels.update({"mzsr_learned": np.array(rec["learned"]["kernel"])} if "learned" in rec else {})
                kernels.update({"mzsr_kgan": np.array(rec["estimate"]["kernel"])} if _estimated(rec) else {})
                kernels = {name: (in_convention(k, args.convention, 2), args.convention) for name, k in kernels.items()}
                if args.convention != "mzsr":
                    kernels["mzsr_true_mismatched"] = (truth, "mzsr")  # read in MZSR's convention
                kernels.update({name: (k, args.convention) for name, k in fixed_guesses.items()})
                for name, (k, convention) in kernels.items():
                    if name in rec:
                        continue
                    options = AdaptOptions(steps=(10,), schedule=schedule)
                    subsampling = "direct" if k is not None else "bicubic"
                    (out,) = adapt(model, lr, k, 2, subsampling, options, device, hr.shape[:2], convention)
                    rec[name] = {"psnr": psnr(out.sr, hr, 2), "ssim": ssim(out.sr, hr, 2), "seconds": out.seconds}
            elif phase == "zssr" and args.zssr_iterations > 0 and _estimated(rec):
                key = f"zssr_kgan_{args.zssr_iterations}"
                if key in rec:
                    continue
                out = zssr(
                    lr,
                    in_convention(np.array(rec["estimate"]["kernel"]), args.convention, 2),
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


def _estimated(rec: dict) -> bool:
    """Whether KernelGAN gave this image a kernel (it may have diverged: {"failed": why})."""
    return "kernel" in rec.get("estimate", {})


def _load(path: Path) -> dict:
    """The results of a --json file ({"setup", "images"})."""
    return json.loads(path.read_text())["results"]


def _estimate_summary(about: str, estimates: list[dict]) -> list[str]:
    """One line on an estimator's records: seconds, its kernel error and the mean rk kernel's."""
    failed = [e["failed"] for e in estimates if "failed" in e]
    estimates = [e for e in estimates if "failed" not in e]
    if not estimates and not failed:
        return []
    mean = lambda key: np.mean([e[key] for e in estimates])  # noqa: E731
    lines = [""]
    if estimates:
        lines.append(
            f"{about}: {mean('seconds'):.2f} s / image; kernel error (sum of squared differences)"
            f" {mean('error'):.5f}, mean rk kernel {mean('guess_error'):.5f} ({len(estimates)} images)"
        )
    return lines + [f"{about} failed: {why}" for why in failed]


def table(state: dict, stems: list[str], zssr_iterations: int) -> str:
    """The mean over the images that finished each row."""
    rows = [
        ("Bicubic", "bicubic"),
        ("MZSR(10), true kernel", "mzsr_true"),
        ("MZSR(10), true kernel read in MZSR's convention", "mzsr_true_mismatched"),
        ("MZSR(10), learned estimator's kernel (mzsr.estimation)", "mzsr_learned"),
        ("MZSR(10), KernelGAN kernel", "mzsr_kgan"),
        ("MZSR(10), fixed guess: the mean rk kernel", "mzsr_guess"),
        ("MZSR(10), fixed guess: g2.0", "mzsr_g2.0"),
        ("MZSR(10), fixed guess: bicubic (no kernel, bicubic sons)", "mzsr_bicubic"),
        (f"KernelGAN + ZSSR ({zssr_iterations}-iteration cap)", f"zssr_kgan_{zssr_iterations}"),
    ]
    recs = [state["images"][s] for s in stems if s in state["images"]]
    s = state["setup"]
    lines = [
        f"{SET_TITLES[s.get('set', 'set14')]} x2, degradation {s['degradation']}"
        f" ({s.get('convention', 'mzsr')} convention), Y channel; {s['device']}, {s['threads']} thread(s), torch {s['torch']};"
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
    for part, about in (
        ("learned", "Learned estimator"),
        ("estimate", f"KernelGAN ({s['kernelgan_iterations']} iterations)"),
    ):
        lines += _estimate_summary(about, [r[part] for r in recs if part in r])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
