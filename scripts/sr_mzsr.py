# A trained model on one test image: MZSR adapted for each configured step count (the SR after
# step n goes to output.sr[i] for the i-th smallest n), or the pre-trained model as it is (0 steps).
# With input `estimated` (mzsr_kgan) it adapts with KernelGAN's kernel instead of the true one.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import sys

from mzsr.adapt import ADAPT_DEFAULTS, adapt, resolve_schedule, weights_subsampling
from mzsr.checkpoints import load_model
from mzsr.images import read_image, read_image_uint8, write_png
from mzsr.metrics import modcrop

device = _util.torch_setup(snakemake)
scale = int(snakemake.params.scale)
cfg = {**ADAPT_DEFAULTS, **snakemake.params.adapt}  # (the workflow passes the whole section)
kernel, subsampling = _util.job_kernel(snakemake)  # resolved once: for adaptation and the re-degradation check
model, weights_meta = load_model(snakemake.input.weights, expected_scale=scale, device=device)
gt = modcrop(read_image_uint8(snakemake.input.gt), scale)
steps = sorted(cfg["steps"])
schedule = cfg["schedule"]
if max(steps) > 0:  # each degradation adapts with its model's schedule (the weights' subsampling)
    schedule = resolve_schedule(schedule, weights_subsampling(weights_meta, subsampling), scale)
    print(f"schedule {schedule}, grid {cfg['grid']}, preset {cfg['preset']}", file=sys.stderr)
outputs = adapt(
    model,
    read_image(snakemake.input.lr_image),
    kernel,
    scale,
    subsampling,
    step_counts=steps,
    schedule=schedule,
    device=device,
    preset=cfg["preset"],
    grid=cfg["grid"],
    noise_level=float(cfg["noise_level"]),
    output_shape=gt.shape[:2],  # the mod-cropped ground truth's size, as the release's test.py
)
paths = [snakemake.output.sr] if isinstance(snakemake.output.sr, str) else list(snakemake.output.sr)
for out, path in zip(outputs, paths, strict=True):
    write_png(path, out.sr)
_util.write_rows(snakemake, snakemake.params.method, [(o.steps, o.sr, o.seconds) for o in outputs], gt, kernel, subsampling)
