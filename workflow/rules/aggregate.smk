# Stage 7: every job's CSV into results/metrics/per_image.csv, means by test set x degradation x
# method x steps into summary.csv, and the paper's table layout (rows: degradation x test set;
# columns: methods) as CSV and Markdown; with a KernelGAN method, the estimates' kernel errors and
# seconds per image into results/metrics/kernels.csv (means per degradation in the Markdown). The
# report shows the tables as HTML pages (results/report/*.html).


rule aggregate:
    input:
        csvs=job_csvs,
        estimates=estimate_records,
        models=list(USED_META_MODELS.values()),  # MZSR's models, which paper_table.md describes
    output:
        per_image="results/metrics/per_image.csv",
        summary="results/metrics/summary.csv",
        table="results/metrics/paper_table.csv",
        markdown="results/metrics/paper_table.md",
        kernels="results/metrics/kernels.csv",
        # the same tables as HTML pages, which the report shows in its page
        paper_html=report(
            "results/report/paper_table.html",
            caption="../report/paper_table.rst",
            category="1. Results",
            labels={"table": "paper layout"},
        ),
        summary_html=report(
            "results/report/summary.html",
            caption="../report/summary.rst",
            category="1. Results",
            labels={"table": "means"},
        ),
        kernels_html=(
            report(
                "results/report/kernels.html",
                caption="../report/kernels.rst",
                category="1. Results",
                labels={"table": "estimated kernels"},
            )
            if KGAN_METHODS
            else "results/report/kernels.html"
        ),
    params:
        order={"test_sets": list(TEST_SETS), "degradations": list(DEGRADATIONS), "methods": METHODS},
        models=list(USED_META_MODELS),  # their subsamplings
    log:
        log_path("aggregate"),
    benchmark:
        benchmark_path("aggregate")
    threads: threads_of("aggregate")
    resources:
        **resources_of("aggregate"),
    conda:
        "../../envs/report.yaml"
    script:
        "../../scripts/aggregate.py"
