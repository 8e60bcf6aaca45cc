# Every job's CSV -> per_image.csv, summary.csv (means) and the paper's table (CSV + Markdown);
# KernelGAN's per-image estimate records -> kernels.csv (means per degradation in the Markdown).
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import json
import sys

import pandas as pd

from mzsr.evaluation.tables import (
    html_table,
    kernel_means,
    kernel_table,
    paper_markdown,
    paper_table,
    per_image_table,
    summary_table,
)
from mzsr.files.atomic import atomic_write_text
from mzsr.files.released import describe_weights

order, out = snakemake.params.order, snakemake.output
per_image = per_image_table([pd.read_csv(p) for p in snakemake.input.csvs], order)
summary = summary_table(per_image, order)
table = paper_table(summary, order)
kernels = kernel_table([json.loads(open(p).read()) for p in snakemake.input.estimates], order)
models = {sub: describe_weights(path) for sub, path in zip(snakemake.params.models, snakemake.input.models)}

atomic_write_text(out.per_image, per_image.to_csv(index=False, float_format="%.6f"))
atomic_write_text(out.summary, summary.to_csv(index=False, float_format="%.4f"))
atomic_write_text(out.table, table.to_csv(index=False))
atomic_write_text(out.kernels, kernels.to_csv(index=False, float_format="%.6f"))
atomic_write_text(out.markdown, paper_markdown(table, kernel_means(kernels, order), models))
# the tables that `snakemake --report` shows in its page
model_notes = [f"MZSR, {sub} subsampling: {about}" for sub, about in models.items()]
atomic_write_text(out.paper_html, html_table(table, "PSNR/SSIM (Y channel)", model_notes))
atomic_write_text(out.summary_html, html_table(summary, "Means by test set, degradation, method and steps"))
atomic_write_text(out.kernels_html, html_table(kernels, "KernelGAN's kernels", float_format="{:.6f}"))
print(f"{len(per_image)} rows from {len(snakemake.input.csvs)} jobs, {len(kernels)} kernel estimates", file=sys.stderr)
