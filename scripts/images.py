# Images into a folder (or one skimage photo into one file): a DIV2K archive name, URL, zip,
# folder, or "skimage:name,..." (mzsr.data.sources). Downloads go to <output>/../downloads and resume when rerun.
import _util

_util.start(snakemake)  # stderr to the job's log, mzsr importable, one-line errors and warnings

import sys
from pathlib import Path

from mzsr import MZSRError
from mzsr.data.download import prepare_images
from mzsr.data.sources import SKIMAGE, resolve_source, skimage_photos
from mzsr.facts import IMAGE_SUFFIXES
from mzsr.files.atomic import atomic_folder
from mzsr.files.images import write_png

data = snakemake.params.data
source, out = data["source"], Path(snakemake.output[0])
if source.startswith(SKIMAGE):
    photos = skimage_photos(source)  # every name checked before anything is written
    if out.suffix == ".png":  # one photo into one file
        if len(photos) != 1:
            raise MZSRError(f"{source}: {out} is one image; name exactly one photo")
        ((name, img),) = photos.items()
        write_png(out, img)
        print(f"{SKIMAGE}{name} -> {out} ({img.shape[1]}x{img.shape[0]})", file=sys.stderr)
    else:  # a folder of photos: complete under its name or absent (atomic_folder)
        with atomic_folder(out) as tmp:
            for name, img in photos.items():
                write_png(tmp / f"{name}.png", img)
                print(f"{SKIMAGE}{name} -> {out / f'{name}.png'} ({img.shape[1]}x{img.shape[0]})", file=sys.stderr)
else:
    location, expected = resolve_source(source, data.get("expected_count"))
    images = prepare_images(location, out, expected_count=expected, sha256=data.get("sha256"), suffixes=IMAGE_SUFFIXES)
    print(f"{len(images)} images in {out}", file=sys.stderr)
