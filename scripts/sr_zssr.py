# Baseline: ZSSR trained from scratch on the test image (steps = its iterations), with the
# degradation's kernel (zssr) or, with input `estimated`, the estimated one (zssr_kgan).
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import sys

from mzsr.adaptation.zssr import zssr
from mzsr.evaluation.metrics import modcrop
from mzsr.files.images import read_image, read_image_uint8, write_png
from mzsr.settings import default

device = _util.torch_setup(snakemake)
scale = int(snakemake.params.scale)
cfg = dict(snakemake.params.zssr)
seed = int(cfg.pop("seed", default("zssr.seed")))
method = "zssr_kgan" if "estimated" in snakemake.input.keys() else "zssr"
kernel, subsampling = _util.job_kernel(snakemake)  # resolved once: for training and the re-degradation check
out = zssr(read_image(snakemake.input.lr_image), kernel, scale, subsampling, cfg, device=device, seed=seed)
write_png(snakemake.output.sr, out.sr)
gt = modcrop(read_image_uint8(snakemake.input.gt), scale)
print(f"ZSSR stopped after {out.steps} of {cfg['iterations']} iterations", file=sys.stderr)
# steps = the configured iteration cap, so that every image of a setting shares one summary row
_util.write_rows(snakemake, method, [(cfg["iterations"], out.sr, out.seconds)], gt, kernel, subsampling)
