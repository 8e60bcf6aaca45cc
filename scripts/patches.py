import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# HR patches of the training images into an HDF5 store.
from pathlib import Path

import _util

from mzsr.data import write_patch_store
from mzsr.images import IMAGE_SUFFIXES

cfg = snakemake.params.patches
folder = Path(snakemake.input[0])
images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
write_patch_store(
    images,
    snakemake.output[0],
    patch_size=cfg["patch_size"],
    stride=cfg["stride"],
    max_per_image=cfg["max_per_image"],
    seed=cfg["seed"],
    provenance={"source": snakemake.config["data"]["train"]["source"], "kind": snakemake.wildcards.kind, **cfg},
)
