"""The `mzsr` command's parser: every subcommand and option, their defaults taken from the config
schema so that the command and the pipeline agree."""

from __future__ import annotations

import argparse
from pathlib import Path

from mzsr import __version__, settings
from mzsr.adaptation.adapt import ADAPT_DEFAULTS
from mzsr.adaptation.schedules import LR_SCHEDULES
from mzsr.degradation.degrade import GRIDS
from mzsr.degradation.kernels import KERNEL_CONVENTIONS
from mzsr.network.conv import GRADIENT_PRECISIONS

# The options' defaults are the config's (mzsr/config.schema.yaml), as the pipeline uses them.
SCALE, DEVICE = settings.default("scale"), settings.default("device")
ZSSR_ITERATIONS = settings.default("zssr.iterations")
KERNELGAN_ITERATIONS, KERNELGAN_SEED = settings.default("estimate.iterations"), settings.default("estimate.seed")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", type=int, default=SCALE, help=f"super-resolution scale factor (default {SCALE})")


ESTIMATE = "estimate"  # --degradation estimate: each image's kernel estimated first (--estimator)
KERNELGAN_SCALES = (2, 4)
ESTIMATORS = ("learned", "kernelgan")
# Not estimated by default: on soft photos an estimate that is too wide costs more than the fixed
# guess g2.0, on textured images the estimate wins (docs/results.md, "Blind SR"), so the user chooses.
NEEDS_DEGRADATION = (
    "{} needs the degradation: give --degradation (a known kernel, or 'estimate' to estimate each image's:"
    " best on textured images; on soft photos the fixed guess g2.0 does better)"
)
ESTIMATOR_ABOUT = (
    "the learned estimator (mzsr/estimation/: two small CNNs trained on DIV2KRK-style random kernels, well"
    " under a second per image) or, with --estimator kernelgan, KernelGAN (Bell-Kligler et al. 2019, after"
    f" the authors' release; {KERNELGAN_ITERATIONS:,} iterations by default; about 100 s per image on one"
    " CPU core, faster on a GPU)"
)
FORMATS = {
    "mzsr": "key 'kernel', MZSR's convention (centre of mass on the middle pixel), read as it is",
    "kernelgan": "key 'Kernel', exactly what KernelGAN's release writes (its kernel_shift: centre of mass half "
    "a pixel per axis further down/right); --degradation per-image and kernel files undo the shift",
}


def _convention_arg(p: argparse.ArgumentParser, making: bool = False) -> None:
    p.add_argument(
        "--kernel-convention",
        choices=KERNEL_CONVENTIONS,
        default="mzsr",
        help=("how to make the LR images" if making else "how the LR images were made (the image cannot tell:")
        + (": " if making else " the same blur, half a pixel apart): ")
        + "mzsr (default), the paper's test sets, the kernel centred on the correlation origin; kernelgan, "
        "as KernelGAN's and ZSSR's code (and DIV2KRK): the kernel's centre of mass moved to size//2 + 0.5 "
        "(scale - size mod 2). Direct subsampling only. A mismatch costs MZSR about 0.4 dB (docs/commands.md)",
    )


def _kernel_args(p: argparse.ArgumentParser, required: bool, estimate: bool = False) -> None:
    p.add_argument(
        "--degradation",
        required=required,
        help="named degradation (g0.2, g2.0, ani, gb1.3, bicubic), rk or rk<seed> (a random DIV2KRK-style "
        "kernel of its own for every image, drawn from the seed and the image's stem; degrade writes it to "
        "<out>/kernels/<stem>_kernel_x<scale>.mat), a kernel file (.mat with key 'kernel'/'Kernel', or .npy), "
        "or 'per-image': each image's <stem>_kernel_x<scale>.mat (KernelGAN) or the folder's kernel.mat"
        + (
            f"; or 'estimate': each image's kernel estimated first with {ESTIMATOR_ABOUT}, written to "
            "<out>/kernels/<stem>_kernel_x<scale>.mat (key 'kernel') and .png; direct subsampling unless --subsampling"
            if estimate
            else ""
        ),
    )
    p.add_argument(
        "--subsampling",
        choices=("direct", "bicubic"),
        help="subsampling for a kernel file" + (" or an estimated kernel" if estimate else "") + " (default direct)",
    )


def _estimate_args(p: argparse.ArgumentParser, upscale: bool) -> None:
    """The estimator's options, for estimate-kernel and upscale --degradation estimate (defaults: None, filled
    by `_estimate_settings`, so that upscale can tell them given without --degradation estimate)."""
    only = "with --degradation estimate: " if upscale else ""
    p.add_argument(
        "--estimator",
        choices=ESTIMATORS,
        help=f"{only}learned (default) or kernelgan; the options below are KernelGAN's",
    )
    p.add_argument(
        "--iterations", type=int, help=f"{only}KernelGAN's iterations (default {KERNELGAN_ITERATIONS}, as the release)"
    )
    p.add_argument(
        "--seed", type=int, help=f"{only}seed of KernelGAN's initialisation and crops (default {KERNELGAN_SEED})"
    )
    p.add_argument(
        "--real",
        action="store_true",
        default=None,
        help=f"{only}KernelGAN's real-image setting: use the whole image (default: shave 10 pixels off"
        " each edge first, as the release does for synthetic LR images)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mzsr", description="Meta-Transfer Learning for Zero-Shot Super-Resolution")
    parser.add_argument("--version", action="version", version=f"mzsr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("degrade", help="make LR images from HR images with a kernel, as the authors did")
    p.add_argument("inputs", nargs="+", help="HR image files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder for LR PNGs (same file stems)")
    _kernel_args(p, required=True)
    _convention_arg(p, making=True)
    _add_common(p)
    p.set_defaults(command="degrade")

    p = sub.add_parser("import-tf", help="convert the authors' TensorFlow-1 checkpoint to a weights file")
    p.add_argument("checkpoint", help="checkpoint prefix, e.g. .../Pretrained (without .index)")
    p.add_argument("out", type=Path, help="output weights file: .safetensors, or .pt/.pth (a plain-tensor torch file)")
    p.add_argument(
        "--subsampling",
        default="bicubic",
        choices=("bicubic", "direct"),
        help="subsampling the model was trained for (default bicubic: the authors' theta_T)",
    )
    _add_common(p)
    p.set_defaults(command="import-tf")

    p = sub.add_parser(
        "estimate-kernel",
        help="estimate each LR image's blur kernel (learned estimator, or KernelGAN)",
        description=f"Estimate each LR image's blur kernel with {ESTIMATOR_ABOUT}. Writes "
        "<out>/<stem>_kernel_x<scale>.mat and a picture of it, <out>/<stem>_kernel_x<scale>.png. "
        "Formats: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()) + ". With --out LR_DIR/kernels, "
        "'mzsr upscale LR_DIR --degradation per-image' finds the files.",
    )
    p.add_argument("inputs", nargs="+", help="LR image files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder for the kernel files and pictures")
    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        help="mzsr: key 'kernel', MZSR's convention; kernelgan: key 'Kernel', what KernelGAN's release "
        "writes (half-pixel shifted); default: that of --kernel-convention. --degradation per-image reads "
        "both right",
    )
    _convention_arg(p)
    _estimate_args(p, upscale=False)
    p.add_argument("--device", default=DEVICE, help=f"cpu, cuda, cuda:1 ... (default {DEVICE}: cuda when present)")
    p.add_argument(
        "--scale",
        type=int,
        default=SCALE,
        help="scale factor of the kernel: 2 or 4 (the analytic x4 kernel "
        f"of the x2 estimate, as the release); default {SCALE}",
    )
    p.set_defaults(command="estimate-kernel")

    p = sub.add_parser("upscale", help="super-resolve LR images (bicubic, or MZSR with n adaptation steps)")
    p.add_argument("inputs", nargs="+", help="LR image files or folders")
    p.add_argument("--out", required=True, type=Path, help="output folder for SR PNGs (same file stems)")
    p.add_argument(
        "--method",
        choices=("bicubic", "mzsr", "zssr"),
        default="mzsr",
        help="mzsr: adapt the given weights; zssr: train from scratch on each image; bicubic",
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="weights file (.safetensors) for --method mzsr; default: the released model for the kernel's"
        " subsampling and the scale (models/direct_x2.safetensors, ...)",
    )
    _kernel_args(p, required=False, estimate=True)
    _convention_arg(p)
    _estimate_args(p, upscale=True)
    p.add_argument("--steps", type=int, default=10, help="adaptation steps (0 = none; default 10)")
    p.add_argument(
        "--schedule",
        default=ADAPT_DEFAULTS["schedule"],
        choices=("auto", *LR_SCHEDULES),
        help=f"adaptation lr schedule (default {ADAPT_DEFAULTS['schedule']}); auto: the released one for the"
        " weights' subsampling and scale (direct_x2, bicubic_x2, direct_x4)",
    )
    p.add_argument(
        "--grid",
        choices=GRIDS,
        default=ADAPT_DEFAULTS["grid"],
        help="rows/columns that direct subsampling of the son keeps when the scale does not divide"
        " the size: release (round(linspace(0, n - s, ceil(n / s)))) or regular (0, s, 2s, ...); default"
        f" {ADAPT_DEFAULTS['grid']}",
    )
    p.add_argument(
        "--noise-level",
        type=float,
        default=float(ADAPT_DEFAULTS["noise_level"]),
        help="std of Gaussian noise added to the son (the release's noise_level, for real photos; default"
        f" {ADAPT_DEFAULTS['noise_level']:g})",
    )
    p.add_argument(
        "--preset",
        choices=("paper", "best"),
        default=ADAPT_DEFAULTS["preset"],
        help="paper: as published; best: add a self-ensemble over the flips/rotations the kernel allows,"
        f" and back-projection (default {ADAPT_DEFAULTS['preset']})",
    )
    p.add_argument(
        "--grad-precision",
        choices=GRADIENT_PRECISIONS,
        default=ADAPT_DEFAULTS["grad_precision"],
        help="precision of the adaptation on a CPU: bfloat16 runs the network's hidden layers in bfloat16"
        " (steps and inference), ~1.7x faster on CPUs with AVX512-BF16, more with AMX; it costs at most"
        " 0.02 dB of PSNR and 2 grey levels of the SR (Set14, photos; docs/results.md)"
        f" (default {ADAPT_DEFAULTS['grad_precision']})",
    )
    p.add_argument(
        "--zssr-iterations",
        type=int,
        default=ZSSR_ITERATIONS,
        help=f"iteration cap for --method zssr (default {ZSSR_ITERATIONS})",
    )
    p.add_argument("--device", default=DEVICE, help=f"cpu, cuda, cuda:1 ... (default {DEVICE}: cuda when present)")
    _add_common(p)
    p.set_defaults(command="upscale")

    p = sub.add_parser("evaluate", help="Y-channel PSNR/SSIM of SR images against ground truth (paper protocol)")
    p.add_argument("sr_dir", type=Path)
    p.add_argument("gt_dir", type=Path)
    p.add_argument("--csv", type=Path, help="write per-image rows and the mean to this CSV")
    _add_common(p)
    p.set_defaults(command="evaluate")
    return parser
