# Stage 6: one job per (test set, degradation, image, method). Each writes its SR image(s) and a
# CSV with columns test_set, degradation, method, steps, image, psnr, ssim, seconds.
# On a cluster they travel in group jobs, several images of one method per SLURM job (image_group,
# common.smk): LR inputs with the bicubic baseline, and each network method on its own.


rule sr_bicubic:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
    output:
        sr=sr_png("bicubic"),
        csv=job_csv("bicubic"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        convention=kernel_convention,
    log:
        log_path("sr_bicubic", JOB),
    benchmark:
        benchmark_path("sr_bicubic", JOB)
    threads: threads_of("sr_bicubic")
    resources:
        **resources_of("sr_bicubic"),
    group:
        image_group("sr_bicubic")
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_bicubic.py"


rule sr_pretrained:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
        kernel=kernel_file,
        weights=pretrained_weights(),
    output:
        sr=sr_png("pretrained"),
        csv=job_csv("pretrained"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        convention=kernel_convention,
        method="pretrained",
        steps=[0],
        adapt={},
    log:
        log_path("sr_pretrained", JOB),
    benchmark:
        benchmark_path("sr_pretrained", JOB)
    threads: threads_of("sr_pretrained")
    resources:
        **resources_of("sr_pretrained"),
    group:
        image_group("sr_pretrained")
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_mzsr.py"


rule sr_mzsr:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
        kernel=kernel_file,
        weights=meta_weights,
    output:
        sr=[sr_png("mzsr", n) for n in ADAPT_STEPS],
        csv=job_csv("mzsr"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        convention=kernel_convention,
        method="mzsr",
        steps=ADAPT_STEPS,
        adapt=section(config["adapt"]),
    log:
        log_path("sr_mzsr", JOB),
    benchmark:
        benchmark_path("sr_mzsr", JOB)
    threads: threads_of("sr_mzsr")
    resources:
        **resources_of("sr_mzsr"),
    group:
        image_group("sr_mzsr")
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_mzsr.py"


rule sr_zssr:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
        kernel=kernel_file,
    output:
        sr=sr_png("zssr"),
        csv=job_csv("zssr"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        convention=kernel_convention,
        zssr=section(config["zssr"]),
    log:
        log_path("sr_zssr", JOB),
    benchmark:
        benchmark_path("sr_zssr", JOB)
    threads: threads_of("sr_zssr")
    resources:
        **resources_of("sr_zssr"),
    group:
        image_group("sr_zssr")
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_zssr.py"


# Blind: the same methods with the kernel estimated from the LR input (rule estimate_kernel) in place
# of the true one, which they never see (the `degradation` param they keep names their test input
# only). An estimated kernel is one blur followed by direct subsampling (KernelGAN's generator, the
# learned estimator's training), so it stands for the whole x2 downscaling (a bicubic degradation's
# antialiasing included): the blind methods always use direct subsampling, and MZSR the Direct model.


use rule sr_mzsr as sr_mzsr_kgan with:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
        estimated=ESTIMATED_KERNEL,
        weights=lambda w: meta_model("direct"),
    output:
        sr=[sr_png("mzsr_kgan", n) for n in ADAPT_STEPS],
        csv=job_csv("mzsr_kgan"),
    params:
        method="mzsr_kgan",
        subsampling="direct",
        convention=kernel_convention,
    log:
        log_path("sr_mzsr_kgan", JOB),
    benchmark:
        benchmark_path("sr_mzsr_kgan", JOB)
    threads: threads_of("sr_mzsr_kgan")
    resources:
        **resources_of("sr_mzsr_kgan"),
    group:
        image_group("sr_mzsr_kgan")


use rule sr_zssr as sr_zssr_kgan with:
    input:
        gt=gt_image,
        lr_image=LR_INPUT,
        estimated=ESTIMATED_KERNEL,
    output:
        sr=sr_png("zssr_kgan"),
        csv=job_csv("zssr_kgan"),
    params:
        subsampling="direct",
        convention=kernel_convention,
    log:
        log_path("sr_zssr_kgan", JOB),
    benchmark:
        benchmark_path("sr_zssr_kgan", JOB)
    threads: threads_of("sr_zssr_kgan")
    resources:
        **resources_of("sr_zssr_kgan"),
    group:
        image_group("sr_zssr_kgan")
