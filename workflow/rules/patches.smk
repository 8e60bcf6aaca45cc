# Stage 1: HR patches of the training images in HDF5 stores (uint8, chunked, compressed, with
# provenance attributes): {kind} = pretrain (96x96 in the paper) or meta (64x64).


rule patches:
    input:
        "resources/data/train",
    output:
        "resources/patches/{kind}.h5",
    params:
        patches=lambda w: section(config["patches"][w.kind]),
        # pre-training pairs each HR patch with the uint8 LR patch of its image's bicubic downscale
        lr_scale=lambda w: SCALE if w.kind == "pretrain" else None,
    log:
        log_path("patches", "{kind}"),
    benchmark:
        benchmark_path("patches", "{kind}")
    threads: threads_of("patches")
    resources:
        **resources_of("patches"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/patches.py"
