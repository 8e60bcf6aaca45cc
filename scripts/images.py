import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)
# Images into a folder (or one skimage photo into one file): a DIV2K archive name, URL, zip,
# folder, or "skimage:name,...". Downloads go to <output>/../downloads and resume when rerun.
from pathlib import Path

import _util  # noqa: F401  (import path of mzsr)

from mzsr import MZSRError
from mzsr.images import write_png
from mzsr.io import atomic_folder

data = snakemake.params.data
source, out = data["source"], Path(snakemake.output[0])


def skimage_photo(name: str):
    photo = getattr(skimage.data, name, None)
    img = photo() if callable(photo) else None
    if img is None or img.ndim != 3 or img.shape[2] != 3:
        raise MZSRError(f"skimage:{name}: not one of scikit-image's bundled RGB photos (e.g. astronaut, chelsea, coffee, rocket)")
    return img


if source.startswith("skimage:"):
    import skimage.data

    names = [n.strip() for n in source[len("skimage:"):].split(",") if n.strip()]
    photos = {name: skimage_photo(name) for name in names}  # every name checked before anything is written
    if out.suffix == ".png":  # one photo into one file
        if len(photos) != 1:
            raise MZSRError(f"{source}: {out} is one image; name exactly one photo")
        (img,) = photos.values()
        write_png(out, img)
        print(f"skimage:{names[0]} -> {out} ({img.shape[1]}x{img.shape[0]})", file=sys.stderr)
    else:  # a folder of photos: complete under its name or absent (atomic_folder)
        with atomic_folder(out) as tmp:
            for name, img in photos.items():
                write_png(tmp / f"{name}.png", img)
                print(f"skimage:{name} -> {out / f'{name}.png'} ({img.shape[1]}x{img.shape[0]})", file=sys.stderr)
else:
    from mzsr.download import DIV2K_COUNTS, DIV2K_URLS, prepare_images

    expected = data.get("expected_count")
    if source.startswith("div2k:"):
        key = source[len("div2k:"):]
        if key not in DIV2K_URLS:
            raise MZSRError(f"{source}: unknown DIV2K archive; known: {', '.join('div2k:' + k for k in DIV2K_URLS)}")
        source, expected = DIV2K_URLS[key], expected or DIV2K_COUNTS[key]
    images = prepare_images(source, out, expected_count=expected, sha256=data.get("sha256"))
    print(f"{len(images)} images in {out}", file=sys.stderr)
