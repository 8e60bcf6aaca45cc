"""HDF5 patch store and meta-learning task shards (write and read), and the training loaders.

Patch store: dataset `patches` (N, P, P, 3) uint8, one chunk per patch so that random access
decompresses only what a batch needs; `source` (N,) int32 image index; provenance as attributes.
Task shard: for T tasks, `kernels` (T, k, k), `hr` (T, S+Q, p, p, 3) uint8, `lr` (T, S+Q, p/s, p/s, 3)
float32 synthesized with the task's kernel, `support` / `query` (T, S) / (T, Q) row indices into
the task's patches, `patch_index` (T, S+Q) rows of the patch store they came from.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from . import MZSRError
from .degrade import degrade
from .images import read_image_uint8
from .io import atomic_path
from .kernels import sample_training_kernel


def grid_patches(img: np.ndarray, patch_size: int, stride: int) -> np.ndarray:
    """All patch_size x patch_size crops of an HxWxC image on a regular grid, (n, P, P, C)."""
    h, w = img.shape[:2]
    if h < patch_size or w < patch_size:
        return np.empty((0, patch_size, patch_size, img.shape[2]), img.dtype)
    ys = range(0, h - patch_size + 1, stride)
    xs = range(0, w - patch_size + 1, stride)
    return np.stack([img[y : y + patch_size, x : x + patch_size] for y in ys for x in xs])


def write_patch_store(
    image_paths,
    out_path: str | Path,
    patch_size: int,
    stride: int,
    max_per_image: int | None,
    seed: int,
    provenance: dict | None = None,
) -> int:
    """Cut HR images into uint8 patches and store them in HDF5 atomically; returns the patch count.

    Images smaller than a patch are skipped (and listed in the `skipped` attribute); when an image
    gives more than `max_per_image` patches, a seeded random subset is kept.
    """
    paths = [Path(p) for p in image_paths]
    if not paths:
        raise MZSRError(f"{out_path}: no training images given")
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        ds = f.create_dataset(
            "patches",
            shape=(0, patch_size, patch_size, 3),
            maxshape=(None, patch_size, patch_size, 3),
            dtype=np.uint8,
            chunks=(1, patch_size, patch_size, 3),
            compression="gzip",
            compression_opts=1,
        )
        sources: list[np.ndarray] = []
        skipped: list[str] = []
        for i, path in enumerate(paths):
            patches = grid_patches(read_image_uint8(path), patch_size, stride)
            if len(patches) == 0:
                skipped.append(path.name)
                continue
            if max_per_image and len(patches) > max_per_image:
                keep = np.sort(np.random.default_rng([seed, i]).choice(len(patches), max_per_image, replace=False))
                patches = patches[keep]
            n0 = ds.shape[0]
            ds.resize(n0 + len(patches), axis=0)
            ds[n0:] = patches
            sources.append(np.full(len(patches), i, np.int32))
        if ds.shape[0] == 0:
            raise MZSRError(f"{out_path}: no image is at least {patch_size}x{patch_size}; nothing to train on")
        f.create_dataset("source", data=np.concatenate(sources))
        f.attrs.update(
            patch_size=patch_size,
            stride=stride,
            max_per_image=max_per_image or 0,
            seed=seed,
            images=json.dumps([str(p) for p in paths]),
            skipped=json.dumps(skipped),
            provenance=json.dumps(provenance or {}, sort_keys=True),
        )
        count = ds.shape[0]
    return count


def open_store(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading with a clear error for missing or corrupt files."""
    try:
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as e:
        raise MZSRError(f"{path}: cannot open HDF5 file ({e}); delete it and rerun the step that makes it") from None


def write_task_shard(
    patch_store: str | Path,
    out_path: str | Path,
    shard_index: int,
    tasks: int,
    scale: int,
    method: str,
    patch_size: int,
    n_support: int = 8,
    n_query: int = 8,
    seed: int = 0,
) -> None:
    """Synthesize `tasks` meta-learning tasks (one training kernel each), reproducible per shard."""
    rng = np.random.default_rng([seed, shard_index])
    n = n_support + n_query
    if patch_size % scale:
        raise MZSRError(f"meta patch size {patch_size} is not a multiple of the scale {scale}")
    with open_store(patch_store) as f:
        patches = f["patches"]
        count, stored = patches.shape[0], patches.shape[1]
        if stored < patch_size:
            raise MZSRError(f"{patch_store}: patches are {stored}px, smaller than the meta patch size {patch_size}")
        if count < n:
            raise MZSRError(f"{patch_store}: {count} patches, a task needs {n}")
        kernels, hrs, lrs, rows = [], [], [], []
        for _ in range(tasks):
            kernel = sample_training_kernel(rng, scale)
            idx = np.sort(rng.choice(count, n, replace=False))
            hr = patches[idx]
            y, x = rng.integers(0, stored - patch_size + 1, size=2)
            hr = hr[:, y : y + patch_size, x : x + patch_size]
            lr = np.stack([degrade(p / 255.0, kernel, scale, method) for p in hr]).astype(np.float32)
            kernels.append(kernel.astype(np.float32))
            hrs.append(hr)
            lrs.append(lr)
            rows.append(idx)
    order = np.stack([rng.permutation(n) for _ in range(tasks)])
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as g:
        g.create_dataset("kernels", data=np.stack(kernels))
        g.create_dataset("hr", data=np.stack(hrs), compression="gzip", compression_opts=1)
        g.create_dataset("lr", data=np.stack(lrs), compression="gzip", compression_opts=1)
        g.create_dataset("support", data=order[:, :n_support].astype(np.int16))
        g.create_dataset("query", data=order[:, n_support:].astype(np.int16))
        g.create_dataset("patch_index", data=np.stack(rows).astype(np.int64))
        g.attrs.update(scale=scale, method=method, seed=seed, shard_index=shard_index, patch_size=patch_size,
                       patch_store=str(patch_store))


class TaskPool:
    """All tasks of a set of shards in memory (they are small): support/query LR and HR as tensors."""

    def __init__(self, shard_paths):
        self.paths = [Path(p) for p in shard_paths]
        if not self.paths:
            raise MZSRError("meta-training needs at least one task shard")
        lr_s, hr_s, lr_q, hr_q, meta = [], [], [], [], set()
        for p in self.paths:
            with open_store(p) as g:
                lr, hr = g["lr"][()], g["hr"][()]
                sup, qry = g["support"][()].astype(np.int64), g["query"][()].astype(np.int64)
                meta.add((int(g.attrs["scale"]), str(g.attrs["method"]), int(g.attrs["patch_size"])))
            take = lambda a, i: np.take_along_axis(a, i.reshape(i.shape + (1,) * (a.ndim - 2)), axis=1)  # noqa: E731
            lr_s.append(take(lr, sup)), lr_q.append(take(lr, qry))
            hr_s.append(take(hr, sup)), hr_q.append(take(hr, qry))
        if len(meta) != 1:
            raise MZSRError(f"task shards disagree on (scale, method, patch size): {sorted(meta)}")
        self.scale, self.method, self.patch_size = meta.pop()
        to_t = lambda a: torch.from_numpy(np.concatenate(a)).permute(0, 1, 4, 2, 3).contiguous()  # noqa: E731
        self.support_lr, self.query_lr = to_t(lr_s).float(), to_t(lr_q).float()  # (T, S, 3, h, w)
        self.support_hr, self.query_hr = to_t(hr_s), to_t(hr_q)  # uint8 (T, S, 3, p, p)

    def __len__(self) -> int:
        return self.support_lr.shape[0]

    def batch(self, task_ids, device):
        """(support LR, support HR, query LR, query HR) for the given tasks, HR as float in [0, 1]."""
        ids = torch.as_tensor(task_ids, dtype=torch.long)
        f = lambda t: t[ids].to(device, non_blocking=True)  # noqa: E731
        return (f(self.support_lr), f(self.support_hr).float() / 255.0, f(self.query_lr), f(self.query_hr).float() / 255.0)


class PatchDataset(torch.utils.data.Dataset):
    """Random access into the HDF5 patch store; the file is opened once per worker process.

    Items are (index, augmentation) pairs chosen by `StepBatchSampler`, so a run is a pure function
    of (seed, step) and resumes exactly.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        with open_store(self.path) as f:
            self.length = f["patches"].shape[0]
            self.patch_size = f["patches"].shape[1]
        self._file = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        index, aug = item
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        patch = self._file["patches"][index]
        if aug & 1:
            patch = patch[:, ::-1]
        if aug & 2:
            patch = patch[::-1]
        if aug & 4:
            patch = patch.transpose(1, 0, 2)
        return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..steps-1, a batch of (patch index, augmentation) drawn from rng(seed, step)."""

    def __init__(self, length: int, batch_size: int, seed: int, start: int, steps: int):
        self.length, self.batch_size, self.seed, self.start, self.steps = length, batch_size, seed, start, steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        for step in range(self.start, self.steps):
            rng = np.random.default_rng([self.seed, step])
            idx = rng.integers(0, self.length, self.batch_size)
            aug = rng.integers(0, 8, self.batch_size)
            yield list(zip(idx.tolist(), aug.tolist()))
