# Stage 6: one job per (test set, degradation, image, method). Each writes its SR image(s) and a
# CSV with columns test_set, degradation, method, steps, image, psnr, ssim, seconds.
# On a cluster they travel in group jobs, several images of one method per SLURM job (image_group,
# common.smk): LR inputs with the bicubic baseline, and each network method on its own.


rule sr_bicubic:
    input:
        gt=gt_image,
        lr="resources/test_inputs/{test_set}/{degradation}/{image}.png",
    output:
        sr=sr_png("bicubic"),
        csv=job_csv("bicubic"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
    log:
        log_path("sr_bicubic", JOB),
    benchmark:
        benchmark_path("sr_bicubic", JOB)
    threads: threads_for("sr_bicubic")
    group: image_group("inputs")
    resources:
        mem_mb=compute("sr_bicubic", "mem_mb"),
        runtime=compute("sr_bicubic", "runtime"),
        image_jobs=1,
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_bicubic.py"


rule sr_pretrained:
    input:
        gt=gt_image,
        lr="resources/test_inputs/{test_set}/{degradation}/{image}.png",
        kernel=kernel_file,
        weights=pretrained_weights(),
    output:
        sr=sr_png("pretrained"),
        csv=job_csv("pretrained"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        method="pretrained",
        adapt={"steps": [0]},
    log:
        log_path("sr_pretrained", JOB),
    benchmark:
        benchmark_path("sr_pretrained", JOB)
    threads: threads_for("sr_pretrained")
    group: image_group("sr_pretrained")
    resources:
        mem_mb=compute("sr_pretrained", "mem_mb"),
        runtime=compute("sr_pretrained", "runtime"),
        image_jobs=1,
        gpu=compute("sr_pretrained", "gpu"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_adapt.py"


rule sr_mzsr:
    input:
        gt=gt_image,
        lr="resources/test_inputs/{test_set}/{degradation}/{image}.png",
        kernel=kernel_file,
        weights=meta_weights,
    output:
        sr=[sr_png("mzsr", n) for n in ADAPT_STEPS],
        csv=job_csv("mzsr"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        method="mzsr",
        adapt=section(config["adapt"]),
    log:
        log_path("sr_mzsr", JOB),
    benchmark:
        benchmark_path("sr_mzsr", JOB)
    threads: threads_for("sr_mzsr")
    group: image_group("sr_mzsr")
    resources:
        mem_mb=compute("sr_mzsr", "mem_mb"),
        runtime=compute("sr_mzsr", "runtime"),
        image_jobs=1,
        gpu=compute("sr_mzsr", "gpu"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_adapt.py"


rule sr_zssr:
    input:
        gt=gt_image,
        lr="resources/test_inputs/{test_set}/{degradation}/{image}.png",
        kernel=kernel_file,
    output:
        sr=sr_png("zssr"),
        csv=job_csv("zssr"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        zssr=section(config["zssr"]),
    log:
        log_path("sr_zssr", JOB),
    benchmark:
        benchmark_path("sr_zssr", JOB)
    threads: threads_for("sr_zssr")
    group: image_group("sr_zssr")
    resources:
        mem_mb=compute("sr_zssr", "mem_mb"),
        runtime=compute("sr_zssr", "runtime"),
        image_jobs=1,
        gpu=compute("sr_zssr", "gpu"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_zssr.py"
