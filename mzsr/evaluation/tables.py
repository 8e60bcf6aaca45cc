"""The pipeline's results: the rows one SR job scores, and the tables made of every job's rows.

Pure functions on arrays and DataFrames, so that the tables can be tested without running the
pipeline; the rule scripts read and write the files. `order` is the config's order of things,
{"test_sets": [...], "degradations": [...], "methods": [...]}: the tables list them that way.
"""

from __future__ import annotations

import pandas as pd

#: The columns of a job's CSV and of per_image.csv.
JOB_COLUMNS = ("test_set", "degradation", "method", "steps", "image", "psnr", "ssim", "seconds", "redegradation_psnr")
#: The columns of kernels.csv, one row per estimated kernel (method: learned or kernelgan; iterations:
#: KernelGAN's, 0 for the learned estimator).
KERNEL_COLUMNS = ("test_set", "degradation", "image", "method", "iterations", "seconds", "kernel_error")
METHOD_LABELS = {
    "bicubic": "Bicubic",
    "pretrained": "Pre-trained",
    "zssr": "ZSSR",
    "mzsr": "MZSR",
    "zssr_kgan": "ZSSR, estimated kernel",
    "mzsr_kgan": "MZSR, estimated kernel",
}
# The paper's column order: Bicubic, ZSSR, then the pre-trained model and MZSR(n) by steps; then the
# blind ones, ZSSR and MZSR(n) with the estimated kernel (config estimate.method).
COLUMN_RANK = {"bicubic": 0, "zssr": 1, "pretrained": 2, "mzsr": 3, "zssr_kgan": 4, "mzsr_kgan": 5}


def score_rows(
    results, gt_u8, lr_u8, kernel, scale: int, subsampling, *, test_set: str, degradation: str, method: str, image: str
) -> list[dict]:
    """A job's rows (JOB_COLUMNS) for its SR results [(steps, sr_uint8, seconds)]: PSNR and SSIM
    against the mod-cropped ground truth, and `redegradation_psnr`, each result degraded again with
    the `kernel` and `subsampling` the job used and compared with the LR input, which shows a wrong or
    misaligned kernel even without ground truth."""
    # here, not on import: the aggregation's environment has no torch (mzsr.degradation.degrade)
    from mzsr.evaluation.metrics import psnr, redegradation_psnr, ssim

    return [
        {
            "test_set": test_set,
            "degradation": degradation,
            "method": method,
            "steps": int(steps),
            "image": image,
            "psnr": psnr(sr, gt_u8, scale),
            "ssim": ssim(sr, gt_u8, scale),
            "seconds": float(seconds),
            "redegradation_psnr": redegradation_psnr(sr, lr_u8, kernel, scale, subsampling),
        }
        for steps, sr, seconds in results
    ]


def method_label(method: str, steps: int) -> str:
    """A method's name in tables and figures: MZSR(10), "MZSR(10), estimated kernel", "ZSSR, estimated kernel", ..."""
    if method in ("mzsr", "mzsr_kgan"):
        return f"MZSR({steps})" + (", estimated kernel" if method == "mzsr_kgan" else "")
    return METHOD_LABELS[method]


def in_config_order(df: pd.DataFrame, order: dict) -> pd.DataFrame:
    """Rows in config order: test set, degradation, method, then steps and image (those present)."""
    rank = {
        "test_set": {n: i for i, n in enumerate(order["test_sets"])},
        "degradation": {n: i for i, n in enumerate(order["degradations"])},
        "method": {n: i for i, n in enumerate(order["methods"])},
    }
    return df.sort_values(
        [c for c in ("test_set", "degradation", "method", "steps", "image") if c in df],
        key=lambda col: col.map(rank[col.name]) if col.name in rank else col,
        kind="stable",
    ).reset_index(drop=True)


def per_image_table(job_rows: list[pd.DataFrame], order: dict) -> pd.DataFrame:
    """Every job's rows in one table, in config order; a job CSV with other columns (from another
    version of the pipeline) is an error."""
    per_image = in_config_order(pd.concat(job_rows, ignore_index=True), order)
    if list(per_image.columns) != list(JOB_COLUMNS):
        raise ValueError(f"job CSVs have columns {list(per_image.columns)}, expected {list(JOB_COLUMNS)}")
    return per_image


def summary_table(per_image: pd.DataFrame, order: dict) -> pd.DataFrame:
    """Means over the images of each test set x degradation x method x steps, with the image count."""
    return in_config_order(
        per_image.groupby(["test_set", "degradation", "method", "steps"], sort=False)
        .agg(
            psnr=("psnr", "mean"),
            ssim=("ssim", "mean"),
            seconds=("seconds", "mean"),
            redegradation_psnr=("redegradation_psnr", "mean"),
            images=("image", "count"),
        )
        .reset_index(),
        order,
    )


def paper_table(summary: pd.DataFrame, order: dict) -> pd.DataFrame:
    """The paper's layout: a row per degradation x test set (config order), a column per method
    (COLUMN_RANK, MZSR by steps), cells "PSNR/SSIM" as 31.42/0.8812; missing cells NaN."""
    cells = summary.assign(
        column=[method_label(m, s) for m, s in zip(summary.method, summary.steps)],
        cell=[f"{p:.2f}/{s:.4f}" for p, s in zip(summary.psnr, summary.ssim)],
    )
    by_rank = cells.sort_values(["method", "steps"], key=lambda c: c.map(COLUMN_RANK) if c.name == "method" else c)
    table = (
        cells.pivot(index=["degradation", "test_set"], columns="column", values="cell")
        .reindex(columns=list(dict.fromkeys(by_rank["column"])))
        .reset_index()
    )
    deg_rank = {n: i for i, n in enumerate(order["degradations"])}
    set_rank = {n: i for i, n in enumerate(order["test_sets"])}
    table = table.sort_values(
        ["degradation", "test_set"], key=lambda c: c.map(deg_rank if c.name == "degradation" else set_rank)
    ).reset_index(drop=True)
    table.columns.name = None
    return table


def kernel_table(records: list[dict], order: dict) -> pd.DataFrame:
    """The estimate records (KERNEL_COLUMNS and more) as rows in config order; a kernel error of None
    (no true kernel: plain bicubic) becomes NaN. Records from before the learned estimator have no
    method: KernelGAN made them."""
    records = [{"method": "kernelgan", **r} for r in records]
    kernels = pd.DataFrame([{c: r[c] for c in KERNEL_COLUMNS} for r in records], columns=list(KERNEL_COLUMNS))
    return in_config_order(kernels.astype({"iterations": int, "seconds": float, "kernel_error": float}), order)


def kernel_means(kernels: pd.DataFrame, order: dict) -> pd.DataFrame:
    """Per degradation (config order): the method(s), mean kernel error and seconds, the most iterations,
    the image count."""
    return (
        kernels.assign(degradation=pd.Categorical(kernels["degradation"], categories=order["degradations"]))
        .groupby("degradation", observed=True)
        .agg(
            method=("method", lambda m: ", ".join(sorted(set(m)))),
            kernel_error=("kernel_error", "mean"),
            seconds=("seconds", "mean"),
            iterations=("iterations", "max"),
            images=("image", "count"),
        )
        .reset_index()
    )


def paper_markdown(table: pd.DataFrame, kernel_means: pd.DataFrame, models: dict[str, str]) -> str:
    """paper_table.md: the paper table; with estimated kernels their means; with MZSR models, a line on
    each ({subsampling: description})."""
    text = "PSNR/SSIM (Y channel)\n\n" + _markdown_rows(list(table.columns), table.itertuples(index=False))
    if len(kernel_means):
        rows = [
            (
                r.degradation,
                r.method,
                "n/a (no kernel)" if pd.isna(r.kernel_error) else f"{r.kernel_error:.5f}",
                f"{r.seconds:.1f}",
                r.iterations,
                r.images,
            )
            for r in kernel_means.itertuples(index=False)
        ]
        text += (
            "\nEstimated kernels (mean over the test images; error: sum of squared differences to the true kernel)\n\n"
            + _markdown_rows(["degradation", "method", "kernel error", "seconds", "iterations", "images"], rows)
        )
    if models:
        text += "\nModels:\n" + "".join(f"- MZSR, {sub} subsampling: {about}\n" for sub, about in models.items())
    return text


def _markdown_rows(header, rows) -> str:
    """A Markdown table; cells as str() writes them (a missing one: nan)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "".join(line + "\n" for line in lines)


def html_table(table: pd.DataFrame, title: str, notes: list[str] = (), float_format: str = "{:.4f}") -> str:
    """A results table as a small HTML page, which `snakemake --report` shows in the page (a CSV it
    only offers as a download). `notes` are lines of text below the table (escaped)."""
    import html

    body = table.to_html(index=False, border=0, na_rep="", float_format=float_format.format, classes="results")
    below = "".join(f"<p>{html.escape(line)}</p>\n" for line in notes)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{_TABLE_CSS}</style>\n</head>\n<body>\n<h3>{html.escape(title)}</h3>\n{body}\n{below}</body>\n</html>\n"
    )


_TABLE_CSS = (
    "body{font-family:system-ui,sans-serif;font-size:14px;margin:12px}"
    "table.results{border-collapse:collapse}"
    "table.results th,table.results td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
    "table.results th{background:#f4f4f4}"
    "table.results td:nth-child(-n+2),table.results th:nth-child(-n+2){text-align:left}"
)
