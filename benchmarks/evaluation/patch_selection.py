"""How many grid patches the authors' flat-patch test drops, per patch size and stride.

For each (patch size, stride) setting, cuts every training image on the grid (as write_patch_store
does) and counts the patches with log(gradient energy + 1e-10) < threshold (mzsr.data.patches.is_flat).
Defaults: T91 + BSD200 of the shared data folder; the release's settings (64 px and 96 px, stride 120)
and config/config.yaml's earlier ones (stride = patch size).

    python -m benchmarks.evaluation.patch_selection [--images DIR ...] [--setting 64:120 ...] [--json FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.harness import TRAIN_FOLDERS, write_result
from mzsr.data.patches import FLAT_THRESHOLD, grid_patches, is_flat
from mzsr.files.images import list_images, read_image_uint8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, nargs="+", default=list(TRAIN_FOLDERS))
    ap.add_argument("--setting", action="append", help="PATCH:STRIDE (repeatable)")
    ap.add_argument("--threshold", type=float, default=FLAT_THRESHOLD)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = [tuple(map(int, s.split(":"))) for s in args.setting or ["64:120", "64:64", "96:120", "96:96"]]
    images = [read_image_uint8(p) for p in list_images(args.images)]
    print(f"{len(images)} images from {', '.join(str(d) for d in args.images)}; threshold {args.threshold}")
    print(
        "| patch | stride | images with a patch | grid patches | flat (dropped) | rejection rate |\n|---|---|---|---|---|---|"
    )
    rows = []
    for size, stride in settings:
        counts = [
            (len(g), int(is_flat(g, args.threshold).sum())) for g in (grid_patches(im, size, stride) for im in images)
        ]
        grid, flat = np.sum(counts, axis=0)
        used = sum(n > 0 for n, _ in counts)
        print(f"| {size} | {stride} | {used} | {grid} | {flat} | {100 * flat / max(grid, 1):.2f}% |")
        rows.append(
            {"patch": size, "stride": stride, "images_with_a_patch": used, "patches": int(grid), "flat": int(flat)}
        )
    write_result(args.json, {"images": len(images), "threshold": args.threshold, "rows": rows})


if __name__ == "__main__":
    main()
