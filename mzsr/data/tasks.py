"""Meta-learning task shards (kernel parameters and patch-store rows of each task) and `TaskPool`,
which reads the tasks of many shards back as batches on the training device.

Task shard: the specifications of T tasks, nothing synthesised: `kernel_params` (T, 3) float32
(l1, l2, theta of the task's Gaussian training kernel) and `patches` (T, S+Q) int32 rows of the
patch store, D_tr first. The LR inputs are made from them on the training device at batch time
(mzsr.training.meta.make_batch): about 76 B a task, 38 MB for the release's 100K x 5 = 500K tasks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from mzsr import MZSRError
from mzsr.data.stores import content_digest, finish_digest, open_store, verify_patch_store
from mzsr.degradation.kernels import gaussian_kernels_torch, sample_training_params
from mzsr.files.atomic import atomic_path, set_aside

SHARD_FORMAT = "mzsr-tasks/1"


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
            digest=finish_digest(digest, g, ("kernel_params", "patches")),
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
        return "task shard without a content digest (not written by this mzsr)", None
    if actual != recorded:
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
        read of 80 rows costs 7-11x more (benchmarks/speed/tasks.py, last in
        commit 43a7979)."""
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
