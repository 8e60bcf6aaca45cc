# A trained model on one test image: MZSR adapted for each configured step count (the SR after
# params.steps[i] steps goes to output.sr[i]), or the pre-trained model as it is (0 steps).
# With input `estimated` (mzsr_kgan) it adapts with KernelGAN's kernel instead of the true one.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import sys
from dataclasses import replace

from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.schedules import resolve_schedule, weights_subsampling
from mzsr.evaluation.metrics import modcrop
from mzsr.files.checkpoints import load_model
from mzsr.files.images import read_image, read_image_uint8, write_png

device = _util.torch_setup(snakemake)
scale = int(snakemake.params.scale)
# the adapt section (none for the pre-trained model as it is), for the step counts the outputs name
options = AdaptOptions.from_config({**snakemake.params.adapt, "steps": snakemake.params.steps})
kernel, subsampling = _util.job_kernel(snakemake)  # resolved once: for adaptation and the re-degradation check
model, weights_meta = load_model(snakemake.input.weights, expected_scale=scale, device=device)
gt = modcrop(read_image_uint8(snakemake.input.gt), scale)
if max(options.steps) > 0:  # each degradation adapts with its model's schedule (the weights' subsampling)
    schedule = resolve_schedule(options.schedule, weights_subsampling(weights_meta, subsampling), scale)
    options = replace(options, schedule=schedule)
    print(f"schedule {schedule}, grid {options.grid}, preset {options.preset}", file=sys.stderr)
# at the mod-cropped ground truth's size, as the release's test.py
lr = read_image(snakemake.input.lr_image)
outputs = adapt(model, lr, kernel, scale, subsampling, options, device, gt.shape[:2], snakemake.params.convention)
paths = [snakemake.output.sr] if isinstance(snakemake.output.sr, str) else list(snakemake.output.sr)
by_steps = {o.steps: o for o in outputs}
for steps, path in zip(snakemake.params.steps, paths, strict=True):
    write_png(path, by_steps[steps].sr)
_util.write_rows(
    snakemake, snakemake.params.method, [(o.steps, o.sr, o.seconds) for o in outputs], gt, kernel, subsampling
)
