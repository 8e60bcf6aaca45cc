"""Patch stores as the authors' generators make them, and task shards whose LR is made at batch time."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mzsr import MZSRError
from mzsr.data.patches import dihedral, gradient_energy, is_flat
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import TaskPool, write_task_shard
from mzsr.degradation.degrade import degrade
from mzsr.degradation.kernels import gaussian_kernel, gaussian_kernels_torch
from mzsr.degradation.resize import imresize
from mzsr.files.images import write_png
from mzsr.training.meta import make_batch
from training_helpers import make_training_data


def ramp(step: int, size: int = 16) -> np.ndarray:
    """A uint8 patch rising by `step` levels per column: gradient energy exactly (step / 255)^2."""
    row = np.arange(size) * step
    return np.broadcast_to(row[None, :, None], (size, size, 3)).astype(np.uint8)


def test_flat_criterion_and_its_exact_threshold():
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x = patch / 255.0  # the definition, written with np.diff: rows and columns of the [:-1, :-1] corner
    expected = (np.diff(x, axis=1)[:, :, :-1] ** 2 + np.diff(x, axis=2)[:, :-1, :] ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(gradient_energy(patch), expected, rtol=1e-12)
    constant = np.full((16, 16, 3), 128, np.uint8)
    assert gradient_energy(constant) == 0 and is_flat(constant)  # log(1e-10) = -23 < -6
    assert not is_flat(patch).any()  # noise: energy ~ 1/3
    # log((12/255)^2) = -6.113 is below -6, log((13/255)^2) = -5.953 is not: the boundary sits between them
    assert gradient_energy(ramp(12)) == pytest.approx((12 / 255) ** 2, rel=1e-12)
    assert is_flat(ramp(12)) and not is_flat(ramp(13))
    assert not is_flat(ramp(12), threshold=-6.2) and is_flat(ramp(13), threshold=-5.9)


def test_store_drops_flat_patches_and_counts_them(tmp_path):
    img = np.zeros((16, 48, 3), np.uint8)
    img[:, :16] = ramp(13)  # kept
    img[:, 16:32] = 77  # flat
    img[:, 32:] = ramp(12)  # flat, just
    write_png(tmp_path / "a.png", img / 255.0)
    kept = write_patch_store([tmp_path / "a.png"], tmp_path / "s.h5", 16, 16, None, 0, reject_flat=True)
    everything = write_patch_store([tmp_path / "a.png"], tmp_path / "all.h5", 16, 16, None, 0)
    assert (kept, everything) == (1, 3)
    with h5py.File(tmp_path / "s.h5") as f:
        np.testing.assert_array_equal(f["patches"][0], ramp(13))
        assert (f.attrs["grid_patches"], f.attrs["flat_patches"], f.attrs["reject_flat"]) == (3, 2, True)
    with pytest.raises(MZSRError, match="all 1 patches are flat"):
        write_png(tmp_path / "flat.png", np.full((16, 16, 3), 0.5))
        write_patch_store([tmp_path / "flat.png"], tmp_path / "none.h5", 16, 16, None, 0, reject_flat=True)


def test_stored_augmentations_are_the_8_dihedral_transforms(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img / 255.0)
    n = write_patch_store([tmp_path / "a.png"], tmp_path / "s.h5", 16, 16, None, 0, store_augmented=True)
    assert n == 2 * 8
    with h5py.File(tmp_path / "s.h5") as f:
        stored, modes, source = f["patches"][()], f["mode"][()], f["source"][()]
    np.testing.assert_array_equal(modes, np.tile(np.arange(8), 2))
    assert (source == 0).all()
    for k, p in enumerate((img[:, :16], img[:, 16:])):
        group = stored[8 * k : 8 * k + 8]
        # the dihedral group of the square, generated independently: transpose x the four flips
        expected = {q.tobytes() for t in (p, p.transpose(1, 0, 2)) for q in (t, t[::-1], t[:, ::-1], t[::-1, ::-1])}
        assert {q.tobytes() for q in group} == expected and len(expected) == 8
        # numbered as the release's augmentation(): 1 flipud, 2 rot90, 3 flipud(rot90), ..., 7 flipud(rot90^3)
        np.testing.assert_array_equal(group[1], np.flipud(p))
        np.testing.assert_array_equal(group[2], np.rot90(p, 1))
        np.testing.assert_array_equal(group[3], np.flipud(np.rot90(p, 1)))
        np.testing.assert_array_equal(group[6], np.rot90(p, 3))
        for m in range(8):
            np.testing.assert_array_equal(group[m], dihedral(p, m))


def test_kernel_twin_matches_gaussian_kernel():
    rng = np.random.default_rng(2)
    params = np.stack([rng.uniform(1, 5, 20), rng.uniform(0.2, 1, 20), rng.uniform(0, np.pi, 20)], axis=1)
    params[:, 1] *= params[:, 0]  # l2 <= l1
    params = np.concatenate([params, [[4.0, 1.0, -np.pi / 4], [0.2, 0.2, 0.0]]]).astype(np.float32)
    twin = gaussian_kernels_torch(torch.from_numpy(params))
    assert twin.dtype == torch.float64 and twin.shape == (22, 15, 15)
    for p, k in zip(params.astype(np.float64), twin.numpy()):
        ref = gaussian_kernel(*p)
        np.testing.assert_allclose(k, ref, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(k.astype(np.float32), ref.astype(np.float32), rtol=1e-6, atol=1e-9)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_training_data(tmp_path_factory.mktemp("data"), shards=3, tasks=40)


@pytest.mark.parametrize("method", ["direct", "bicubic"])
def test_synthesised_lr_equals_numpy_degrade(data, method):
    _, meta_store, shards = data
    pool = TaskPool(shards, meta_store)
    ids = [3, 41, 97]  # one task of each shard
    sx, sy, qx, qy = make_batch(pool, ids, "cpu", method)
    assert sx.shape == qx.shape == sy.shape == (3, 2, 3, 16, 16) and sx.dtype == torch.float32
    with h5py.File(meta_store) as f:
        patches = f["patches"][()]
    for t, task in enumerate(ids):
        kernel = gaussian_kernel(*pool.kernel_params[task].astype(np.float64))
        for j, row in enumerate(pool.rows[task]):
            hr = patches[row] / 255.0
            x = (sx if j < 2 else qx)[t, j % 2].permute(1, 2, 0).numpy()
            y = (sy if j < 2 else qy)[t, j % 2].permute(1, 2, 0).numpy()
            np.testing.assert_allclose(y, hr, atol=1e-7)
            expected = imresize(degrade(hr, kernel, 2, method), scale=2, output_shape=(16, 16))
            np.testing.assert_allclose(x, expected, atol=1e-5)
    pool.close()


def test_two_shards_never_give_the_same_task(data, tmp_path):
    _, meta_store, shards = data
    specs = []
    for path in shards:
        with h5py.File(path) as g:
            params, rows = g["kernel_params"][()], g["patches"][()]
        assert params.shape == (40, 3) and rows.shape == (40, 4) and rows.dtype == np.int32
        assert all(len(set(r)) == 4 for r in rows)  # a task's patches are distinct
        specs += [p.tobytes() + r.tobytes() for p, r in zip(params, rows)]
    assert len(set(specs)) == len(specs) == 120
    kernels = {s[:12] for s in specs}
    assert len(kernels) == 120  # not even one kernel repeats
    write_task_shard(meta_store, tmp_path / "again.h5", 1, 40, 2, 2, 2, seed=0)
    with h5py.File(shards[1]) as a, h5py.File(tmp_path / "again.h5") as b:
        for key in ("kernel_params", "patches"):
            np.testing.assert_array_equal(a[key][()], b[key][()])


def test_pool_refuses_shards_of_another_store(data, tmp_path):
    store, _, shards = data
    with pytest.raises(MZSRError, match="rerun the task shards"):
        TaskPool(shards, store)


def test_pool_reads_rows_in_any_order(data):
    _, meta_store, shards = data
    pool = TaskPool(shards, meta_store)
    rows = np.array([5, 2, 5, 0, 190])
    with h5py.File(meta_store) as f:
        np.testing.assert_array_equal(pool.read(rows), np.stack([f["patches"][r] for r in rows]))
    pool.close()
