"""The project's own stores carry a content digest and their settings.

Patch stores and task shards (HDF5: a `digest` attribute over their datasets, `settings` as JSON)
and training checkpoints (last.pt: a digest over its tensors and values, and the digest of the
run's settings.json) are checked when read. A truncated or bit-flipped store or shard is reported
by name and moved aside (`<name>.corrupt`), so that the pipeline's rerun rebuilds it instead of
training on it; a shard drawn from another patch store is stale and says to rerun the shards. A bad
checkpoint is set aside as last.pt.bad with a one-line warning and training starts over (a checkpoint
only saves time; restarting is always right, and an error would only make the user delete it).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from mzsr import MZSRError, MZSRWarning, error_line
from mzsr.data.datasets import PatchDataset
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import TaskPool, write_task_shard
from mzsr.training.state import bind_settings, latest_checkpoint, save_training_state
from training_helpers import make_training_data


def flip_bit(path: Path, dataset: str, at: int = 5) -> None:
    """Flip one bit inside an uncompressed dataset's bytes, as a bad disk or copy would."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + at] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.fixture()
def data(tmp_path):
    return make_training_data(tmp_path, shards=2, tasks=4)


STORE_CASES = {"bit flip": lambda p: flip_bit(p, "source"), "truncated": truncate}


@pytest.mark.parametrize("case", STORE_CASES)
def test_bad_patch_store_is_named_and_moved_aside(data, case):
    store = data[0]
    STORE_CASES[case](store)
    with pytest.raises(MZSRError) as e:
        PatchDataset(store)
    line = error_line(e.value)
    assert line.startswith(f"mzsr: error: {store}: "), line
    if case == "bit flip":
        assert (
            "corrupt patch store (content digest mismatch); moved aside to patches.h5.corrupt, rerun to rebuild it"
            in line
        )
        assert not store.exists() and store.with_name("patches.h5.corrupt").exists()
    else:
        assert "cannot open HDF5 file" in line and "delete it and rerun" in line


SHARD_CASES = {"bit flip": lambda p: flip_bit(p, "kernel_params"), "truncated": truncate}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_bad_task_shard_is_named_and_moved_aside_for_the_rerun(data, case):
    _, meta_store, shards = data
    SHARD_CASES[case](shards[1])
    with pytest.raises(MZSRError) as e:
        TaskPool(shards, meta_store)
    line = error_line(e.value)
    problem = "corrupt task shard (content digest mismatch" if case == "bit flip" else "unreadable task shard ("
    assert line.startswith(f"mzsr: error: {shards[1]}: {problem}") and "moved aside to shard1.h5.corrupt" in line, line
    assert not shards[1].exists() and shards[0].exists()  # a missing input: Snakemake's rerun rebuilds it
    write_task_shard(meta_store, shards[1], 1, 4, 2, n_support=2, n_query=2, seed=0)  # what that rerun does
    pool = TaskPool(shards, meta_store)
    assert len(pool) == 8
    pool.close()


def test_shard_of_a_rebuilt_patch_store_is_stale(data, tmp_path):
    _, meta_store, shards = data
    images = sorted((tmp_path / "hr").glob("*.png"))
    write_patch_store(images, meta_store, 16, 8, 6, seed=9, reject_flat=True, store_augmented=True)  # other patches
    with pytest.raises(
        MZSRError,
        match=r"shard0\.h5: stale task shard \(drawn from another version of the patch store\)"
        r" \(and 1 more shards\), not from .*; rerun the task shards",
    ):
        TaskPool(shards, meta_store)
    assert all(s.exists() for s in shards)  # nothing is broken: not moved


def test_the_stores_record_their_settings(data):
    store, meta_store, shards = data
    with h5py.File(meta_store) as f:
        assert f.attrs["format"] == "mzsr-patches/1" and f.attrs["digest"].startswith("sha256:")
        assert json.loads(f.attrs["settings"])["patch_size"] == 16
        store_digest = f.attrs["digest"]
    with h5py.File(shards[0]) as g:
        assert json.loads(g.attrs["settings"]) == {
            "scale": 2,
            "seed": 0,
            "shard_index": 0,
            "tasks": 4,
            "n_support": 2,
            "n_query": 2,
        }
        assert g.attrs["store_digest"] == store_digest


# ------------------------------------------------------------------------------------ training checkpoints


def _checkpoint(work: Path) -> None:
    from mzsr.network.model import MZSRNet

    torch.manual_seed(0)
    model = MZSRNet()
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 3, 8, 8)).mean().backward()
    opt.step()
    save_training_state(work, 3, model, opt)


def _flip_tensor_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # in the middle of the tensor data (the zip's records are stored uncompressed)
    path.write_bytes(bytes(data))


CHECKPOINT_CASES = {
    "truncated": (truncate, "unreadable training checkpoint"),
    "bit flip": (_flip_tensor_byte, "corrupt training checkpoint (content digest mismatch)"),
    "stale (other inputs)": (
        lambda p: bind_settings(p.parent, {"inputs": {"patches": "sha256:other"}}),
        "stale training checkpoint (made with other settings or inputs than this run's)",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint_is_set_aside_with_a_warning_and_training_starts_over(tmp_path, case):
    work = tmp_path / "work"
    bind_settings(work, {"inputs": {"patches": "sha256:one"}})
    _checkpoint(work)
    assert latest_checkpoint(work) == work / "last.pt"
    damage, problem = CHECKPOINT_CASES[case]
    damage(work / "last.pt")
    with pytest.warns(MZSRWarning) as said:
        assert latest_checkpoint(work) is None
    (message,) = [str(w.message) for w in said]
    assert message.startswith(f"{work / 'last.pt'}: {problem}") and message.endswith(
        "; set aside as last.pt.bad, training starts over"
    )
    assert sorted(p.name for p in work.iterdir()) == ["last.pt.bad", "settings.json"]


def test_pretraining_restarts_after_a_truncated_checkpoint_to_the_same_weights(tmp_path):
    from mzsr.files.checkpoints import load_weights
    from mzsr.training.pretrain import pretrain

    store, _, _ = make_training_data(tmp_path, shards=0)
    cfg = {"steps": 3, "batch_size": 2, "patch_size": 24, "checkpoint_every": 1, "log_every": 1, "num_workers": 0}
    pretrain(store, tmp_path / "a.safetensors", cfg, tmp_path / "a", tmp_path / "a.csv", device="cpu")
    truncate(tmp_path / "a" / "last.pt")
    with pytest.warns(MZSRWarning, match="unreadable training checkpoint.*training starts over"):
        pretrain(store, tmp_path / "b.safetensors", cfg, tmp_path / "a", tmp_path / "b.csv", device="cpu")
    a, _ = load_weights(tmp_path / "a.safetensors")
    b, meta = load_weights(tmp_path / "b.safetensors")
    assert meta["step"] == 3 and all(torch.equal(a[k], b[k]) for k in a)


def test_meta_training_script_names_a_bit_flipped_shard_and_leaves_it_for_the_rerun(data, tmp_path, monkeypatch):
    """The rule script, in-process: one error line naming the shard, and the shard out of the way so
    that Snakemake's rerun (the same command) makes it again before meta-training."""
    from mzsr.files.checkpoints import save_weights
    from mzsr.network.model import MZSRNet
    from script_runner import run_script

    _, meta_store, shards = data
    save_weights(tmp_path / "theta_T.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "bicubic"})
    flip_bit(shards[0], "kernel_params")
    job = dict(
        input={
            "weights": str(tmp_path / "theta_T.safetensors"),
            "shards": [str(s) for s in shards],
            "patches": str(meta_store),
        },
        output={"weights": str(tmp_path / "meta.safetensors"), "log_csv": str(tmp_path / "log.csv")},
        params={
            "work_dir": str(tmp_path / "work"),
            "meta": {
                "iterations": 1,
                "meta_batch": 2,
                "inner_steps": 1,
                "validation_tasks": 0,
                "scale": 2,
                "subsampling": "direct",
            },
        },
    )
    with pytest.raises(MZSRError) as e:
        run_script(monkeypatch, "meta_train", **job)
    assert error_line(e.value).startswith(f"mzsr: error: {shards[0]}: corrupt task shard")
    assert not shards[0].exists() and not (tmp_path / "meta.safetensors").exists()
