"""Tiny but real training data for trainer tests: synthetic images -> patch stores -> task shards."""

from __future__ import annotations

from pathlib import Path

from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import write_task_shard
from mzsr.files.images import write_png
from conftest import smooth_image


def make_training_data(root: Path, patch_size: int = 24, shards: int = 2, tasks: int = 6, meta_patch: int = 16):
    """(pre-training store, meta store, task shards): the meta store as the release's (flat patches
    dropped, 8 flips/rotations of each), `shards` shards of `tasks` tasks of 2 + 2 patches."""
    images = []
    for i in range(4):
        p = root / "hr" / f"img{i}.png"
        write_png(p, smooth_image(40, 48, seed=i))
        images.append(p)
    store = root / "patches.h5"
    write_patch_store(images, store, patch_size, 8, 6, seed=0, provenance={"test": True}, lr_scale=2)
    meta_store = root / "meta.h5"
    write_patch_store(images, meta_store, meta_patch, 8, 6, seed=1, reject_flat=True, store_augmented=True)
    shard_paths = []
    for s in range(shards):
        out = root / f"shard{s}.h5"
        write_task_shard(meta_store, out, s, tasks, 2, n_support=2, n_query=2, seed=0)
        shard_paths.append(out)
    return store, meta_store, shard_paths
