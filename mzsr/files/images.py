"""Reading any image into RGB float in [0, 1], and writing PNGs atomically.

All image file I/O of the project lives here so that odd inputs (grayscale, palette, 16-bit,
RGBA, CMYK, EXIF-rotated) are converted in one place and broken files get one clear error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mzsr import MZSRError
from mzsr.facts import IMAGE_SUFFIXES
from mzsr.files.atomic import atomic_path


def list_images(paths) -> list[Path]:
    """Expand files and folders into a sorted list of image files; error on anything missing."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise MZSRError(f"{p}: no such file or folder")
    return found


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 float64 RGB in [0, 1].

    Conversions (documented, not errors): EXIF orientation applied; grayscale replicated to RGB;
    palette and CMYK converted to RGB; alpha dropped, i.e. the stored colour values are kept as they
    are, not composited on a background (super-resolution works on the colour, the output PNG has no
    alpha, and GT and SR images read the same way compare the same values); 16-bit grayscale scaled
    by 1/65535; 16-bit RGB PNGs come at 8 bits (Pillow keeps the high byte). Errors: missing, empty,
    unreadable or truncated files, and images under 2x2 pixels.
    """
    path = Path(path)
    if not path.is_file():
        raise MZSRError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise MZSRError(f"{path}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im)
                im.load()
                arr = _to_rgb_float(im)
    except UnidentifiedImageError:
        raise MZSRError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise MZSRError(f"{path}: corrupt or truncated image ({e})") from None
    if min(arr.shape[:2]) < 2:
        raise MZSRError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]} pixels, too small to super-resolve")
    return arr


def _to_rgb_float(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak, 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float64) / 255.0


def read_image_uint8(path: str | Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (the evaluation protocol works on uint8)."""
    return np.round(read_image(path) * 255.0).astype(np.uint8)


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write an HxWx3 uint8 (or float in [0, 1]) image as PNG via a temp file + rename."""
    path = Path(path)
    if img.dtype != np.uint8:
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
