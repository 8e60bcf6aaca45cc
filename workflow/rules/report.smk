# Stage 8: figures for `snakemake --report`: PSNR against adaptation steps, and for every test image
# a side-by-side crop (GT, bicubic, MZSR after each step count, ZSSR, the KernelGAN methods and
# kernels) with its numbers.


rule plot_steps:
    input:
        "results/metrics/summary.csv",
    output:
        report(
            "results/report/psnr_vs_steps.png",
            caption="../report/psnr_vs_steps.rst",
            category="2. PSNR vs. steps",
            labels={"figure": "PSNR vs. adaptation steps"},
        ),
    params:
        scale=SCALE,
    log:
        log_path("plot_steps"),
    benchmark:
        benchmark_path("plot_steps")
    threads: threads_of("plot_steps")
    resources:
        **resources_of("plot_steps"),
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/plot_steps.py"


rule crop:
    input:
        unpack(crop_inputs),
        csvs=crop_csvs,
    output:
        report(
            "results/report/crops/{test_set}/{degradation}/{image}.png",
            caption="../report/crop.rst",
            category="3. Crops",
            subcategory="{test_set} {degradation}",
            labels={"test set": "{test_set}", "degradation": "{degradation}", "image": "{image}"},
        ),
    params:
        report=section(config["report"]),
        scale=SCALE,
    log:
        log_path("crop", JOB),
    benchmark:
        benchmark_path("crop", JOB)
    threads: threads_of("crop")
    resources:
        **resources_of("crop"),
    group:
        image_group("crop")
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/crop.py"
