# Stage 5b: blind kernels. The learned estimator or KernelGAN (estimate.method) on every LR test input
# (only when a method uses its estimate, mzsr_kgan or zssr_kgan): the kernel in MZSR's convention (.npy) and a record of the run (.json:
# iterations, seconds and, where the degradation has a true kernel, the estimate's error against it).


rule estimate_kernel:
    input:
        lr_image=LR_INPUT,
        kernel=kernel_file,
        estimator=estimator_weights,
    output:
        kernel=ESTIMATED_KERNEL,
        record=ESTIMATE_RECORD,
    params:
        scale=SCALE,
        degradation=lambda w: DEGRADATIONS[w.degradation],
        estimate=section(config["estimate"]),
    log:
        log_path("estimate_kernel", JOB),
    benchmark:
        benchmark_path("estimate_kernel", JOB)
    threads: threads_of("estimate_kernel")
    resources:
        **resources_of("estimate_kernel"),
    group:
        image_group("estimate_kernel")
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/estimate_kernel.py"
