import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Meta-transfer learning (theta_M) from theta_T over the task shards, whose HR patches are rows of the
# meta patch store; resumes from the checkpoint in params.work_dir, where the training log also lives
# until it is copied to output.log_csv.
import shutil
from pathlib import Path

import _util

from mzsr.meta import meta_train

device = _util.torch_setup(snakemake)
work_dir = Path(snakemake.params.work_dir)
meta_train(
    snakemake.input.weights,
    list(snakemake.input.shards),
    snakemake.input.patches,
    snakemake.output.weights,
    dict(snakemake.params.meta),
    work_dir=work_dir,
    log_csv=work_dir / "log.csv",
    device=device,
)
shutil.copyfile(work_dir / "log.csv", snakemake.output.log_csv)
