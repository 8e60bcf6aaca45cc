"""What a config's image `source` names: "div2k:<archive>", "skimage:<photo>,...", or a URL, zip or
folder as it is (mzsr.data.download.prepare_images). Resolved and checked here, before anything is
downloaded or written.

What the workflow needs for planning (the kind of a source, skimage names) is in mzsr.facts.
"""

from __future__ import annotations

from mzsr import MZSRError, facts
from mzsr.data.download import DIV2K_COUNTS, DIV2K_URLS
from mzsr.facts import DIV2K, SKIMAGE


def resolve_source(source: str, expected_count: int | None = None) -> tuple[str, int | None]:
    """(what prepare_images reads, how many images it must find) for a source other than skimage:
    for "div2k:<archive>" its URL and image count (unless `expected_count` is given); any other
    source as it is, with `expected_count`."""
    if not source.startswith(DIV2K):
        return source, expected_count
    key = source[len(DIV2K) :]
    if key not in DIV2K_URLS:
        raise MZSRError(f"{source}: unknown DIV2K archive; known: {', '.join(DIV2K + k for k in DIV2K_URLS)}")
    return DIV2K_URLS[key], expected_count or DIV2K_COUNTS[key]


def skimage_names(source: str) -> list[str]:
    """The photo names of "skimage:a,b" (blanks ignored); none is an error."""
    try:
        return facts.skimage_names(source)
    except ValueError as e:
        raise MZSRError(str(e)) from None


def skimage_photos(source: str) -> dict:
    """{name: uint8 HxWx3 array} of "skimage:a,b": every name checked to be one of scikit-image's
    bundled RGB photos, so that a typo stops the job before anything is written."""
    import skimage.data

    photos = {}
    for name in skimage_names(source):
        # its public loaders only, and not download_all (every data set, from the internet)
        loader = getattr(skimage.data, name) if name in skimage.data.__all__ and name != "download_all" else None
        try:
            img = loader() if callable(loader) else None
        except TypeError:  # a helper that wants arguments (file_hash), not a photo
            img = None
        if getattr(img, "ndim", 0) != 3 or img.shape[2] != 3:
            raise MZSRError(
                f"{SKIMAGE}{name}: not one of scikit-image's bundled RGB photos (e.g. astronaut, chelsea, coffee, rocket)"
            )
        photos[name] = img
    return photos
