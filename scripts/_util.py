"""What every rule script shares: the import path of mzsr, torch's thread count, the device, the
per-job CSV. Scripts run through Snakemake's `script:` directive, which puts this folder on sys.path."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # The workflow runs the mzsr next to it, installed or not (conda envs of --sdm conda hold only
    # the dependencies), so that rules and science always come from the same checkout.
    sys.path.insert(0, str(REPO))


def _one_line_errors(exc_type, exc, tb):
    """An MZSRError (bad input, diverged training, ...) ends the job with the same one line as the
    `mzsr` command, in the job's log and on Snakemake's console; anything else keeps its traceback."""
    from mzsr import MZSRError, error_line

    if not issubclass(exc_type, MZSRError):
        return sys.__excepthook__(exc_type, exc, tb)
    for stream in dict.fromkeys((sys.stderr, sys.__stderr__)):  # the log (scripts redirect stderr) and the console
        if stream is not None:
            print(error_line(exc), file=stream, flush=True)


sys.excepthook = _one_line_errors


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    """Warnings (a kernel normalised, a checkpoint set aside, a retry with smaller tiles) as one line."""
    print(f"mzsr: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file, flush=True)


import warnings  # noqa: E402

warnings.showwarning = _one_line_warnings


def input_digests(weights=None, patches=None, shards=()):
    """The digests of a training run's inputs, for `mzsr.training.bind_settings`: the patch store's and
    shards' recorded content digests, the initial weights' SHA-256."""
    import hashlib

    from mzsr.data import open_store

    out = {}
    if weights is not None:
        out["weights"] = "sha256:" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    if patches is not None:
        with open_store(patches) as f:
            out["patches"] = str(f.attrs.get("digest", "none"))
    out["shards"] = []
    for shard in shards:
        with open_store(shard) as f:
            out["shards"].append(str(f.attrs.get("digest", "none")))
    return out


CSV_COLUMNS = ("test_set", "degradation", "method", "steps", "image", "psnr", "ssim", "seconds", "redegradation_psnr")


def torch_setup(snakemake):
    """Limit torch to the job's threads and return the configured device."""
    import torch

    from mzsr.adapt import pick_device

    threads = max(1, int(snakemake.threads))
    torch.set_num_threads(threads)
    device = pick_device(snakemake.config.get("device", "auto"))
    print(f"device {device}, {threads} thread(s)", file=sys.stderr)
    return device


def job_kernel(snakemake):
    """(kernel, subsampling) of an SR job: KernelGAN's estimate (input `estimated`, MZSR's convention)
    with direct subsampling (param `subsample`) for the blind methods, else the
    degradation's own (the image's own kernel for rk; None for plain bicubic)."""
    if "estimated" in snakemake.input.keys():
        from mzsr.kernels import load_kernel_file

        return load_kernel_file(snakemake.input.estimated), snakemake.params.subsample
    from mzsr.kernels import resolve_degradation

    deg = resolve_degradation(snakemake.params.degradation, image=snakemake.wildcards.image, scale=int(snakemake.params.scale))
    return deg.kernel, deg.method


def write_rows(snakemake, method, results, gt_u8, kernel, subsample):
    """Score SR results [(steps, sr_uint8, seconds)] against the mod-cropped GT; write the job CSV.

    `redegradation_psnr` degrades each SR result again with `kernel` and `subsample` (the ones the
    job used: the degradation's, or KernelGAN's estimate for the blind methods) and compares it with
    the LR input: a wrong or misaligned kernel shows up there even without ground truth.
    """
    import pandas as pd

    from mzsr.images import read_image_uint8
    from mzsr.io import atomic_write_text
    from mzsr.metrics import psnr, redegradation_psnr, ssim

    scale = int(snakemake.params.scale)
    lr_u8 = read_image_uint8(snakemake.input.lr)
    rows = [
        {
            "test_set": snakemake.wildcards.test_set,
            "degradation": snakemake.wildcards.degradation,
            "method": method,
            "steps": int(steps),
            "image": snakemake.wildcards.image,
            "psnr": psnr(sr, gt_u8, scale),
            "ssim": ssim(sr, gt_u8, scale),
            "seconds": float(seconds),
            "redegradation_psnr": redegradation_psnr(sr, lr_u8, kernel, scale, subsample),
        }
        for steps, sr, seconds in results
    ]
    atomic_write_text(snakemake.output.csv, pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(index=False))
