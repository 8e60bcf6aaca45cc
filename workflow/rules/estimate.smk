# Stage 5b: blind kernels. The learned estimator or KernelGAN (estimate.method) on every LR test input
# (only when a method uses its estimate, mzsr_kgan or zssr_kgan): the kernel in MZSR's convention (.npy) and a record of the run (.json:
# iterations, seconds and, where the degradation has a true kernel, the estimate's error against it).


# The learned estimator on a CPU, KernelGAN on a GPU: one rule or the other (facts.ESTIMATE_RULES), both
# with compute.estimate_kernel.
ESTIMATE_RULE = facts.ESTIMATE_RULES[config["estimate"]["method"]]


rule:
    name:
        ESTIMATE_RULE
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
        log_path(ESTIMATE_RULE, JOB),
    benchmark:
        benchmark_path(ESTIMATE_RULE, JOB)
    threads: threads_of(ESTIMATE_RULE)
    resources:
        **resources_of(ESTIMATE_RULE),
    group:
        image_group(ESTIMATE_RULE)
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/estimate_kernel.py"
