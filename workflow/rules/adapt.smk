# Stage 6: one job per (test set, degradation, image, method). Each writes its SR image(s) and a
# CSV with columns test_set, degradation, method, steps, image, psnr, ssim, seconds.
# On a cluster they travel in group jobs, several images of one method per SLURM job (image_group,
# common.smk): LR inputs with the bicubic baseline, and each network method on its own.


rule sr_bicubic:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
    output:
        sr=sr_png("bicubic"),
        csv=job_csv("bicubic"),
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
    log:
        log_path("sr_bicubic", JOB),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_bicubic.py"


rule sr_pretrained:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
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
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_mzsr.py"


rule sr_mzsr:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
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
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_mzsr.py"


rule sr_zssr:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
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
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_zssr.py"


# Blind: the same methods with the kernel that KernelGAN estimated from the LR input (rule
# estimate_kernel); they never see the true kernel. KernelGAN's generator is one blur followed by
# direct subsampling, so its kernel is the whole x2 downscaling (a bicubic degradation's antialiasing
# included): the blind methods always use direct subsampling, and MZSR the Direct model.


rule sr_mzsr_kgan:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
        estimated=ESTIMATED_KERNEL,
        weights=lambda w: meta_model("direct"),
    output:
        sr=[sr_png("mzsr_kgan", n) for n in ADAPT_STEPS],
        csv=job_csv("mzsr_kgan"),
    params:
        scale=SCALE,
        subsampling="direct",
        method="mzsr_kgan",
        adapt=section(config["adapt"]),
    log:
        log_path("sr_mzsr_kgan", JOB),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_mzsr.py"


rule sr_zssr_kgan:
    input:
        gt=gt_image,
        lr_image="resources/test_inputs/{test_set}/{degradation}/{image}.png",
        estimated=ESTIMATED_KERNEL,
    output:
        sr=sr_png("zssr_kgan"),
        csv=job_csv("zssr_kgan"),
    params:
        scale=SCALE,
        subsampling="direct",
        zssr=section(config["zssr"]),
    log:
        log_path("sr_zssr_kgan", JOB),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/sr_zssr.py"
