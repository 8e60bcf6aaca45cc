# Stage 3: large-scale pre-training on bicubic pairs -> theta_T; or, when pretrain.tf_checkpoint is
# set, the authors' released theta_T imported from TensorFlow in its place.


rule pretrain:
    input:
        "resources/patches/pretrain.h5",
    output:
        weights="resources/models/pretrained.safetensors",
        log_csv="results/training/pretrain_log.csv",
    params:
        pretrain=pretrain_cfg(),
        work_dir=pretrain_work_dir(),
    log:
        log_path("pretrain"),
    benchmark:
        benchmark_path("pretrain")
    threads: threads_of("pretrain")
    resources:
        **resources_of("pretrain"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/pretrain.py"


rule import_tf:
    input:
        tf_checkpoint_files(),
    output:
        "resources/models/pretrained_tf.safetensors",
    params:
        tf_checkpoint=config["pretrain"]["tf_checkpoint"],
        scale=SCALE,
    log:
        log_path("import_tf"),
    benchmark:
        benchmark_path("import_tf")
    threads: threads_of("import_tf")
    resources:
        **resources_of("import_tf"),
    conda:
        "../../envs/train.yaml"
    script:
        "../../scripts/import_tf.py"
