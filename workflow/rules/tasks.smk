# Stage 2: the meta-training task pool, one shard per job: each task is one training kernel, its
# D_tr/D_te patch indices and their synthesized LR patches; every shard has its own seed.
# {subsample}: direct or bicubic subsampling, one pool per meta-trained model.


rule task_shard:
    input:
        "resources/patches/meta.h5",
    output:
        "resources/tasks/{subsample}/shard={shard}.h5",
    params:
        tasks=lambda w: tasks_cfg(w.subsample),
    log:
        log_path("task_shard", "{subsample}/shard={shard}"),
    benchmark:
        benchmark_path("task_shard", "{subsample}/shard={shard}")
    threads: threads_for("task_shard")
    resources:
        mem_mb=compute("task_shard", "mem_mb"),
        runtime=compute("task_shard", "runtime"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/task_shard.py"
