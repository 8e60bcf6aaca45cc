# Stage 5: test inputs. For every test set, degradation and image: the LR image made from the
# mod-cropped ground truth with that degradation, as the authors made theirs.


rule lr_image:
    input:
        gt=gt_image,
        kernel=kernel_file,
    output:
        LR_INPUT,
    params:
        degradation=lambda w: DEGRADATIONS[w.degradation],
        convention=kernel_convention,
        scale=SCALE,
    log:
        log_path("lr_image", JOB),
    benchmark:
        benchmark_path("lr_image", JOB)
    threads: threads_of("lr_image")
    resources:
        **resources_of("lr_image"),
    group:
        image_group("lr_image")
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/lr_image.py"
