# Stage 2: the meta-training task specifications, one shard per job, each with its own seed: per
# task one training kernel (l1, l2, theta) and the rows of its D_tr/D_te patches in the meta patch
# store. Nothing is synthesised here: meta-training makes the LR inputs on its device, so one set of
# shards serves both subsamplings (direct and bicubic models), and there are as many tasks as the
# run uses (task_count()).


rule task_shard:
    input:
        "resources/patches/meta.h5",
    output:
        "resources/tasks/shard={shard}.h5",
    params:
        tasks=lambda w: tasks_cfg(int(w.shard)),
    log:
        log_path("task_shard", "shard={shard}"),
    benchmark:
        benchmark_path("task_shard", "shard={shard}")
    threads: threads_of("task_shard")
    resources:
        **resources_of("task_shard"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/task_shard.py"
