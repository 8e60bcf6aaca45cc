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
    threads: threads_of("train_images")
    resources:
        **resources_of("train_images"),
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
    threads: threads_of("skimage_test_image")
    resources:
        **resources_of("skimage_test_image"),
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
    threads: threads_of("test_set_archive")
    resources:
        **resources_of("test_set_archive"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/images.py"
