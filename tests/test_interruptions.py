"""No run loses finished work: killed stages rerun to the same result, and nothing partial is read.

Each stage is killed with SIGKILL from inside a child process at a chosen point (a monkeypatched
function kills the process on its n-th call: no sleeps, no races), then rerun; the result must equal
an uninterrupted run byte for byte, and the output path must never hold a partial file (temp file +
rename; a killed writer's temp file is removed by the next writer). Training stages are covered by
tests/test_pretrain.py and tests/test_meta.py (killed mid-training, resumed to identical weights);
numerical faults (NaN loss, overflowing gradients) are at the end. See docs/reliability.md.
"""

from __future__ import annotations

import filecmp
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from mzsr import MZSRError
from mzsr.cli import main
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import write_task_shard
from mzsr.evaluation.metrics import modcrop, psnr
from mzsr.files.checkpoints import load_weights, save_weights
from mzsr.files.images import read_image_uint8, write_png
from mzsr.network.model import MZSRNet
from conftest import run_snakemake, smooth_image
from training_helpers import make_training_data

REPO = Path(__file__).resolve().parents[1]

# Prepended to every child's code: die() is SIGKILL (no cleanup runs, as after `kill -9`, an OOM kill
# or a lost node); on_call(n, fn) is fn, except that the process dies on its n-th call.
KILLER = """
import os, signal, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
torch.set_num_threads(2)

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def on_call(n, fn):
    calls = [0]
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            die()
        return fn(*args, **kwargs)
    return wrapper
"""


def run_child(*blocks: str) -> subprocess.CompletedProcess:
    """Run KILLER and then the code blocks in a fresh Python process."""
    code = "\n".join(
        [KILLER.format(repo=str(REPO), tests=str(REPO / "tests")), *(textwrap.dedent(b).strip() for b in blocks)]
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
        timeout=300,
    )


def assert_killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -9, proc.stderr[-3000:]


def only_temps(folder: Path) -> list[Path]:
    """What a killed writer left in `folder`: must be hidden temp files only."""
    left = sorted(folder.iterdir())
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in left), left
    return left


# ------------------------------------------------------------------------------------ HDF5 patch store


def test_patch_store_killed_while_writing(tmp_path):
    make_training_data(tmp_path / "data", shards=0)
    images = sorted((tmp_path / "data" / "hr").glob("*.png"))
    args = dict(patch_size=24, stride=8, max_per_image=6, seed=0, provenance={"test": True})
    write_patch_store(images, tmp_path / "reference.h5", **args)
    out = tmp_path / "store" / "patches.h5"
    killed = run_child(
        "import mzsr.data.stores as stores",
        "stores.read_image_uint8 = on_call(3, stores.read_image_uint8)",  # dies with 2 of 4 images in the file
        f"stores.write_patch_store({[str(p) for p in images]!r}, {str(out)!r}, **{args!r})",
    )
    assert_killed(killed)
    (temp,) = only_temps(out.parent)  # nothing under the final name: no reader can take it for complete
    assert temp.stat().st_size > 0
    write_patch_store(images, out, **args)  # the rerun
    assert filecmp.cmp(out, tmp_path / "reference.h5", shallow=False)
    assert sorted(out.parent.iterdir()) == [out]  # the killed run's temp file is gone


# ------------------------------------------------------------------------------------ task shards

KILL_POINTS = {
    # while drawing the tasks: the store is open, nothing written yet
    "drawing tasks": "tasks.sample_training_params = on_call(1, tasks.sample_training_params)",
    # while writing the HDF5 file: the kernel parameters are in, the patch rows not yet
    "writing the HDF5 file": """
        import h5py
        create = h5py.Group.create_dataset
        h5py.Group.create_dataset = lambda self, name, *a, **k: die() if name == "patches" else create(self, name, *a, **k)
        """,
}


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_task_shard_killed(tmp_path, kill_point):
    _, store, _ = make_training_data(tmp_path, shards=0)
    args = dict(shard_index=1, tasks=3, scale=2, n_support=2, n_query=2, seed=0)
    write_task_shard(store, tmp_path / "reference.h5", **args)
    out = tmp_path / "tasks" / "shard=1.h5"
    killed = run_child(
        "import mzsr.data.tasks as tasks",
        KILL_POINTS[kill_point],
        f"tasks.write_task_shard({str(store)!r}, {str(out)!r}, **{args!r})",
    )
    assert_killed(killed)
    assert not out.exists()
    if kill_point == "writing the HDF5 file":
        only_temps(out.parent)  # the half-written file is a hidden temp, never under the final name
    write_task_shard(store, out, **args)
    assert filecmp.cmp(out, tmp_path / "reference.h5", shallow=False)
    assert sorted(out.parent.iterdir()) == [out]


# ------------------------------------------------------------------------------------ a folder of images


def test_image_folder_killed_while_writing(tmp_path):
    """scripts/images.py writing scikit-image photos into a folder output (the demo's training
    images) is killed after the first photo: the folder does not exist under its name, only a hidden
    temp folder; the rerun removes that and writes the folder whole (mzsr.files.atomic.atomic_folder)."""
    import skimage.data

    out = tmp_path / "data" / "train"
    script = REPO / "scripts" / "images.py"
    run = f"""
        import runpy
        from types import SimpleNamespace
        sys.path.insert(0, {str(REPO / "scripts")!r})
        stub = SimpleNamespace(log=[{str(tmp_path / "job.log")!r}], output=[{str(out)!r}],
                               params=SimpleNamespace(data={{"source": "skimage:astronaut,chelsea"}}))
        runpy.run_path({str(script)!r}, init_globals={{"snakemake": stub}})
        """
    killed = run_child("import mzsr.files.images as images", "images.write_png = on_call(2, images.write_png)", run)
    assert_killed(killed)
    assert not out.exists()
    (temp,) = only_temps(out.parent)
    assert temp.is_dir() and [p.name for p in temp.iterdir()] == ["astronaut.png"]
    done = run_child(run)
    assert done.returncode == 0, (done.stderr + (tmp_path / "job.log").read_text())[-3000:]
    assert sorted(out.parent.iterdir()) == [out]  # the killed run's temp folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "chelsea.png"]
    np.testing.assert_array_equal(read_image_uint8(out / "astronaut.png"), skimage.data.astronaut())
    np.testing.assert_array_equal(read_image_uint8(out / "chelsea.png"), skimage.data.chelsea())


# ------------------------------------------------------------------------------------ adaptation

ADAPT_KILL_POINTS = {
    # in the middle of image b: its 2nd of 3 adaptation steps (image a took steps 1-3)
    "adapting image b": "torch.optim.SGD.step = on_call(5, torch.optim.SGD.step)",
    # b's PNG is complete in its temp file, the rename onto b.png has not happened
    "writing b.png": "_replace = os.replace\n"
    "os.replace = lambda src, dst, *a, **k: die() if str(dst).endswith('b.png') else _replace(src, dst, *a, **k)",
}


@pytest.fixture(scope="module")
def adapt_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    for i, name in enumerate("ab"):
        write_png(root / "lr" / f"{name}.png", smooth_image(28, 32, seed=20 + i))
    torch.manual_seed(0)
    save_weights(root / "w.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    command = [
        "upscale",
        str(root / "lr"),
        "--weights",
        str(root / "w.safetensors"),
        "--degradation",
        "g0.2",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--out",
    ]
    assert main([*command, str(root / "reference")]) == 0
    return root, command


@pytest.mark.parametrize("kill_point", ADAPT_KILL_POINTS)
def test_adaptation_killed(tmp_path, adapt_inputs, kill_point):
    root, command = adapt_inputs
    out = tmp_path / "sr"
    killed = run_child(ADAPT_KILL_POINTS[kill_point], f"from mzsr.cli import main; main({[*command, str(out)]!r})")
    assert_killed(killed)
    # a.png was finished before the kill and is complete; b.png does not exist, not even half-written
    left = sorted(p.name for p in out.iterdir())
    assert left[-1] == "a.png" and not (out / "b.png").exists()
    if kill_point == "writing b.png":
        assert len(left) == 2 and left[0].startswith(".b.png.") and left[0].endswith(".tmp")
    else:
        assert left == ["a.png"]
    np.testing.assert_array_equal(read_image_uint8(out / "a.png"), read_image_uint8(root / "reference" / "a.png"))
    assert main([*command, str(out)]) == 0  # the rerun
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):
        assert filecmp.cmp(out / name, root / "reference" / name, shallow=False)


# ------------------------------------------------------------------------------------ the pipeline

# Installed into the killed Snakemake run (and its jobs) through PYTHONPATH: when a process is about
# to rename a file onto the path ending in $MZSR_KILL_ON_RENAME, it SIGKILLs its whole process group,
# i.e. Snakemake and the job together, as a power loss or a cancelled cluster allocation would.
SITECUSTOMIZE = """
import os, signal, sys
_target = os.environ.get("MZSR_KILL_ON_RENAME")
if _target:
    def _hook(event, args):
        if event == "os.rename" and str(args[1]).endswith(_target):
            os.killpg(os.getpgid(0), signal.SIGKILL)
    sys.addaudithook(_hook)
"""


@pytest.mark.slow
def test_pipeline_killed_during_a_job_reruns_it(tmp_path):
    """Snakemake and the sr_bicubic job are killed after the job wrote its SR image, before its CSV.
    The plain rerun names the incomplete file and says what to do; after --unlock, a rerun with
    --rerun-incomplete redoes the job and gives the uninterrupted result."""
    workdir = tmp_path / "run"
    hr = smooth_image(48, 56, seed=5)
    write_png(workdir / "test_images" / "tiny" / "b.png", hr)
    config = yaml.safe_load((REPO / "tests" / "micro.yaml").read_text())
    config["methods"] = ["bicubic"]
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    csv, sr = Path("results/metrics/jobs/tiny/g2.0/bicubic/b.csv"), Path("results/sr/tiny/g2.0/bicubic/b.png")

    def snakemake(*args, env=None):
        return run_snakemake(
            workdir,
            str(csv),
            *args,
            "--cores",
            "1",
            "--configfile",
            "cfg.yaml",
            timeout=300,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    killed = snakemake(env={"PYTHONPATH": str(tmp_path / "hook"), "MZSR_KILL_ON_RENAME": str(csv)})
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    assert (workdir / sr).is_file() and not (workdir / csv).exists()
    assert [p.name.startswith(".b.csv.") for p in (workdir / csv).parent.iterdir()] == [True]
    plain = snakemake()
    out = plain.stdout + plain.stderr
    assert (
        plain.returncode != 0 and "IncompleteFilesException" in out and str(sr) in out and "--rerun-incomplete" in out
    )
    assert snakemake("--unlock").returncode == 0
    done = snakemake("--rerun-incomplete")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    # the uninterrupted result: the same LR and bicubic SR as the `mzsr` command makes
    assert (
        main(["degrade", str(workdir / "test_images" / "tiny"), "--out", str(tmp_path / "lr"), "--degradation", "g2.0"])
        == 0
    )
    assert main(["upscale", str(tmp_path / "lr"), "--out", str(tmp_path / "sr"), "--method", "bicubic"]) == 0
    assert filecmp.cmp(workdir / sr, tmp_path / "sr" / "b.png", shallow=False)
    row = (workdir / csv).read_text().splitlines()[1].split(",")
    expected = psnr(
        read_image_uint8(tmp_path / "sr" / "b.png"),
        modcrop(read_image_uint8(workdir / "test_images" / "tiny" / "b.png"), 2),
        2,
    )
    assert float(row[5]) == pytest.approx(expected, abs=1e-9)
    assert sorted(p.name for p in (workdir / csv).parent.iterdir()) == ["b.csv"]  # the killed job's temp file is gone


# ------------------------------------------------------------------------------------ numerical faults

PRETRAIN = {
    "steps": 6,
    "batch_size": 4,
    "patch_size": 24,
    "lr": 1e-3,
    "lr_halve_every": 2,
    "lr_min": 3e-4,
    "checkpoint_every": 2,
    "log_every": 1,
    "seed": 5,
    "num_workers": 0,
    "scale": 2,
}


@pytest.fixture()
def pretrain_run(tmp_path):
    from mzsr.training.pretrain import pretrain

    store, _, _ = make_training_data(tmp_path, shards=0)

    def run(name):
        return pretrain(
            store, tmp_path / f"{name}.safetensors", PRETRAIN, tmp_path / name, tmp_path / f"{name}.csv", device="cpu"
        )

    return tmp_path, run


def _fault_at_call(n: int, fn, fault):
    calls = itertools.count(1)
    return lambda *args: fault(*args) if next(calls) == n else fn(*args)


def _assert_kept_checkpoint(work: Path, step: int) -> None:
    state = torch.load(work / "last.pt", weights_only=True)
    assert state["step"] == step
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("fault", ["loss becomes NaN", "gradients overflow (finite loss)"])
def test_training_fault_names_the_step_keeps_the_checkpoint_and_resumes(pretrain_run, monkeypatch, fault):
    import mzsr.training.pretrain

    root, run = pretrain_run
    run("reference")
    if fault == "loss becomes NaN":  # the 4th batch's input is NaN: the loss of step 3 (0-based) is NaN
        monkeypatch.setattr(
            mzsr.training.pretrain,
            "network_input",
            _fault_at_call(
                4,
                mzsr.training.pretrain.network_input,
                lambda lr, s, size: torch.full((*lr.shape[:2], *size), float("nan")),
            ),
        )
        message = r"loss became nan at step 3; training stopped\. The last good checkpoint is kept in .*faulty"
    else:  # the 4th loss is finite but its gradient is NaN: Adam writes NaN weights, due for checkpoint 4
        import torch.nn.functional as F

        def poisoned(pred, target):
            return F.l1_loss(pred, target) + 0 * torch.sqrt(pred.sum() * 0)

        monkeypatch.setattr(
            mzsr.training.pretrain, "F", SimpleNamespace(l1_loss=_fault_at_call(4, F.l1_loss, poisoned))
        )
        message = r"weights became NaN or infinite by step 4 .*training stopped\. The last good checkpoint is kept in .*faulty"
    with pytest.raises(MZSRError, match=message):
        run("faulty")
    _assert_kept_checkpoint(root / "faulty", 2)
    assert not (root / "faulty.safetensors").exists()
    monkeypatch.undo()
    run("faulty")  # the rerun resumes from step 2 and finishes as if nothing had happened
    a, meta = load_weights(root / "reference.safetensors")
    b, _ = load_weights(root / "faulty.safetensors")
    assert meta["step"] == 6
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
