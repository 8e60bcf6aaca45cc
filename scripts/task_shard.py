import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# One shard of meta-training tasks: kernels, D_tr/D_te patch indices and synthesized LR patches.
import _util

from mzsr.data import write_task_shard

cfg = snakemake.params.tasks
write_task_shard(
    snakemake.input[0],
    snakemake.output[0],
    shard_index=int(snakemake.wildcards.shard),
    tasks=cfg["tasks_per_shard"],
    scale=cfg["scale"],
    method=cfg["method"],
    patch_size=cfg["patch_size"],
    n_support=cfg["n_support"],
    n_query=cfg["n_query"],
    seed=cfg["seed"],
)
