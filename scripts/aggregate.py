import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Every job's CSV -> per_image.csv, summary.csv (means) and the paper's table (CSV + Markdown);
# KernelGAN's per-image estimate records -> kernels.csv (means per degradation in the Markdown).
import json

import pandas as pd

import _util

from mzsr.io import atomic_write_text
from mzsr.released import describe_weights

order = snakemake.params.order
METHOD_LABELS = {"bicubic": "Bicubic", "pretrained": "Pre-trained", "zssr": "ZSSR", "mzsr": "MZSR",
                 "zssr_kgan": "KernelGAN + ZSSR", "mzsr_kgan": "MZSR, KernelGAN kernel"}
KERNEL_COLUMNS = ["test_set", "degradation", "image", "iterations", "seconds", "kernel_error"]


def label(method, steps):
    """A table column: MZSR(10), "MZSR(10), KernelGAN kernel", KernelGAN + ZSSR, ..."""
    if method == "mzsr":
        return f"MZSR({steps})"
    if method == "mzsr_kgan":
        return f"MZSR({steps}), KernelGAN kernel"
    return METHOD_LABELS[method]


def ordered(df):
    """Rows in config order: test set, degradation, method, steps, image."""
    keys = {
        "test_set": {n: i for i, n in enumerate(order["test_sets"])},
        "degradation": {n: i for i, n in enumerate(order["degradations"])},
        "method": {n: i for i, n in enumerate(order["methods"])},
    }
    return df.sort_values(
        [c for c in ("test_set", "degradation", "method", "steps", "image") if c in df],
        key=lambda col: col.map(keys[col.name]) if col.name in keys else col,
        kind="stable",
    ).reset_index(drop=True)


per_image = ordered(pd.concat([pd.read_csv(p) for p in snakemake.input.csvs], ignore_index=True))
if list(per_image.columns) != list(_util.CSV_COLUMNS):
    raise ValueError(f"job CSVs have columns {list(per_image.columns)}, expected {list(_util.CSV_COLUMNS)}")

summary = ordered(
    per_image.groupby(["test_set", "degradation", "method", "steps"], sort=False)
    .agg(psnr=("psnr", "mean"), ssim=("ssim", "mean"), seconds=("seconds", "mean"),
         redegradation_psnr=("redegradation_psnr", "mean"), images=("image", "count"))
    .reset_index()
)

labels = summary.apply(lambda r: label(r.method, r.steps), axis=1)
cells = summary.assign(column=labels, cell=[f"{p:.2f}/{s:.4f}" for p, s in zip(summary.psnr, summary.ssim)])
# columns as in the paper: Bicubic, ZSSR, then the pre-trained model and MZSR(n) by steps; then the
# blind ones, KernelGAN + ZSSR and MZSR(n) with KernelGAN's kernel
column_rank = {"bicubic": 0, "zssr": 1, "pretrained": 2, "mzsr": 3, "zssr_kgan": 4, "mzsr_kgan": 5}
columns = list(dict.fromkeys(cells.sort_values(["method", "steps"], key=lambda c: c.map(column_rank) if c.name == "method" else c)["column"]))
table = (
    cells.pivot(index=["degradation", "test_set"], columns="column", values="cell")
    .reindex(columns=columns)
    .reset_index()
)
deg_rank = {n: i for i, n in enumerate(order["degradations"])}
set_rank = {n: i for i, n in enumerate(order["test_sets"])}
table = table.sort_values(
    ["degradation", "test_set"], key=lambda c: c.map(deg_rank if c.name == "degradation" else set_rank)
).reset_index(drop=True)
table.columns.name = None

records = [json.loads(open(p).read()) for p in snakemake.input.estimates]
kernels = pd.DataFrame([{c: r[c] for c in KERNEL_COLUMNS} for r in records], columns=KERNEL_COLUMNS)
kernels = ordered(kernels.astype({"iterations": int, "seconds": float, "kernel_error": float}))  # None (no kernel): NaN
kernel_means = (
    kernels.assign(degradation=pd.Categorical(kernels["degradation"], categories=order["degradations"]))
    .groupby("degradation", observed=True)
    .agg(kernel_error=("kernel_error", "mean"), seconds=("seconds", "mean"), iterations=("iterations", "max"),
         images=("image", "count"))
    .reset_index()
)

atomic_write_text(snakemake.output.per_image, per_image.to_csv(index=False, float_format="%.6f"))
atomic_write_text(snakemake.output.summary, summary.to_csv(index=False, float_format="%.4f"))
atomic_write_text(snakemake.output.table, table.to_csv(index=False))
header = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
rows = "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in table.itertuples(index=False))
models = "".join(f"- MZSR, {sub} subsampling: {describe_weights(path)}\n" for sub, path in snakemake.params.models.items())
estimates = "".join(
    f"| {r.degradation} | {'n/a (no kernel)' if pd.isna(r.kernel_error) else f'{r.kernel_error:.5f}'} | {r.seconds:.1f} | "
    f"{r.iterations} | {r.images} |\n"
    for r in kernel_means.itertuples(index=False)
)
if estimates:
    estimates = ("\nKernelGAN kernels (mean over the test images; error: sum of squared differences to the true kernel)\n\n"
                 "| degradation | kernel error | seconds | iterations | images |\n|---|---|---|---|---|\n" + estimates)
atomic_write_text(snakemake.output.kernels, kernels.to_csv(index=False, float_format="%.6f"))
atomic_write_text(snakemake.output.markdown, "PSNR/SSIM (Y channel)\n\n" + header + rows + estimates
                  + (f"\nModels:\n{models}" if models else ""))
print(f"{len(per_image)} rows from {len(snakemake.input.csvs)} jobs, {len(kernels)} kernel estimates", file=sys.stderr)
