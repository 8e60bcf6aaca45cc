# The kernel of one LR test input, by the learned estimator or KernelGAN (config estimate.method): the
# kernel in MZSR's convention (.npy, for mzsr_kgan and zssr_kgan) and a record (.json): the method,
# KernelGAN's iterations, seconds and, where the degradation has a true kernel (a named one,
# a kernel file, rk's kernel of this image), the estimate's error against it, with that kernel for
# the report (plain bicubic has none: null).
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import io
import json
import sys

import numpy as np

from mzsr.degradation.resolve import resolve_degradation
from mzsr.estimation.estimate import estimate_kernel, kernel_error
from mzsr.files.atomic import atomic_write_bytes, atomic_write_text
from mzsr.files.images import read_image
from mzsr.settings import default

device = _util.torch_setup(snakemake)
scale = int(snakemake.params.scale)
cfg = dict(snakemake.params.estimate)
seed = int(cfg.pop("seed", default("estimate.seed")))
w = snakemake.wildcards
estimator = getattr(snakemake.input, "estimator", [])  # the learned estimator's weights (none for KernelGAN)
estimator = [estimator] if isinstance(estimator, str) else list(estimator)
est = estimate_kernel(
    read_image(snakemake.input.lr_image),
    scale,
    cfg,
    device=device,
    seed=seed,
    source=snakemake.input.lr_image,
    weights=estimator[0] if estimator else None,
)
truth = resolve_degradation(snakemake.params.degradation, image=w.image, scale=scale).kernel
error = None if truth is None else kernel_error(est.kernel, truth)
print(
    f"{est.method}: {est.iterations} iterations in {est.seconds:.1f} s, kernel {est.kernel.shape[0]}x{est.kernel.shape[1]}, "
    f"error {'n/a (no true kernel)' if error is None else f'{error:.5f}'}",
    file=sys.stderr,
)
buffer = io.BytesIO()
np.save(buffer, est.kernel, allow_pickle=False)
atomic_write_bytes(snakemake.output.kernel, buffer.getvalue())
record = {
    "test_set": w.test_set,
    "degradation": w.degradation,
    "image": w.image,
    "scale": est.scale,
    "method": est.method,
    "iterations": est.iterations,
    "seconds": est.seconds,
    "kernel_error": error,
    "true_kernel": None if truth is None else np.asarray(truth, dtype=float).tolist(),
}
atomic_write_text(snakemake.output.record, json.dumps(record, indent=1) + "\n")
