# The LR test input: the mod-cropped ground truth degraded as the authors made theirs.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

from mzsr.degradation.degrade import write_lr_png
from mzsr.degradation.kernels import validate_kernel
from mzsr.degradation.resolve import resolve_degradation
from mzsr.evaluation.metrics import modcrop
from mzsr.files.images import read_image_uint8

scale = int(snakemake.params.scale)
deg = resolve_degradation(
    snakemake.params.degradation, image=snakemake.wildcards.image, scale=scale, convention=snakemake.params.convention
)
hr = modcrop(read_image_uint8(snakemake.input.gt), scale)
if deg.kernel is not None:
    validate_kernel(deg.kernel, snakemake.params.degradation, hr.shape[:2], image=snakemake.input.gt)
write_lr_png(hr / 255.0, deg.kernel, scale, deg.subsampling, snakemake.output[0])
