import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Large-scale pre-training (theta_T); resumes from the checkpoint in params.work_dir, where the
# training log also lives until it is copied to output.log_csv at the end.
import shutil
from pathlib import Path

import _util

from mzsr.pretrain import pretrain

device = _util.torch_setup(snakemake)
work_dir = Path(snakemake.params.work_dir)
pretrain(
    snakemake.input[0],
    snakemake.output.weights,
    dict(snakemake.params.pretrain),
    work_dir=work_dir,
    log_csv=work_dir / "log.csv",
    device=device,
)
shutil.copyfile(work_dir / "log.csv", snakemake.output.log_csv)
