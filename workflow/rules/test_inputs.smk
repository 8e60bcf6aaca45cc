# Stage 5: test inputs. For every test set, degradation and image: the LR image made from the
# mod-cropped ground truth with that degradation, as the authors made theirs.


rule lr_image:
    input:
        gt=gt_image,
        kernel=kernel_file,
    output:
        "resources/test_inputs/{test_set}/{degradation}/{image}.png",
    params:
        degradation=lambda w: DEGRADATIONS[w.degradation],
        scale=SCALE,
    log:
        log_path("lr_image", JOB),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/lr_image.py"
