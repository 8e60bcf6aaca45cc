"""HDF5 patch stores: writing the HR patches of a set of images with their provenance, the content
digest, and verifying a store before training reads it.

Patch store: dataset `patches` (N, P, P, 3) uint8, one chunk per patch so that random access
decompresses only what a batch needs; `source` (N,) int32 image index; `mode` (N,) uint8 flip/rotation
of the patch (0-7, see `dihedral`); provenance as attributes. As the authors' generators do, flat
patches can be dropped and every patch stored in all 8 flips/rotations. A pre-training store also
holds `lr_patches` (N, P/s, P/s, 3) uint8: the same region of the whole image's MATLAB-bicubic
x1/s downscale, rounded to uint8, as the release's TFRecord holds DIV2K's bicubic LR images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from mzsr import MZSRError
from mzsr.data.patches import FLAT_THRESHOLD, bicubic_lr, dihedral, grid_patches, is_flat, mod_crop
from mzsr.files.atomic import atomic_path, set_aside
from mzsr.files.images import read_image_uint8

STORE_FORMAT = "mzsr-patches/1"
# Patch stores up to this size on disk are verified in full against their digest when a trainer opens
# them (about 1 s per 100 MB); larger ones are checked chunk by chunk as they are read (gzip's adler32).
VERIFY_LIMIT = 2 << 30
_SLAB = 4096  # rows hashed at once


def write_patch_store(
    image_paths,
    out_path: str | Path,
    patch_size: int,
    stride: int,
    max_per_image: int | None,
    seed: int,
    provenance: dict | None = None,
    reject_flat: bool = False,
    flat_threshold: float = FLAT_THRESHOLD,
    store_augmented: bool = False,
    lr_scale: int | None = None,
) -> int:
    """Cut HR images into uint8 patches and store them in HDF5 atomically; returns the patch count.

    Per image: the grid patches, less the flat ones (`reject_flat`, see `is_flat`); when more than
    `max_per_image` remain, a seeded random subset; with `store_augmented`, each of them in all 8
    flips/rotations (8 consecutive rows). Images smaller than a patch are skipped (and listed in the
    `skipped` attribute); `grid_patches` and `flat_patches` count what the grid gave and what was dropped.
    With `lr_scale` (a pre-training store), each image is first mod-cropped to the scale and the
    matching LR patches of its `bicubic_lr` are stored too (`lr_patches`), as the release's
    pre-training generator pairs DIV2K's HR and bicubic LR images.
    """
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise MZSRError(f"{out_path}: no training images given")
    if lr_scale is not None and (lr_scale < 1 or patch_size % lr_scale or stride % lr_scale):
        raise MZSRError(
            f"{out_path}: LR patches at x{lr_scale} need a patch size and stride divisible by the scale"
            f" (got {patch_size} and {stride})"
        )
    modes = np.arange(8 if store_augmented else 1, dtype=np.uint8)
    digest, lr_digest = hashlib.sha256(), hashlib.sha256()
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:

        def dataset(name, size):
            return f.create_dataset(
                name,
                shape=(0, size, size, 3),
                maxshape=(None, size, size, 3),
                dtype=np.uint8,
                chunks=(1, size, size, 3),
                compression="gzip",
                compression_opts=1,
            )

        ds = dataset("patches", patch_size)
        lr_ds = dataset("lr_patches", patch_size // lr_scale) if lr_scale else None
        sources: list[np.ndarray] = []
        skipped: list[str] = []
        n_grid = n_flat = 0
        for i, path in enumerate(paths):
            img = read_image_uint8(path)
            if lr_scale:
                img = mod_crop(img, lr_scale)
            patches = grid_patches(img, patch_size, stride)
            if len(patches) == 0:
                skipped.append(path.name)
                continue
            lr = grid_patches(bicubic_lr(img, lr_scale), patch_size, stride, lr_scale) if lr_scale else None
            n_grid += len(patches)
            keep = np.arange(len(patches))
            if reject_flat:
                flat = is_flat(patches, flat_threshold)
                n_flat += int(flat.sum())
                keep = keep[~flat]
            if max_per_image and len(keep) > max_per_image:
                keep = keep[np.sort(np.random.default_rng([seed, i]).choice(len(keep), max_per_image, replace=False))]
            if len(keep) == 0:
                continue
            for data, out, h in ((patches, ds, digest), (lr, lr_ds, lr_digest)):
                if data is None:
                    continue
                data = np.stack([dihedral(data[keep], m) for m in modes], axis=1).reshape(-1, *data.shape[1:])
                n0 = out.shape[0]
                out.resize(n0 + len(data), axis=0)
                out[n0:] = data
                h.update(np.ascontiguousarray(data).tobytes())
            sources.append(np.full(len(keep) * len(modes), i, np.int32))
        if ds.shape[0] == 0:
            why = (
                f"all {n_grid} patches are flat (threshold {flat_threshold})"
                if n_grid
                else f"no image is at least {patch_size}x{patch_size}"
            )
            raise MZSRError(f"{out_path}: {why}; nothing to train on")
        count = ds.shape[0]
        source, mode = np.concatenate(sources), np.tile(modes, count // len(modes))
        f.create_dataset("source", data=source)
        f.create_dataset("mode", data=mode)
        for arr in (source, mode):
            digest.update(np.ascontiguousarray(arr).tobytes())
        settings = dict(
            patch_size=patch_size,
            stride=stride,
            max_per_image=max_per_image or 0,
            seed=seed,
            reject_flat=bool(reject_flat),
            flat_threshold=float(flat_threshold),
            store_augmented=bool(store_augmented),
            images=[str(p) for p in paths],
        )
        if lr_scale:
            settings["lr_scale"] = lr_scale
        f.attrs.update(
            format=STORE_FORMAT,
            digest=finish_digest(digest, f, STORE_DATASETS, {"lr_patches": lr_digest} if lr_scale else {}),
            settings=json.dumps(settings, sort_keys=True),
            patch_size=patch_size,
            stride=stride,
            max_per_image=max_per_image or 0,
            seed=seed,
            reject_flat=reject_flat,
            flat_threshold=flat_threshold,
            store_augmented=store_augmented,
            lr_scale=lr_scale or 0,
            grid_patches=n_grid,
            flat_patches=n_flat,
            images=json.dumps([str(p) for p in paths]),
            skipped=json.dumps(skipped),
            provenance=json.dumps(provenance or {}, sort_keys=True),
        )
    return count


STORE_DATASETS = ("patches", "source", "mode")
SEPARATE = ("lr_patches",)  # datasets written beside `patches`, hashed in streams of their own


def finish_digest(digest, f: h5py.File, names, separate: dict | None = None) -> str:
    """The content digest: sha256 of the datasets' bytes in order, then of their names, dtypes, shapes,
    then of the digests of the `separate` datasets (name -> sha256 of its bytes), when there are any."""
    layout = [[n, f[n].dtype.str, list(f[n].shape)] for n in names]
    digest.update(json.dumps(layout).encode())
    for name, h in sorted((separate or {}).items()):
        digest.update(json.dumps([name, f[name].dtype.str, list(f[name].shape), h.hexdigest()]).encode())
    return "sha256:" + digest.hexdigest()


def _hash(ds, digest=None):
    digest = digest or hashlib.sha256()
    for start in range(0, ds.shape[0], _SLAB):
        digest.update(np.ascontiguousarray(ds[start : start + _SLAB]).tobytes())
    return digest


def content_digest(f: h5py.File, names) -> str:
    """Recompute the digest `finish_digest` recorded, reading `_SLAB` rows at a time (the `SEPARATE`
    datasets that the file holds in their own streams)."""
    digest = hashlib.sha256()
    for n in names:
        _hash(f[n], digest)
    return finish_digest(digest, f, names, {n: _hash(f[n]) for n in SEPARATE if n in f})


def open_store(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading with a clear error for missing or corrupt files."""
    try:
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as e:
        raise MZSRError(f"{path}: cannot open HDF5 file ({e}); delete it and rerun the step that makes it") from None


def verify_patch_store(path: str | Path, full: bool | None = None) -> str:
    """Check a patch store against its recorded digest; return the digest.

    `full=None`: in full up to VERIFY_LIMIT bytes on disk. A store that cannot be read or does not
    match is moved aside (`set_aside`) and reported by name, so that the pipeline rebuilds it.
    """
    path = Path(path)
    with open_store(path) as f:
        recorded = f.attrs.get("digest")
        if full is None:
            full = path.stat().st_size <= VERIFY_LIMIT
        if recorded is not None and not full:
            return str(recorded)
        problem = "no content digest: not written by this mzsr" if recorded is None else None
        if problem is None:
            try:
                if content_digest(f, STORE_DATASETS) != recorded:
                    problem = "content digest mismatch"
            except (OSError, KeyError, ValueError) as e:
                problem = f"unreadable ({' '.join(str(e).split())[:120]})"
    if problem is not None:
        aside = set_aside(path, "corrupt")
        raise MZSRError(f"{path}: corrupt patch store ({problem}); moved aside to {aside.name}, rerun to rebuild it")
    return str(recorded)
