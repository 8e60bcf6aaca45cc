# Baseline: MATLAB-bicubic upscaling of the LR input.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import time

from mzsr.degradation.degrade import to_uint8
from mzsr.degradation.resize import imresize
from mzsr.evaluation.metrics import modcrop
from mzsr.files.images import read_image, read_image_uint8, write_png

scale = int(snakemake.params.scale)
lr = read_image(snakemake.input.lr_image)
start = time.perf_counter()
sr = to_uint8(imresize(lr, float(scale)))
seconds = time.perf_counter() - start
write_png(snakemake.output.sr, sr)
kernel, subsampling = _util.job_kernel(snakemake)  # the degradation's, for the re-degradation check
_util.write_rows(
    snakemake, "bicubic", [(0, sr, seconds)], modcrop(read_image_uint8(snakemake.input.gt), scale), kernel, subsampling
)
