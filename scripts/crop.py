# Side-by-side centre crops of one test image: GT, bicubic, MZSR(n)..., ZSSR, the KernelGAN methods,
# titled with PSNR/SSIM; with a KernelGAN method also the true kernel and KernelGAN's, enlarged.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from mzsr.evaluation.metrics import modcrop
from mzsr.evaluation.tables import method_label
from mzsr.files.atomic import atomic_path
from mzsr.files.images import read_image_uint8

scale = int(snakemake.params.scale)
size = int(snakemake.params.report["crop_size"])
rows = pd.concat([pd.read_csv(p) for p in snakemake.input.csvs], ignore_index=True)


def title(key):
    """A panel's (name, PSNR/SSIM line): the method as the paper table names it, its numbers from the job CSVs."""
    if key == "gt":
        return "ground truth", "PSNR (dB) / SSIM"
    method, _, steps = key.partition("-")
    hit = rows[(rows["method"] == method) & ((rows["steps"] == int(steps)) if steps else True)]
    name = method_label(method, int(steps or 0))
    if not len(hit):
        return name, ""
    return name, f"{hit['psnr'].iloc[0]:.2f} dB / {hit['ssim'].iloc[0]:.4f}"


def centred_pair(a, b):
    """Two kernels zero-padded about their middle pixels to one odd size, so that panels compare."""
    n = max(a.shape + b.shape) | 1

    def pad(k):
        return np.pad(k, [((n - m) // 2, n - m - (n - m) // 2) for m in k.shape])

    return pad(a), pad(b)


KERNEL_KEYS = ("estimated_kernel", "estimate_record")
kernel_panels = []  # (title, kernel)
if "estimated_kernel" in snakemake.input.keys():
    estimated = np.load(snakemake.input.estimated_kernel, allow_pickle=False)
    record = json.loads(open(snakemake.input.estimate_record).read())
    if record["true_kernel"] is None:  # plain bicubic: no kernel to compare with
        kernel_panels = [("estimated kernel", estimated)]
    else:
        truth, estimated = centred_pair(np.asarray(record["true_kernel"]), estimated)
        kernel_panels = [("true kernel", truth), (f"estimated kernel\n(error {record['kernel_error']:.4f})", estimated)]

keys = [k for k in snakemake.input.keys() if k != "csvs" and k not in KERNEL_KEYS]
panels = []
for key in keys:
    img = read_image_uint8(snakemake.input[key])
    panels.append((key, modcrop(img, scale) if key == "gt" else img))
h, w = panels[0][1].shape[:2]
side = min(size, h, w)
top, left = (h - side) // 2, (w - side) // 2
ratios = [1.0] * len(panels) + [0.6] * len(kernel_panels)  # the kernels in smaller panels
fig, axes = plt.subplots(
    1, len(ratios), figsize=(2.4 * sum(ratios), 3.1), squeeze=False, gridspec_kw={"width_ratios": ratios}
)
for ax, (key, img) in zip(axes[0], panels):
    ax.imshow(img[top : top + side, left : left + side], interpolation="nearest")
    name, numbers = title(key)
    ax.set_title(f"{name}\n{numbers}", fontsize=9)
    ax.axis("off")
peak = max((float(k.max()) for _, k in kernel_panels), default=1.0)
for ax, (name, k) in zip(axes[0][len(panels) :], kernel_panels):
    ax.imshow(k, cmap="magma", vmin=0.0, vmax=peak, interpolation="nearest")  # one scale for both
    ax.set_title(name, fontsize=8)
    ax.axis("off")
w_ = snakemake.wildcards
fig.suptitle(f"{w_.test_set} / {w_.degradation} / {w_.image} (x{scale})", fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 0.93))
with atomic_path(snakemake.output[0]) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
