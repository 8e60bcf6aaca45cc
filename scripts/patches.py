# HR patches of the training images into an HDF5 store.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import sys
from pathlib import Path

from mzsr.data.stores import open_store, write_patch_store
from mzsr.files.images import IMAGE_SUFFIXES

cfg = snakemake.params.patches
folder = Path(snakemake.input[0])
images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
count = write_patch_store(
    images,
    snakemake.output[0],
    patch_size=cfg["patch_size"],
    stride=cfg["stride"],
    max_per_image=cfg["max_per_image"],
    seed=cfg["seed"],
    reject_flat=cfg["reject_flat"],
    flat_threshold=cfg["flat_threshold"],
    store_augmented=cfg["store_augmented"],
    lr_scale=snakemake.params.lr_scale,
    provenance={"source": snakemake.config["data"]["train"]["source"], "kind": snakemake.wildcards.kind, **cfg},
)
with open_store(snakemake.output[0]) as f:
    print(
        f"{count} patches stored; the grid gave {f.attrs['grid_patches']}, {f.attrs['flat_patches']} of them flat (dropped)",
        file=sys.stderr,
    )
