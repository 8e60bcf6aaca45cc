# PSNR against adaptation steps: MZSR's curve per degradation, bicubic and ZSSR as levels.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from mzsr.files.atomic import atomic_path

summary = pd.read_csv(snakemake.input[0])
test_sets = list(dict.fromkeys(summary["test_set"]))
fig, axes = plt.subplots(1, len(test_sets), figsize=(4.5 * len(test_sets), 3.6), squeeze=False, sharey=False)
for ax, ts in zip(axes[0], test_sets):
    part = summary[summary["test_set"] == ts]
    for i, deg in enumerate(dict.fromkeys(part["degradation"])):
        rows = part[part["degradation"] == deg]
        colour = f"C{i}"
        mzsr = rows[rows["method"] == "mzsr"].sort_values("steps")
        if len(mzsr):
            ax.plot(mzsr["steps"], mzsr["psnr"], "o-", color=colour, label=f"MZSR {deg}")
        blind = rows[rows["method"] == "mzsr_kgan"].sort_values("steps")  # with KernelGAN's kernel
        if len(blind):
            ax.plot(blind["steps"], blind["psnr"], "s--", color=colour, markersize=4, label=f"MZSR + KernelGAN {deg}")
        for method, style in (("bicubic", "--"), ("zssr", ":"), ("zssr_kgan", "-.")):
            level = rows[rows["method"] == method]
            if len(level):
                ax.axhline(level["psnr"].iloc[0], color=colour, linestyle=style, linewidth=1)
    ax.set_xscale("symlog", linthresh=1)
    steps = sorted(set(part.loc[part["method"].isin(["mzsr", "mzsr_kgan"]), "steps"]))
    if steps:
        ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("adaptation steps")
    ax.set_ylabel("PSNR (dB, Y)")
    ax.set_title(f"{ts} (x{snakemake.params.scale})")
    ax.grid(alpha=0.3)
    ax.plot([], [], "k--", linewidth=1, label="bicubic")
    ax.plot([], [], "k:", linewidth=1, label="ZSSR")
    if (part["method"] == "zssr_kgan").any():
        ax.plot([], [], "k-.", linewidth=1, label="ZSSR, estimated kernel")
    ax.legend(fontsize=8)
fig.tight_layout()
with atomic_path(snakemake.output[0]) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
