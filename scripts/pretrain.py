# Large-scale pre-training (theta_T), in this process or on compute.pretrain.processes ranks; resumes
# from the checkpoint in params.work_dir, where the training log also lives until it is copied to
# output.log_csv at the end.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

from pathlib import Path

from mzsr.facts import training_run_key
from mzsr.files.atomic import atomic_copy
from mzsr.training.state import bind_settings

work_dir = Path(snakemake.params.work_dir)
# a checkpoint made from another patch store (same settings, other images) is stale: set aside, not resumed
bind_settings(
    work_dir,
    {
        "stage": "pretrain",
        "config": training_run_key("pretrain", snakemake.params.pretrain),
        "inputs": _util.input_digests(patches=snakemake.input[0]),
    },
)
_util.train(
    snakemake,
    "pretrain",
    {
        "patch_store": snakemake.input[0],
        "out_weights": snakemake.output.weights,
        "cfg": dict(snakemake.params.pretrain),
        "work_dir": work_dir,
        "log_csv": work_dir / "log.csv",
    },
)
atomic_copy(work_dir / "log.csv", snakemake.output.log_csv)
