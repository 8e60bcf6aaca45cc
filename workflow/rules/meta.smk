# Stage 4: meta-transfer learning (MAML over the kernel tasks) from theta_T -> theta_M, one model per
# subsampling that the test degradations use (the paper's "Direct" and "Bicubic" models); the tasks'
# HR patches come from the meta patch store, their LR inputs are made on the training device.


rule meta_train:
    input:
        weights=pretrained_weights(),
        shards=shard_paths(),
        patches="resources/patches/meta.h5",
    output:
        weights="resources/models/meta_{subsampling}.safetensors",
        log_csv="results/training/meta_{subsampling}_log.csv",
    params:
        meta=lambda w: meta_cfg(w.subsampling),
        work_dir=lambda w: meta_work_dir(w.subsampling),
    log:
        log_path("meta_train", "{subsampling}"),
    benchmark:
        benchmark_path("meta_train", "{subsampling}")
    threads: threads_of("meta_train")
    resources:
        **resources_of("meta_train"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/meta_train.py"
