import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Baseline: ZSSR trained from scratch on the test image (steps = its iterations).
import _util

from mzsr.images import read_image, read_image_uint8, write_png
from mzsr.kernels import resolve_degradation
from mzsr.metrics import modcrop
from mzsr.zssr import zssr

device = _util.torch_setup(snakemake)
scale = int(snakemake.params.scale)
cfg = dict(snakemake.params.zssr)
seed = cfg.pop("seed", 0)
deg = resolve_degradation(snakemake.params.degradation, image=snakemake.wildcards.image, scale=scale)
out = zssr(read_image(snakemake.input.lr), deg.kernel, scale, deg.method, cfg, device=device, seed=seed)
write_png(snakemake.output.sr, out.sr)
gt = modcrop(read_image_uint8(snakemake.input.gt), scale)
print(f"ZSSR stopped after {out.steps} of {cfg['iterations']} iterations", file=sys.stderr)
# steps = the configured iteration cap, so that every image of a setting shares one summary row
_util.write_rows(snakemake, "zssr", [(cfg["iterations"], out.sr, out.seconds)], gt)
