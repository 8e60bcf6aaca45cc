# Stage 7: every job's CSV into results/metrics/per_image.csv, means by test set x degradation x
# method x steps into summary.csv, and the paper's table layout (rows: degradation x test set;
# columns: methods) as CSV and Markdown; with a KernelGAN method, the estimates' kernel errors and
# seconds per image into results/metrics/kernels.csv (means per degradation in the Markdown).


rule aggregate:
    input:
        csvs=job_csvs,
        estimates=estimate_records,
    output:
        per_image="results/metrics/per_image.csv",
        summary=report(
            "results/metrics/summary.csv",
            caption="../report/summary.rst",
            category="1. Results",
            labels={"table": "summary (means)"},
        ),
        table=report(
            "results/metrics/paper_table.csv",
            caption="../report/paper_table.rst",
            category="1. Results",
            labels={"table": "paper layout"},
        ),
        markdown="results/metrics/paper_table.md",
        kernels=(
            report(
                "results/metrics/kernels.csv",
                caption="../report/kernels.rst",
                category="1. Results",
                labels={"table": "KernelGAN kernels"},
            )
            if KGAN_METHODS
            else "results/metrics/kernels.csv"
        ),
    params:
        order={"test_sets": list(TEST_SETS), "degradations": list(DEGRADATIONS), "methods": METHODS},
        models=USED_META_MODELS,
    log:
        log_path("aggregate"),
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/aggregate.py"
