import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Side-by-side centre crops of one test image: GT, bicubic, MZSR(n)..., ZSSR, titled with PSNR/SSIM.
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import _util  # noqa: F401

from mzsr.images import read_image_uint8
from mzsr.metrics import modcrop

scale = int(snakemake.params.scale)
size = int(snakemake.params.report["crop_size"])
rows = pd.concat([pd.read_csv(p) for p in snakemake.input.csvs], ignore_index=True)


def title(key):
    if key == "gt":
        return "ground truth", "PSNR (dB) / SSIM"
    method, _, steps = key.partition("-")
    hit = rows[(rows["method"] == method) & ((rows["steps"] == int(steps)) if steps else True)]
    name = f"MZSR({steps})" if method == "mzsr" else {"bicubic": "Bicubic", "zssr": "ZSSR"}.get(method, method)
    if not len(hit):
        return name, ""
    return name, f"{hit['psnr'].iloc[0]:.2f} dB / {hit['ssim'].iloc[0]:.4f}"


keys = [k for k in snakemake.input.keys() if k != "csvs"]
panels = []
for key in keys:
    img = read_image_uint8(snakemake.input[key])
    panels.append((key, modcrop(img, scale) if key == "gt" else img))
h, w = panels[0][1].shape[:2]
side = min(size, h, w)
top, left = (h - side) // 2, (w - side) // 2
fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 3.1), squeeze=False)
for ax, (key, img) in zip(axes[0], panels):
    ax.imshow(img[top : top + side, left : left + side], interpolation="nearest")
    name, numbers = title(key)
    ax.set_title(f"{name}\n{numbers}", fontsize=9)
    ax.axis("off")
w_ = snakemake.wildcards
fig.suptitle(f"{w_.test_set} / {w_.degradation} / {w_.image} (x{scale})", fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 0.93))
from mzsr.io import atomic_path  # noqa: E402

with atomic_path(snakemake.output[0]) as tmp:
    fig.savefig(tmp, dpi=100, format="png")
