import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from mzsr.checkpoints import load_weights
from mzsr.data import PatchDataset, StepBatchSampler, grid_patches
from mzsr.pretrain import bicubic_pair
from mzsr.resize import imresize
from mzsr.training import step_lr
from training_helpers import make_training_data

MICRO = {"steps": 6, "batch_size": 4, "patch_size": 24, "lr": 1e-3, "lr_halve_every": 2, "lr_min": 3e-4,
         "checkpoint_every": 3, "log_every": 1, "seed": 5, "num_workers": 0, "scale": 2}


def test_lr_schedule_halves_down_to_floor():
    assert [step_lr(s, 4e-4, 100_000, 1e-4) for s in (0, 99_999, 100_000, 200_000, 400_000)] == [4e-4, 4e-4, 2e-4, 1e-4, 1e-4]


def test_bicubic_pair_matches_numpy():
    hr = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    x = bicubic_pair(hr, 2)
    ref = imresize(imresize(hr[1].permute(1, 2, 0).numpy(), 0.5), 2)
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), ref, atol=1e-10)


def test_patch_store_contents(tmp_path):
    store, _, _ = make_training_data(tmp_path, shards=1, tasks=2)
    with h5py.File(store) as f:
        patches = f["patches"]
        assert patches.dtype == np.uint8 and patches.shape[1:] == (24, 24, 3)
        assert patches.chunks == (1, 24, 24, 3) and patches.compression == "gzip"
        assert patches.shape[0] == 4 * 6  # capped at 6 per image (12 on the grid)
        assert f.attrs["patch_size"] == 24 and "test" in f.attrs["provenance"]
    assert len(grid_patches(np.zeros((40, 48, 3)), 24, 8)) == 3 * 4


def test_sampler_is_pure_in_step_and_augments_only_when_asked(tmp_path):
    store, _, _ = make_training_data(tmp_path, shards=1, tasks=2)
    full = list(StepBatchSampler(24, 4, 1, 0, 5, augment=True))
    tail = list(StepBatchSampler(24, 4, 1, 3, 5, augment=True))
    assert full[3:] == tail
    assert len({aug for batch in full for _, aug in batch}) > 1
    plain = list(StepBatchSampler(24, 4, 1, 0, 5))  # the release: patches as stored
    assert [[i for i, _ in b] for b in plain] == [[i for i, _ in b] for b in full]
    assert {aug for batch in plain for _, aug in batch} == {0}
    ds = PatchDataset(store)
    with h5py.File(store) as f:
        raw = f["patches"][2]
    np.testing.assert_array_equal(ds[(2, 0)].permute(1, 2, 0).numpy(), raw)
    np.testing.assert_array_equal(ds[(2, 1)].permute(1, 2, 0).numpy(), raw[::-1])  # the release's modes
    np.testing.assert_array_equal(ds[(2, 2)].permute(1, 2, 0).numpy(), np.rot90(raw))


def _run(root, store, name, kill_after=None, cfg=MICRO):
    code = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from mzsr.pretrain import pretrain
        def hook(step):
            if step == {kill_after!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        pretrain({str(store)!r}, {str(root / (name + '.safetensors'))!r}, {cfg!r}, {str(root / name)!r},
                 {str(root / (name + '.csv'))!r}, device="cpu", on_step=hook)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})


@pytest.mark.slow
def test_pretraining_learns_and_resumes_identically(tmp_path):
    store, _, _ = make_training_data(tmp_path, shards=1, tasks=2)
    assert _run(tmp_path, store, "full").returncode == 0
    killed = _run(tmp_path, store, "resumed", kill_after=5)
    assert killed.returncode == -9 and not (tmp_path / "resumed.safetensors").exists()
    done = _run(tmp_path, store, "resumed")
    assert done.returncode == 0, done.stderr
    a, meta = load_weights(tmp_path / "full.safetensors")
    b, _ = load_weights(tmp_path / "resumed.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert meta["step"] == 6 and meta["degradation"] == "bicubic"
    rows = [r.split(",") for r in (tmp_path / "full.csv").read_text().splitlines()[1:]]
    assert [float(r[2]) for r in rows] == [1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4]
    log = (tmp_path / "resumed.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4", "5", "6"]


@pytest.mark.slow
def test_pretraining_reduces_loss(tmp_path):
    store, _, _ = make_training_data(tmp_path, shards=1, tasks=2)
    cfg = {**MICRO, "steps": 40, "lr": 2e-3, "lr_halve_every": 1000, "checkpoint_every": 40}
    assert _run(tmp_path, store, "long", cfg=cfg).returncode == 0
    losses = [float(r.split(",")[1]) for r in (tmp_path / "long.csv").read_text().splitlines()[1:]]
    # The residual net starts near bicubic interpolation; 40 steps must already improve on it clearly.
    assert np.mean(losses[-5:]) < 0.93 * np.mean(losses[:5])
