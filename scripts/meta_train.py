# Meta-transfer learning (theta_M) from theta_T over the task shards, whose HR patches are rows of the
# meta patch store, in this process or on compute.meta_train.processes ranks; resumes from the
# checkpoint in params.work_dir, where the training log also lives until it is copied to output.log_csv.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

from pathlib import Path

from mzsr.facts import training_run_key
from mzsr.files.atomic import atomic_copy
from mzsr.training.state import bind_settings

work_dir = Path(snakemake.params.work_dir)
# a checkpoint made from another theta_T, patch store or shards is stale: set aside, not resumed
bind_settings(
    work_dir,
    {
        "stage": "meta",
        "config": training_run_key("meta", snakemake.params.meta),
        "inputs": _util.input_digests(snakemake.input.weights, snakemake.input.patches, list(snakemake.input.shards)),
    },
)
_util.train(
    snakemake,
    "meta",
    {
        "init_weights": snakemake.input.weights,
        "shard_paths": list(snakemake.input.shards),
        "patch_store": snakemake.input.patches,
        "out_weights": snakemake.output.weights,
        "cfg": dict(snakemake.params.meta),
        "work_dir": work_dir,
        "log_csv": work_dir / "log.csv",
    },
)
atomic_copy(work_dir / "log.csv", snakemake.output.log_csv)
