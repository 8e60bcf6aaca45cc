# Stage 0: images. Training HR images (DIV2K by default: streamed, resumable, verified, extracted
# safely, counted), and the test sets that are not plain folders on disk.


rule train_images:
    output:
        directory("resources/data/train"),
    params:
        data=section(config["data"]["train"]),
    log:
        log_path("train_images"),
    benchmark:
        benchmark_path("train_images")
    threads: threads_for("train_images")
    resources:
        mem_mb=compute("train_images", "mem_mb"),
        runtime=compute("train_images", "runtime"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/images.py"


rule skimage_test_image:
    output:
        "resources/test_sets/{test_set}/{image}.png",
    params:
        data=lambda w: {"source": f"skimage:{w.image}"},
    log:
        log_path("skimage_test_image", "{test_set}/{image}"),
    benchmark:
        benchmark_path("skimage_test_image", "{test_set}/{image}")
    threads: threads_for("skimage_test_image")
    resources:
        mem_mb=compute("skimage_test_image", "mem_mb"),
        runtime=compute("skimage_test_image", "runtime"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/images.py"


checkpoint test_set_archive:
    output:
        directory("resources/test_archives/{test_set}"),
    params:
        data=lambda w: {"source": config["test_sets"][w.test_set]},
    log:
        log_path("test_set_archive", "{test_set}"),
    benchmark:
        benchmark_path("test_set_archive", "{test_set}")
    threads: threads_for("test_set_archive")
    resources:
        mem_mb=compute("test_set_archive", "mem_mb"),
        runtime=compute("test_set_archive", "runtime"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/images.py"
