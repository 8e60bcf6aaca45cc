# One shard of meta-training task specifications: kernel parameters and D_tr/D_te patch rows.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

from mzsr.data.tasks import write_task_shard

cfg = snakemake.params.tasks
write_task_shard(
    snakemake.input[0],
    snakemake.output[0],
    shard_index=int(snakemake.wildcards.shard),
    tasks=cfg["tasks"],
    scale=cfg["scale"],
    n_support=cfg["n_support"],
    n_query=cfg["n_query"],
    seed=cfg["seed"],
)
