"""mzsr.evaluation.tables: a job's scored rows on small synthetic images (numbers checked against an
independent computation), and the tables of scripts/aggregate.py on hand-made rows: order, means,
labels, columns, the Markdown text."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio

from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.degradation.resolve import resolve_degradation
from mzsr.evaluation.tables import (
    JOB_COLUMNS,
    in_config_order,
    kernel_means,
    kernel_table,
    method_label,
    paper_markdown,
    paper_table,
    per_image_table,
    score_rows,
    summary_table,
)
from conftest import smooth_image

ORDER = {
    "test_sets": ["tiny", "Set5"],
    "degradations": ["g2.0", "bicubic"],
    "methods": ["bicubic", "mzsr", "zssr", "mzsr_kgan"],
}
LABELS = {"test_set": "tiny", "degradation": "g2.0", "method": "mzsr", "image": "a"}


# ------------------------------------------------------------------------------------ a job's rows


@pytest.fixture(scope="module")
def job():
    """A 48x48 HR image, its g2.0 kernel (bicubic subsampling) and the LR image made with them."""
    hr = to_uint8(smooth_image(48, 48, seed=3))
    deg = resolve_degradation("g2.0")
    lr = to_uint8(degrade(hr / 255.0, deg.kernel, 2, deg.subsampling))
    return hr, lr, deg.kernel, deg.subsampling


def test_score_rows_of_the_exact_image_and_of_a_noisy_one(job):
    hr, lr, kernel, subsample = job
    noisy = np.clip(hr.astype(int) + np.random.default_rng(0).integers(-6, 7, hr.shape), 0, 255).astype(np.uint8)
    rows = score_rows([(0, hr, 0.5), (10, noisy, 2)], hr, lr, kernel, 2, subsample, **LABELS)
    assert [list(r) for r in rows] == [list(JOB_COLUMNS)] * 2
    exact, noise = rows
    assert {k: exact[k] for k in ("test_set", "degradation", "method", "steps", "image", "seconds")} == {
        "test_set": "tiny",
        "degradation": "g2.0",
        "method": "mzsr",
        "steps": 0,
        "image": "a",
        "seconds": 0.5,
    }
    assert exact["psnr"] == math.inf and exact["ssim"] == 1.0
    assert exact["redegradation_psnr"] == math.inf  # the true HR with its own kernel gives the LR back exactly
    # the protocol by other means: BT.601 Y of scikit-image, rounded, 2 pixels shaved, PSNR of scikit-image
    y_hr, y_noisy = (np.round(rgb2ycbcr(img)[..., 0])[2:-2, 2:-2] for img in (hr, noisy))
    assert noise["psnr"] == pytest.approx(peak_signal_noise_ratio(y_hr, y_noisy, data_range=255), abs=1e-9)
    assert 30 < noise["psnr"] < 45 and 0.5 < noise["ssim"] < 1
    assert noise["steps"] == 10 and isinstance(noise["seconds"], float)


def test_redegradation_psnr_tells_a_misaligned_result_without_ground_truth(job):
    """Degraded again with the job's kernel, a noisy but aligned result still gives the LR input back
    closely (the blur averages the noise out); one shifted by two pixels does not."""
    hr, lr, kernel, subsample = job
    noisy = np.clip(hr.astype(int) + np.random.default_rng(0).integers(-6, 7, hr.shape), 0, 255).astype(np.uint8)
    aligned, shifted = score_rows(
        [(1, noisy, 0.0), (1, np.roll(hr, 2, axis=1), 0.0)], hr, lr, kernel, 2, subsample, **LABELS
    )
    assert aligned["redegradation_psnr"] > 45
    assert math.isfinite(shifted["redegradation_psnr"]) and shifted["redegradation_psnr"] < 35


# ------------------------------------------------------------------------------------ the tables


def rows(*specs):
    """Job rows from (test_set, degradation, method, steps, image, psnr, ssim)."""
    return pd.DataFrame(
        [dict(zip(JOB_COLUMNS, (*s, 1.0 + i, 40.0 + i))) for i, s in enumerate(specs)], columns=list(JOB_COLUMNS)
    )


def test_method_labels():
    assert [method_label(m, 10) for m in ("bicubic", "pretrained", "zssr", "mzsr", "zssr_kgan", "mzsr_kgan")] == [
        "Bicubic",
        "Pre-trained",
        "ZSSR",
        "MZSR(10)",
        "ZSSR, estimated kernel",
        "MZSR(10), estimated kernel",
    ]
    assert method_label("mzsr", 0) == "MZSR(0)"


def test_per_image_rows_in_config_order_and_their_columns_checked():
    jobs = [
        rows(("Set5", "g2.0", "mzsr", 10, "a", 30.0, 0.9)),
        rows(("tiny", "bicubic", "zssr", 5, "b", 28.0, 0.8), ("tiny", "bicubic", "zssr", 5, "a", 29.0, 0.8)),
        rows(
            ("tiny", "g2.0", "mzsr", 10, "a", 31.0, 0.9),
            ("tiny", "g2.0", "mzsr", 1, "a", 30.0, 0.9),
            ("tiny", "g2.0", "bicubic", 0, "a", 27.0, 0.7),
        ),
    ]
    per_image = per_image_table(jobs, ORDER)
    assert list(per_image.columns) == list(JOB_COLUMNS)
    assert per_image[["test_set", "degradation", "method", "steps", "image"]].values.tolist() == [
        ["tiny", "g2.0", "bicubic", 0, "a"],
        ["tiny", "g2.0", "mzsr", 1, "a"],
        ["tiny", "g2.0", "mzsr", 10, "a"],
        ["tiny", "bicubic", "zssr", 5, "a"],
        ["tiny", "bicubic", "zssr", 5, "b"],
        ["Set5", "g2.0", "mzsr", 10, "a"],
    ]
    with pytest.raises(ValueError, match="job CSVs have columns"):
        per_image_table([jobs[0].drop(columns="redegradation_psnr")], ORDER)
    assert in_config_order(pd.DataFrame({"method": ["zssr", "bicubic"], "x": [1, 2]}), ORDER)["x"].tolist() == [2, 1]


def test_summary_and_paper_table():
    per_image = per_image_table(
        [
            rows(
                ("Set5", "g2.0", "mzsr", 10, "a", 30.0, 0.90),
                ("Set5", "g2.0", "mzsr", 10, "b", 32.0, 0.80),
                ("tiny", "g2.0", "mzsr_kgan", 1, "a", 25.0, 0.60),
                ("tiny", "g2.0", "mzsr", 10, "a", 31.0, 0.95),
                ("tiny", "g2.0", "zssr", 5, "a", 29.0, 0.85),
                ("tiny", "g2.0", "bicubic", 0, "a", 27.0, 0.75),
                ("tiny", "bicubic", "mzsr", 1, "a", 33.0, 0.91),
                ("tiny", "g2.0", "mzsr", 1, "a", 30.123, 0.88888),
            )
        ],
        ORDER,
    )
    summary = summary_table(per_image, ORDER)
    assert list(summary.columns) == [
        "test_set",
        "degradation",
        "method",
        "steps",
        "psnr",
        "ssim",
        "seconds",
        "redegradation_psnr",
        "images",
    ]
    assert summary[["test_set", "degradation", "method", "steps", "images"]].values.tolist() == [
        ["tiny", "g2.0", "bicubic", 0, 1],
        ["tiny", "g2.0", "mzsr", 1, 1],
        ["tiny", "g2.0", "mzsr", 10, 1],
        ["tiny", "g2.0", "zssr", 5, 1],
        ["tiny", "g2.0", "mzsr_kgan", 1, 1],
        ["tiny", "bicubic", "mzsr", 1, 1],
        ["Set5", "g2.0", "mzsr", 10, 2],
    ]
    set5 = summary.iloc[-1]
    assert (set5.psnr, set5.ssim, set5.seconds, set5.redegradation_psnr) == pytest.approx((31.0, 0.85, 1.5, 40.5))

    table = paper_table(summary, ORDER)
    assert list(table.columns) == [
        "degradation",
        "test_set",
        "Bicubic",
        "ZSSR",
        "MZSR(1)",
        "MZSR(10)",
        "MZSR(1), estimated kernel",
    ]
    assert table.fillna("-").values.tolist() == [
        ["g2.0", "tiny", "27.00/0.7500", "29.00/0.8500", "30.12/0.8889", "31.00/0.9500", "25.00/0.6000"],
        ["g2.0", "Set5", "-", "-", "-", "31.00/0.8500", "-"],
        ["bicubic", "tiny", "-", "-", "33.00/0.9100", "-", "-"],
    ]

    kernels = kernel_table(
        [
            {
                "test_set": "Set5",
                "degradation": "g2.0",
                "image": "a",
                "method": "learned",
                "iterations": 0,
                "seconds": 10,
                "kernel_error": 0.002,
                "scale": 2,
                "true_kernel": [[1.0]],
            },
            {
                "test_set": "tiny",
                "degradation": "bicubic",
                "image": "a",
                "iterations": 3000,
                "seconds": 5,
                "kernel_error": None,
            },
            {
                "test_set": "tiny",
                "degradation": "g2.0",
                "image": "a",
                "iterations": 2000,
                "seconds": 20,
                "kernel_error": 0.004,
            },
        ],
        ORDER,
    )
    assert kernels[["test_set", "degradation", "image"]].values.tolist() == [
        ["tiny", "g2.0", "a"],
        ["tiny", "bicubic", "a"],
        ["Set5", "g2.0", "a"],
    ]
    assert kernels["kernel_error"].isna().tolist() == [False, True, False]
    assert kernels["method"].tolist() == ["kernelgan", "kernelgan", "learned"]  # a record without one: KernelGAN's
    means = kernel_means(kernels, ORDER)
    assert means.values.tolist()[0] == ["g2.0", "kernelgan, learned", pytest.approx(0.003), 15.0, 2000, 2]

    text = paper_markdown(table, means, {"bicubic": "w.safetensors: tf:x weights, step 5"})
    assert text.splitlines() == [
        "PSNR/SSIM (Y channel)",
        "",
        "| degradation | test_set | Bicubic | ZSSR | MZSR(1) | MZSR(10) | MZSR(1), estimated kernel |",
        "|---|---|---|---|---|---|---|",
        "| g2.0 | tiny | 27.00/0.7500 | 29.00/0.8500 | 30.12/0.8889 | 31.00/0.9500 | 25.00/0.6000 |",
        "| g2.0 | Set5 | nan | nan | nan | 31.00/0.8500 | nan |",
        "| bicubic | tiny | nan | nan | 33.00/0.9100 | nan | nan |",
        "",
        "Estimated kernels (mean over the test images; error: sum of squared differences to the true kernel)",
        "",
        "| degradation | method | kernel error | seconds | iterations | images |",
        "|---|---|---|---|---|---|",
        "| g2.0 | kernelgan, learned | 0.00300 | 15.0 | 2000 | 2 |",
        "| bicubic | kernelgan | n/a (no kernel) | 5.0 | 3000 | 1 |",
        "",
        "Models:",
        "- MZSR, bicubic subsampling: w.safetensors: tf:x weights, step 5",
    ]
    assert text.endswith("step 5\n")
    no_extras = paper_markdown(table, kernel_means(kernel_table([], ORDER), ORDER), {})
    assert no_extras == "\n".join(text.splitlines()[:7]) + "\n"
