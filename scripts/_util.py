"""What every rule script shares: its set-up (`start`), torch's thread count and the device, the
inputs' digests, the SR job's kernel and its CSV. Scripts run through Snakemake's `script:`
directive, which puts this folder on sys.path."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start(snakemake):
    """Set up a rule script, first thing: stderr to the job's log (so that import errors land there),
    the mzsr of this checkout importable, MZSRErrors and warnings as one line."""
    sys.stderr = open(snakemake.log[0], "w", buffering=1)
    if str(REPO) not in sys.path:
        # The workflow runs the mzsr next to it, installed or not (conda envs of --sdm conda hold only
        # the dependencies), so that rules and science always come from the same checkout.
        sys.path.insert(0, str(REPO))
    sys.excepthook = _one_line_errors
    # the format, not warnings.showwarning: a caller recording warnings (pytest.warns) still gets them
    warnings.formatwarning = _one_line_warning


def _one_line_errors(exc_type, exc, tb):
    """An MZSRError (bad input, diverged training, ...) ends the job with the same one line as the
    `mzsr` command, in the job's log and on Snakemake's console; anything else keeps its traceback."""
    from mzsr import MZSRError, error_line

    if not issubclass(exc_type, MZSRError):
        return sys.__excepthook__(exc_type, exc, tb)
    for stream in dict.fromkeys((sys.stderr, sys.__stderr__)):  # the log and the console
        if stream is not None:
            print(error_line(exc), file=stream, flush=True)


def _one_line_warning(message, category, filename, lineno, line=None):
    """Warnings (a kernel normalised, a checkpoint set aside, a retry with smaller tiles) as one line."""
    return f"mzsr: warning: {' '.join(str(message).split())}\n"


def input_digests(weights=None, patches=None, shards=()):
    """The digests of a training run's inputs, for `mzsr.training.state.bind_settings`: the patch store's and
    shards' recorded content digests, the initial weights' SHA-256."""
    import hashlib

    from mzsr.data.stores import open_store

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


def torch_setup(snakemake):
    """Limit torch to the job's threads and return the configured device."""
    import torch

    from mzsr.device import pick_device

    threads = max(1, int(snakemake.threads))
    torch.set_num_threads(threads)
    device = pick_device(snakemake.config.get("device", "auto"))
    print(f"device {device}, {threads} thread(s)", file=sys.stderr)
    return device


def train(snakemake, stage: str, arguments: dict) -> None:
    """Run training `stage` ("pretrain" or "meta": mzsr.training's pretrain or meta_train with
    `arguments`) in this process, or on compute.<rule>.processes ranks (mzsr.training.launch).
    Processes and the device are read from the config, not params, so that changing them reruns nothing."""
    rule = "pretrain" if stage == "pretrain" else "meta_train"
    compute = snakemake.config["compute"]
    own = compute.get(rule) or {}
    processes, nodes = own.get("processes", 1), own.get("nodes", 1)
    if processes == 1:
        if stage == "pretrain":
            from mzsr.training.pretrain import pretrain as run
        else:
            from mzsr.training.meta import meta_train as run
        run(**arguments, device=torch_setup(snakemake))
        return
    from mzsr.training.launch import launch

    threads = own.get("threads", compute["default"]["threads"])
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()}
    device = snakemake.config.get("device", "auto")
    launch(stage, plain, device, processes, nodes, threads, arguments["work_dir"])


def job_kernel(snakemake):
    """(kernel, subsampling) of an SR job: KernelGAN's estimate (input `estimated`, MZSR's convention)
    with direct subsampling (param `subsampling`) for the blind methods, else the
    degradation's own (the image's own kernel for rk; None for plain bicubic); either placed in the
    test set's kernel convention (param `convention`), as its LR images were made."""
    convention = snakemake.params.convention  # the test set's (kernel_conventions)
    if "estimated" in snakemake.input.keys():
        from mzsr.degradation.kernels import in_convention
        from mzsr.degradation.resolve import load_kernel_file

        subsampling = snakemake.params.subsampling
        kernel = load_kernel_file(snakemake.input.estimated)
        return in_convention(kernel, convention, int(snakemake.config["scale"]), subsampling), subsampling
    from mzsr.degradation.resolve import resolve_degradation

    deg = resolve_degradation(
        snakemake.params.degradation,
        image=snakemake.wildcards.image,
        scale=int(snakemake.params.scale),
        convention=convention,
    )
    return deg.kernel, deg.subsampling


def write_rows(snakemake, method, results, gt_u8, kernel, subsampling):
    """The job CSV of SR results [(steps, sr_uint8, seconds)]: `mzsr.evaluation.tables.score_rows` against the
    mod-cropped GT and the job's LR input, with the `kernel` and `subsampling` the job used."""
    import pandas as pd

    from mzsr.evaluation.tables import JOB_COLUMNS, score_rows
    from mzsr.files.atomic import atomic_write_text
    from mzsr.files.images import read_image_uint8

    w = snakemake.wildcards
    rows = score_rows(
        results,
        gt_u8,
        read_image_uint8(snakemake.input.lr_image),
        kernel,
        int(snakemake.params.scale),
        subsampling,
        test_set=w.test_set,
        degradation=w.degradation,
        method=method,
        image=w.image,
    )
    atomic_write_text(snakemake.output.csv, pd.DataFrame(rows, columns=JOB_COLUMNS).to_csv(index=False))
