"""HDF5 patch stores and meta-learning task shards (write and read), and the training loaders.

Patch store: dataset `patches` (N, P, P, 3) uint8, one chunk per patch so that random access
decompresses only what a batch needs; `source` (N,) int32 image index; `mode` (N,) uint8 flip/rotation
of the patch (0-7, see `dihedral`); provenance as attributes. As the authors' generators do, flat
patches can be dropped and every patch stored in all 8 flips/rotations. A pre-training store also
holds `lr_patches` (N, P/s, P/s, 3) uint8: the same region of the whole image's MATLAB-bicubic
x1/s downscale, rounded to uint8, as the release's TFRecord holds DIV2K's bicubic LR images.
Task shard: the specifications of T tasks, nothing synthesised: `kernel_params` (T, 3) float32
(l1, l2, theta of the task's Gaussian training kernel) and `patches` (T, S+Q) int32 rows of the
patch store, D_tr first. The LR inputs are made from them on the training device at batch time
(mzsr.meta.make_batch): about 76 B a task, 38 MB for the release's 100K x 5 = 500K tasks.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch

from . import MZSRError, MZSRWarning
from .images import read_image_uint8
from .io import atomic_path, set_aside
from .kernels import gaussian_kernels_torch, sample_training_params

STORE_FORMAT = "mzsr-patches/1"
SHARD_FORMAT = "mzsr-tasks/1"
# Patch stores up to this size on disk are verified in full against their digest when a trainer opens
# them (about 1 s per 100 MB); larger ones are checked chunk by chunk as they are read (gzip's adler32).
VERIFY_LIMIT = 2 << 30
_SLAB = 4096  # rows hashed at once

# The authors' generators keep a patch when log(gradient energy + 1e-10) >= -6: the default of the
# config's patches.*.flat_threshold (tests/test_settings.py checks that they agree).
FLAT_THRESHOLD = -6.0


def gradient_energy(patches: np.ndarray) -> np.ndarray:
    """Mean over the [:-1, :-1] region and channels of the squared row and column differences of
    uint8 patches (..., P, P, C) taken to [0, 1]: the authors' `gradients()`."""
    x = patches.astype(np.float64) / 255.0
    corner = x[..., :-1, :-1, :]
    energy = (corner - x[..., 1:, :-1, :]) ** 2 + (corner - x[..., :-1, 1:, :]) ** 2
    return energy.mean(axis=(-3, -2, -1))


def is_flat(patches: np.ndarray, threshold: float = FLAT_THRESHOLD) -> np.ndarray:
    """True for the patches the authors' generators drop: log(gradient energy + 1e-10) < threshold."""
    return np.log(gradient_energy(patches) + 1e-10) < threshold


def dihedral(x: np.ndarray, mode: int) -> np.ndarray:
    """Flip/rotation `mode` (0-7) of (..., H, W, C) arrays, numbered as the release's augmentation():
    `mode // 2` quarter turns (np.rot90), then an up-down flip when `mode` is odd."""
    y = np.rot90(x, mode // 2, axes=(-3, -2))
    return y[..., ::-1, :, :] if mode % 2 else y


def grid_positions(h: int, w: int, patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the patch_size x patch_size crops of an h x w image on a regular grid."""
    return [(y, x) for y in range(0, h - patch_size + 1, stride) for x in range(0, w - patch_size + 1, stride)]


def grid_patches(img: np.ndarray, patch_size: int, stride: int, scale: int = 1) -> np.ndarray:
    """The crops at `grid_positions` of an HxWxC image, (n, P, P, C); with `scale`, the crops of its
    x1/scale version at the same places (corners and size divided by the scale)."""
    h, w = img.shape[:2]
    size = patch_size // scale
    corners = grid_positions(h * scale, w * scale, patch_size, stride)
    if not corners:
        return np.empty((0, size, size, img.shape[2]), img.dtype)
    return np.stack([img[y // scale : y // scale + size, x // scale : x // scale + size] for y, x in corners])


def bicubic_lr(img: np.ndarray, scale: int) -> np.ndarray:
    """The LR image of the release's pre-training pairs: the HR image mod-cropped to the scale, MATLAB
    bicubic x1/scale, rounded to uint8 (what DIV2K_train_LR_bicubic holds)."""
    from .degrade import to_uint8
    from .resize import imresize

    return to_uint8(imresize(img.astype(np.float64) / 255.0, 1.0 / scale))


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """The image cut to a multiple of the scale on each side (bottom and right), as the generators do."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


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
            digest=_finish(digest, f, STORE_DATASETS, {"lr_patches": lr_digest} if lr_scale else {}),
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


def _finish(digest, f: h5py.File, names, separate: dict | None = None) -> str:
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
    """Recompute the digest `_finish` recorded, reading `_SLAB` rows at a time (the `SEPARATE`
    datasets that the file holds in their own streams)."""
    digest = hashlib.sha256()
    for n in names:
        _hash(f[n], digest)
    return _finish(digest, f, names, {n: _hash(f[n]) for n in SEPARATE if n in f})


def open_store(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading with a clear error for missing or corrupt files."""
    try:
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as e:
        raise MZSRError(f"{path}: cannot open HDF5 file ({e}); delete it and rerun the step that makes it") from None


def _legacy(path, kind: str) -> None:
    warnings.warn(
        f"{path}: {kind} has no content digest (written by an older mzsr); not verified", MZSRWarning, stacklevel=3
    )


def verify_patch_store(path: str | Path, full: bool | None = None) -> str | None:
    """Check a patch store against its recorded digest; return the digest (None for an old store).

    `full=None`: in full up to VERIFY_LIMIT bytes on disk. A store that cannot be read or does not
    match is moved aside (`set_aside`) and reported by name, so that the pipeline rebuilds it.
    """
    path = Path(path)
    with open_store(path) as f:
        recorded = f.attrs.get("digest")
        if recorded is None:
            _legacy(path, "patch store")
            return None
        if full is None:
            full = path.stat().st_size <= VERIFY_LIMIT
        if not full:
            return str(recorded)
        try:
            actual = content_digest(f, STORE_DATASETS)
        except (OSError, KeyError, ValueError) as e:
            actual = f"unreadable ({' '.join(str(e).split())[:120]})"
    if actual != recorded:
        aside = set_aside(path, "corrupt")
        problem = actual if actual.startswith("unreadable") else "content digest mismatch"
        raise MZSRError(f"{path}: corrupt patch store ({problem}); moved aside to {aside.name}, rerun to rebuild it")
    return str(recorded)


def write_task_shard(
    patch_store: str | Path,
    out_path: str | Path,
    shard_index: int,
    tasks: int,
    scale: int,
    n_support: int,
    n_query: int,
    seed: int,
) -> None:
    """Draw the specifications of `tasks` meta-learning tasks from rng(seed, shard_index).

    n_support, n_query and seed are the config's tasks settings (their defaults are there: 8, 8, 0).

    Per task, as the release draws them: one training kernel (l1, l2, theta) and S + Q distinct
    patches of the store. The shard records the store's size, so that a pool refuses another store.
    """
    n = n_support + n_query
    if tasks < 0 or n_support < 1 or n_query < 1:
        raise MZSRError(
            f"{out_path}: a shard needs tasks >= 0 and n_support, n_query >= 1 (got {tasks}, {n_support}, {n_query})"
        )
    with open_store(patch_store) as f:
        count, patch_size = f["patches"].shape[:2]
        store_digest = f.attrs.get("digest")
    if patch_size % scale:
        raise MZSRError(f"{patch_store}: meta patch size {patch_size} is not a multiple of the scale {scale}")
    if count < n:
        raise MZSRError(f"{patch_store}: {count} patches, a task needs {n}")
    rng = np.random.default_rng([seed, shard_index])
    params = sample_training_params(rng, scale, tasks).astype(np.float32)
    rows = np.array([rng.choice(count, n, replace=False) for _ in range(tasks)], dtype=np.int32).reshape(tasks, n)
    settings = dict(scale=scale, seed=seed, shard_index=shard_index, tasks=tasks, n_support=n_support, n_query=n_query)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as g:
        g.create_dataset("kernel_params", data=params)
        g.create_dataset("patches", data=rows, compression="gzip", compression_opts=1)
        digest = hashlib.sha256()
        for arr in (params, rows):
            digest.update(np.ascontiguousarray(arr).tobytes())
        g.attrs.update(
            scale=scale,
            seed=seed,
            shard_index=shard_index,
            n_support=n_support,
            n_query=n_query,
            patch_size=patch_size,
            store_patches=count,
            patch_store=str(patch_store),
            format=SHARD_FORMAT,
            digest=_finish(digest, g, ("kernel_params", "patches")),
            settings=json.dumps(settings, sort_keys=True),
        )
        if store_digest is not None:
            g.attrs["store_digest"] = store_digest


def _read_shard(path: Path, store_digest: str | None):
    """(problem, None) for a shard that is unreadable, corrupt or stale; else (None, (params, rows, meta))."""
    try:
        g = h5py.File(path, "r")
    except FileNotFoundError:
        raise MZSRError(f"{path}: task shard not found") from None
    except OSError as e:
        return f"unreadable task shard ({' '.join(str(e).split())[:120]})", None
    try:
        with g:
            params, rows = g["kernel_params"][()], g["patches"][()]
            a = g.attrs
            meta = (
                int(a["scale"]),
                int(a["n_support"]),
                int(a["n_query"]),
                int(a["patch_size"]),
                int(a["store_patches"]),
            )
            recorded, made_from = a.get("digest"), a.get("store_digest")
            actual = content_digest(g, ("kernel_params", "patches")) if recorded is not None else None
    except (OSError, KeyError, ValueError, TypeError) as e:
        return f"unreadable task shard ({' '.join(str(e).split())[:120]})", None
    if recorded is None:
        _legacy(path, "task shard")
    elif actual != recorded:
        return "corrupt task shard (content digest mismatch: bit flip or partial copy)", None
    if store_digest is not None and made_from is not None and made_from != store_digest:
        return "stale task shard (drawn from another version of the patch store)", None
    return None, (params, rows, meta)


class TaskPool:
    """The task specifications of a set of shards (in memory: they are small) and the patch store they
    index, whose HR patches are read at batch time (~10 ms of CPU for a paper meta-batch of 80 patches,
    so even a DIV2K store of ~1M augmented patches, 11 GB, need not fit in memory)."""

    def __init__(self, shard_paths, patch_store):
        self.paths = [Path(p) for p in shard_paths]
        if not self.paths:
            raise MZSRError("meta-training needs at least one task shard")
        store_digest = verify_patch_store(patch_store)
        params, rows, meta, bad = [], [], set(), []
        for p in self.paths:
            problem, shard = _read_shard(p, store_digest)
            if problem:
                bad.append((p, problem))
                continue
            params.append(shard[0])
            rows.append(shard[1])
            meta.add(shard[2])
        stale = [(p, why) for p, why in bad if why.startswith("stale")]
        if stale and len(stale) == len(bad):  # another store was given, or it was rebuilt: nothing is broken
            (first, why), more = stale[0], f" (and {len(stale) - 1} more shards)" if len(stale) > 1 else ""
            raise MZSRError(
                f"{first}: {why}{more}, not from {patch_store}; rerun the task shards (snakemake --forcerun task_shard)"
            )
        if bad:  # every corrupt shard is set aside at once, so that one rerun rebuilds them all
            corrupt = [(p, why) for p, why in bad if not why.startswith("stale")]
            moved = [set_aside(p, "corrupt") for p, _ in corrupt]
            (first, why), more = corrupt[0], f" (and {len(corrupt) - 1} more shards)" if len(corrupt) > 1 else ""
            raise MZSRError(f"{first}: {why}{more}; moved aside to {moved[0].name}, rerun to rebuild it")
        if len(meta) != 1:
            raise MZSRError(f"task shards disagree on (scale, D_tr, D_te, patch size, store size): {sorted(meta)}")
        self.scale, self.n_support, self.n_query, self.patch_size, store_patches = meta.pop()
        self.kernel_params, self.rows = np.concatenate(params), np.concatenate(rows)
        self._file = open_store(patch_store)
        self.store_path = Path(patch_store)
        self.patches = self._file["patches"]
        if self.patches.shape[:2] != (store_patches, self.patch_size):
            raise MZSRError(
                f"{patch_store}: {self.patches.shape[0]} patches of {self.patches.shape[1]}px, but the task shards "
                f"were drawn from a store of {store_patches} of {self.patch_size}px; rerun the task shards"
            )

    def __len__(self) -> int:
        return len(self.rows)

    def close(self) -> None:
        self._file.close()

    def read(self, rows: np.ndarray) -> np.ndarray:
        """HR patches (len(rows), P, P, 3) uint8 of store rows, one read a row: one h5py fancy-indexing
        read of 80 rows costs 7-11x more (benchmarks/speed/tasks.py)."""
        try:
            return np.stack([self.patches[r] for r in np.asarray(rows).tolist()])
        except OSError as e:
            raise MZSRError(
                f"{self.store_path}: cannot read patch rows ({' '.join(str(e).split())[:160]}); the store is"
                " corrupt: delete it and rerun the step that makes it"
            ) from None

    def batch(self, task_ids, device):
        """HR patches (T, S+Q, 3, P, P) in [0, 1] (D_tr first) and kernels (T, k, k) of the tasks, on `device`."""
        ids = np.asarray(task_ids, dtype=np.int64)
        rows = self.rows[ids]
        hr = torch.from_numpy(self.read(rows.ravel())).to(device, non_blocking=True)
        hr = (
            hr.permute(0, 3, 1, 2)
            .contiguous()
            .float()
            .div_(255.0)
            .reshape(*rows.shape, 3, self.patch_size, self.patch_size)
        )
        kernels = gaussian_kernels_torch(torch.from_numpy(self.kernel_params[ids]).to(device)).float()
        return hr, kernels


class PatchDataset(torch.utils.data.Dataset):
    """Random access into the HDF5 patch store; the file is opened once per worker process.

    Items are (index, augmentation) pairs chosen by `StepBatchSampler`, so a run is a pure function
    of (seed, step) and resumes exactly. An item is the HR patch (3, P, P) uint8, or with `with_lr` the
    pair (HR patch, LR patch) of a pre-training store, both in the same flip/rotation.
    """

    def __init__(self, path: str | Path, with_lr: bool = False):
        self.path, self.with_lr = str(path), with_lr
        verify_patch_store(self.path)
        with open_store(self.path) as f:
            self.length = f["patches"].shape[0]
            self.patch_size = f["patches"].shape[1]
            self.lr_scale = int(f.attrs.get("lr_scale", 0)) if "lr_patches" in f else 0
        if with_lr and not self.lr_scale:
            raise MZSRError(
                f"{self.path}: a patch store without LR patches (made by an older mzsr, or for meta-training);"
                " pre-training needs one made with lr_scale: delete it and rerun the step that makes it"
            )
        self._file = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        index, aug = item
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        names = ("patches", "lr_patches") if self.with_lr else ("patches",)
        try:
            out = tuple(
                torch.from_numpy(np.ascontiguousarray(dihedral(self._file[n][index], aug))).permute(2, 0, 1)
                for n in names
            )
        except OSError as e:
            raise MZSRError(
                f"{self.path}: cannot read patch {index} ({' '.join(str(e).split())[:160]}); the store is"
                " corrupt: delete it and rerun the step that makes it"
            ) from None
        return out if self.with_lr else out[0]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..steps-1, a batch of (patch index, flip/rotation).

    The patches are taken in epochs, as the release reads its TFRecord: every patch once per epoch, in
    the order of a permutation drawn from rng(seed, epoch), batch after batch across epoch boundaries.
    Flips/rotations (only with `augment`; the release's pre-training reads patches as stored, mode 0)
    come from rng(seed, step). So a batch is a pure function of (seed, step) and a run resumes exactly.
    """

    def __init__(self, length: int, batch_size: int, seed: int, start: int, steps: int, augment: bool = False):
        self.length, self.batch_size, self.seed, self.start, self.steps = length, batch_size, seed, start, steps
        self.augment = augment
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self.length)
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """The store rows of one step's batch."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = np.divmod(positions, self.length)
        return np.array([self._order(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def __iter__(self):
        for step in range(self.start, self.steps):
            idx = self.indices(step)
            aug = (
                np.random.default_rng([self.seed, step]).integers(0, 8, self.batch_size)
                if self.augment
                else np.zeros(self.batch_size, np.int64)
            )
            yield list(zip(idx.tolist(), aug.tolist()))
