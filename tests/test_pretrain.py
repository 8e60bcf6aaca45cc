import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from mzsr import MZSRError
from mzsr.data.datasets import PatchDataset, StepBatchSampler
from mzsr.data.patches import grid_patches
from mzsr.data.stores import write_patch_store
from mzsr.degradation.resize import imresize
from mzsr.files.checkpoints import load_weights
from mzsr.files.images import read_image_uint8, write_png
from mzsr.network.model import MZSRNet, init_release_
from mzsr.training.pretrain import network_input
from mzsr.training.state import step_lr
from conftest import smooth_image
from training_helpers import make_training_data

MICRO = {
    "steps": 6,
    "batch_size": 4,
    "patch_size": 24,
    "lr": 1e-3,
    "lr_halve_every": 2,
    "lr_min": 3e-4,
    "checkpoint_every": 3,
    "log_every": 1,
    "seed": 5,
    "num_workers": 0,
    "scale": 2,
}


def test_lr_schedule_halves_down_to_floor():
    assert [step_lr(s, 4e-4, 100_000, 1e-4) for s in (0, 99_999, 100_000, 200_000, 400_000)] == [
        4e-4,
        4e-4,
        2e-4,
        1e-4,
        1e-4,
    ]


def test_network_input_is_the_release_bicubic_upscale():
    lr = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    x = network_input(lr, 2, (24, 24))
    ref = imresize(lr[1].permute(1, 2, 0).numpy(), 2)  # the release: imresize(input, scale=2, kernel='cubic')
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy(), ref, atol=1e-10)


def test_pretraining_pairs_are_the_release_quantised_whole_image_lr(tmp_path):
    """As the release's generator pairs DIV2K HR with DIV2K_train_LR_bicubic: the image mod-cropped to
    the scale, the LR of the WHOLE image (MATLAB bicubic x1/2) rounded to uint8, each LR patch cut at
    (y/2, x/2); in every stored flip/rotation the two stay a pair."""
    img = smooth_image(43, 53, seed=3)  # odd sizes: mod-cropped to 42 x 52
    write_png(tmp_path / "a.png", img)
    n = write_patch_store([tmp_path / "a.png"], tmp_path / "s.h5", 16, 8, None, 0, store_augmented=True, lr_scale=2)
    hr_img = read_image_uint8(tmp_path / "a.png")[:42, :52]
    lr_img = np.round(np.clip(imresize(hr_img / 255.0, 0.5), 0, 1) * 255).astype(np.uint8)  # restated
    corners = [(y, x) for y in range(0, 42 - 15, 8) for x in range(0, 52 - 15, 8)]
    assert n == 8 * len(corners)
    with h5py.File(tmp_path / "s.h5") as f:
        hr, lr = f["patches"][()], f["lr_patches"][()]
        assert lr.shape == (n, 8, 8, 3) and f.attrs["lr_scale"] == 2
    for i, (y, x) in enumerate(corners):
        np.testing.assert_array_equal(hr[8 * i], hr_img[y : y + 16, x : x + 16])
        np.testing.assert_array_equal(lr[8 * i], lr_img[y // 2 : y // 2 + 8, x // 2 : x // 2 + 8])
        np.testing.assert_array_equal(lr[8 * i + 3], np.rot90(lr_img[y // 2 : y // 2 + 8, x // 2 : x // 2 + 8])[::-1])
    # the whole-image LR is not the patch's own downscale: the borders differ (the release's is the former)
    own = np.round(np.clip(imresize(hr[8] / 255.0, 0.5), 0, 1) * 255).astype(np.uint8)
    assert (own != lr[8]).any() and (own[2:-2, 2:-2] == lr[8][2:-2, 2:-2]).all()
    ds = PatchDataset(tmp_path / "s.h5", with_lr=True)
    got_hr, got_lr = ds[(8, 0)]
    np.testing.assert_array_equal(got_lr.permute(1, 2, 0).numpy(), lr[8])
    np.testing.assert_array_equal(got_hr.permute(1, 2, 0).numpy(), hr[8])
    with pytest.raises(MZSRError, match="patch size and stride divisible by the scale"):
        write_patch_store([tmp_path / "a.png"], tmp_path / "t.h5", 16, 7, None, 0, lr_scale=2)
    write_patch_store([tmp_path / "a.png"], tmp_path / "meta.h5", 16, 8, None, 0)
    with pytest.raises(MZSRError, match="without LR patches"):
        PatchDataset(tmp_path / "meta.h5", with_lr=True)


def test_sampler_takes_every_patch_once_per_epoch():
    """As the release reads its TFRecord: epochs of all the patches, batches running across epoch ends."""
    sampler = StepBatchSampler(10, 4, seed=2, start=0, steps=5)
    rows = [i for batch in sampler for i, _ in batch]
    assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:20]) == list(range(10))
    assert rows[:10] != rows[10:20]  # each epoch in an order of its own
    np.testing.assert_array_equal(StepBatchSampler(10, 4, 2, 3, 5).indices(3), rows[12:16])


def test_release_initialisation():
    """tf.variance_scaling_initializer() of TF-1: N(0, 1 / fan_in) truncated at 2 std, biases zero."""
    torch.manual_seed(0)
    model = init_release_(MZSRNet())
    for conv in model.convs:
        w, fan_in = conv.weight.detach(), 9 * conv.in_channels
        assert (conv.bias == 0).all()
        assert w.std().item() == pytest.approx(fan_in**-0.5, rel=0.05 if w.numel() > 10_000 else 0.2)
        assert w.abs().max().item() <= 2 * fan_in**-0.5 / 0.87962566103423978


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
        from mzsr.training.pretrain import pretrain
        def hook(step):
            if step == {kill_after!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        pretrain({str(store)!r}, {str(root / (name + ".safetensors"))!r}, {cfg!r}, {str(root / name)!r},
                 {str(root / (name + ".csv"))!r}, device="cpu", on_step=hook)
    """)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"}
    )


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


def _restated_pretraining(store, cfg, tf1: bool = True) -> dict:
    """The release's Large-Scale_Training step in float64: input imresize(LR, 2, 'cubic') of the stored
    uint8 LR, L1 as tf.losses.absolute_difference (the mean), the staircase lr, and TF-1's Adam written
    out (tf1=False: PyTorch's Adam instead), on the sampler's batches, from the release's initialisation."""
    torch.manual_seed(cfg["seed"])
    model = init_release_(MZSRNet()).double()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    m, v = [torch.zeros_like(p) for p in theta], [torch.zeros_like(p) for p in theta]
    with h5py.File(store) as f:
        hr_all, lr_all = f["patches"][()], f["lr_patches"][()]
    for step, batch in enumerate(StepBatchSampler(len(hr_all), cfg["batch_size"], cfg["seed"], 0, cfg["steps"])):
        rows = [i for i, _ in batch]
        hr = torch.from_numpy(hr_all[rows]).permute(0, 3, 1, 2).double() / 255
        x = torch.stack([torch.from_numpy(imresize(lr / 255.0, 2)).permute(2, 0, 1) for lr in lr_all[rows]])
        params = [p.requires_grad_(True) for p in theta]
        out = torch.func.functional_call(model, dict(zip(names, params)), (x,))
        grads = torch.autograd.grad((out - hr).abs().mean(), params)
        lr, t = max(cfg["lr"] * 0.5 ** (step // cfg["lr_halve_every"]), cfg["lr_min"]), step + 1
        with torch.no_grad():
            for i, g in enumerate(grads):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                if tf1:  # lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); theta -= lr_t m / (sqrt(v) + eps)
                    theta[i] = theta[i] - lr * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t) * m[i] / (v[i].sqrt() + 1e-8)
                else:
                    theta[i] = theta[i] - lr * (m[i] / (1 - 0.9**t)) / ((v[i] / (1 - 0.999**t)).sqrt() + 1e-8)
    return {n: p.detach() for n, p in zip(names, theta)}


def test_pretraining_steps_are_the_release_step_restated(tmp_path):
    """Three float32 steps of `pretrain` follow the release's step (re-stated in float64): the updates
    agree to float32's floor (TF-1's Adam passes tiny gradients' rounding on: a norm, not each weight);
    PyTorch's Adam on the same data is another update."""
    store, _, _ = make_training_data(tmp_path, shards=1, tasks=2)
    cfg = {**MICRO, "steps": 3, "checkpoint_every": 3, "lr_halve_every": 2}
    from mzsr.training.pretrain import pretrain

    pretrain(store, tmp_path / "w.safetensors", cfg, tmp_path / "work", tmp_path / "log.csv", device="cpu")
    got, _ = load_weights(tmp_path / "w.safetensors")
    torch.manual_seed(cfg["seed"])
    start = {n: p.detach().double() for n, p in init_release_(MZSRNet()).named_parameters()}

    def update_error(want: dict) -> float:
        diff = sum(((got[n].double() - w) ** 2).sum() for n, w in want.items())
        return float((diff / sum(((w - start[n]) ** 2).sum() for n, w in want.items())).sqrt())

    assert update_error(_restated_pretraining(store, cfg)) < 1e-2  # 3e-3 here; PyTorch's Adam: 0.19
    assert update_error(_restated_pretraining(store, cfg, tf1=False)) > 0.1
