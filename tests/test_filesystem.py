"""The world around the inputs: formats by content, file-system faults, out of GPU memory,
two inputs with one stem. docs/reliability.md lists each case.

File-system faults are real: a 256 KiB tmpfs filled to its last blocks (no space left), a tmpfs
remounted read-only, a path that is a file, and permission denied as an unprivileged user (seteuid).
Each must end in one line `mzsr: error: <path>: <problem>` and leave nothing partial behind, both for
the `mzsr` command and for the pipeline's rule scripts (run in-process, as Snakemake runs them).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mzsr import MZSRError, error_line
from mzsr.cli import main
from mzsr.files.checkpoints import load_weights, save_weights
from mzsr.files.images import read_image_uint8, write_png
from mzsr.network.model import MZSRNet
from conftest import smooth_image
from script_runner import run_script

REPO = Path(__file__).resolve().parents[1]
NO_SPACE = "No space left on device"
READ_ONLY = "Read-only file system"


# ------------------------------------------------------------------------------------ real small file systems


def _mount(target: Path, *options: str) -> bool:
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(("size=256k", *options)), "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


@contextlib.contextmanager
def tmpfs(read_only: bool = False, full: bool = False):
    """A fresh 256 KiB tmpfs (world-traversable), optionally filled to the last block, or read-only."""
    root = Path(tempfile.mkdtemp(prefix="mzsr-fs-"))
    os.chmod(root, 0o755)
    if os.geteuid() != 0 or not _mount(root, "mode=0755"):
        os.rmdir(root)
        pytest.skip("needs root to mount a tmpfs (mount -t tmpfs refused)")
    try:
        (root / "out").mkdir()
        if full:
            with open(root / "filler", "wb", buffering=0) as f:  # to the last block
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True, capture_output=True)
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
        with contextlib.suppress(OSError):
            os.rmdir(root)


@contextlib.contextmanager
def as_nobody():
    """Run as uid/gid 65534 until the block ends (root's saved uid brings it back)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name != "filler") if folder.exists() else []


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """World-readable inputs: two LR images, weights (as .safetensors), a TF bundle."""
    root = Path(tempfile.mkdtemp(prefix="mzsr-in-"))
    os.chmod(root, 0o755)
    write_png(root / "lr" / "a.png", smooth_image(28, 32, seed=1))
    write_png(root / "lr" / "b.png", smooth_image(28, 32, seed=2))
    torch.manual_seed(0)
    save_weights(root / "w.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    from tf_bundle_writer import synthetic_mzsr_tensors, write_bundle

    (root / "tf").mkdir()
    write_bundle(root / "tf" / "Pretrained", synthetic_mzsr_tensors())
    for p in [root, *root.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield root
    import shutil

    shutil.rmtree(root, ignore_errors=True)


def one_line(capsys, rc: int, path, problem: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mzsr: error: ") and str(path) in lines[0] and re.search(problem, lines[0]), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------ 1. formats by content


def test_import_tf_to_pt_is_read_back_by_upscale(inputs, tmp_path, capsys):
    """The issue's first report: `import-tf ... weights.pt` then `upscale --weights weights.pt`."""
    out = tmp_path / "weights.pt"
    assert main(["import-tf", str(inputs / "tf" / "Pretrained"), str(out)]) == 0
    assert out.read_bytes()[:2] == b"PK"  # a torch file, as the suffix asks
    state, meta = load_weights(out, expected_scale=2)
    assert meta["scale"] == 2 and meta["source"].startswith("tf:")
    assert (
        main(
            [
                "upscale",
                str(inputs / "lr" / "a.png"),
                "--out",
                str(tmp_path / "sr"),
                "--weights",
                str(out),
                "--steps",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_image_uint8(tmp_path / "sr" / "a.png").shape == (56, 64, 3)


@pytest.mark.parametrize(
    "written, named", [("safetensors", "w.pt"), ("torch", "w.safetensors"), ("safetensors", "w.bin")]
)
def test_weights_are_recognised_by_content_not_suffix(inputs, tmp_path, written, named):
    """A file is read as what it is: safetensors named .pt or .bin, a torch file named .safetensors."""
    state, _ = load_weights(inputs / "w.safetensors")
    path = tmp_path / named
    if written == "safetensors":
        path.write_bytes((inputs / "w.safetensors").read_bytes())
    else:
        save_weights(tmp_path / "x.pt", state, {"scale": 4})
        os.replace(tmp_path / "x.pt", path)
    got, meta = load_weights(path)
    assert all(torch.equal(got[k], state[k]) for k in state)
    if written == "torch":  # metadata survive the torch format too: the scale check still works
        with pytest.raises(MZSRError, match="was trained for x4, expected x2"):
            load_weights(path, expected_scale=2)


@pytest.mark.parametrize("name", ["weights.bin", "weights"])
def test_import_tf_refuses_a_suffix_it_cannot_honour_before_any_work(tmp_path, capsys, name):
    rc = main(["import-tf", str(tmp_path / "no" / "such" / "checkpoint"), str(tmp_path / name)])
    one_line(capsys, rc, tmp_path / name, r"unsupported weights file suffix .*use \.safetensors \(or \.pt/\.pth\)")
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ 2. file-system faults, command

FAULTS = [
    "no space left",
    "read-only folder",
    "parent folder read-only",
    "out is a file",
    "parent is a file",
    "permission denied",
]


@contextlib.contextmanager
def fault(kind: str, tmp_path: Path):
    """(output folder, the problem the line must name) under one real fault."""
    if kind == "no space left":
        with tmpfs(full=True) as fs:
            yield fs / "out", NO_SPACE
    elif kind == "read-only folder":
        with tmpfs(read_only=True) as fs:
            yield fs / "out", READ_ONLY
    elif kind == "parent folder read-only":  # --out does not exist yet, and cannot be created
        with tmpfs(read_only=True) as fs:
            yield fs / "out" / "new", READ_ONLY
    elif kind == "out is a file":
        (tmp_path / "file").write_text("x")
        yield tmp_path / "file", "exists and is a file, not a folder"
    elif kind == "parent is a file":
        (tmp_path / "file").write_text("x")
        yield tmp_path / "file" / "out", r"is a file, not a folder"
    else:
        folder = Path(tempfile.mkdtemp(prefix="mzsr-ro-"))
        os.chmod(folder, 0o755)  # root's folder: nobody may not write there
        try:
            with as_nobody():
                yield folder / "out", "Permission denied"
        finally:
            os.rmdir(folder) if not any(folder.iterdir()) else None


COMMANDS = {
    "upscale": lambda inp, out: [
        "upscale",
        str(inp / "lr"),
        "--out",
        str(out),
        "--weights",
        str(inp / "w.safetensors"),
        "--degradation",
        "g0.2",
        "--steps",
        "1",
        "--device",
        "cpu",
    ],
    "degrade": lambda inp, out: ["degrade", str(inp / "lr"), "--out", str(out), "--degradation", "g0.2"],
    "import-tf": lambda inp, out: ["import-tf", str(inp / "tf" / "Pretrained"), str(out / "w.safetensors")],
    "evaluate --csv": lambda inp, out: ["evaluate", str(inp / "lr"), str(inp / "lr"), "--csv", str(out / "m.csv")],
}


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("command", COMMANDS)
def test_file_system_fault_is_one_line_and_leaves_nothing(inputs, tmp_path, capsys, command, kind):
    with fault(kind, tmp_path) as (out, problem):
        if command in ("import-tf", "evaluate --csv") and kind == "out is a file":
            out = out / "x"  # its output file's folder is a file
            problem = "is a file, not a folder"
        rc = main(COMMANDS[command](inputs, out))
        one_line(capsys, rc, out, problem)
        base = out if out.is_dir() else out.parent
        assert [n for n in leftovers(base) if not n.startswith("file")] == [], "nothing partial left behind"


def test_output_file_that_is_a_folder(inputs, tmp_path, capsys):
    (tmp_path / "w.safetensors").mkdir()
    rc = main(["import-tf", str(inputs / "tf" / "Pretrained"), str(tmp_path / "w.safetensors")])
    one_line(capsys, rc, tmp_path / "w.safetensors", "is a folder, expected a file name")


def test_disk_full_midway_keeps_the_finished_images_whole(inputs, capsys):
    """The disk fills while writing the second image: a.png stays complete, no half b.png, no temp."""
    with tmpfs() as fs:
        out = fs / "out"
        with open(fs / "filler", "wb") as f:  # room for a (about 5 KB) and not for b too
            f.write(b"\0" * (256 * 1024 - 16 * 1024))
        big = smooth_image(56, 64, seed=3) + np.random.default_rng(0).uniform(0, 0.3, (56, 64, 3))
        src = Path(tempfile.mkdtemp(prefix="mzsr-big-"))
        write_png(src / "a.png", smooth_image(8, 8))
        write_png(src / "b.png", np.clip(big, 0, 1))
        try:
            rc = main(["upscale", str(src), "--out", str(out), "--method", "bicubic"])
            one_line(capsys, rc, out / "b.png", NO_SPACE)
            assert leftovers(out) == ["a.png"]
            assert read_image_uint8(out / "a.png").shape == (16, 16, 3)
        finally:
            import shutil

            shutil.rmtree(src)


# ------------------------------------------------------------------------------------ 2. file-system faults, pipeline scripts


@pytest.fixture(scope="module")
def script_inputs(inputs, tmp_path_factory):
    from training_helpers import make_training_data

    root = tmp_path_factory.mktemp("scripts")
    store, meta_store, shards = make_training_data(root, shards=1, tasks=4)
    write_png(root / "gt.png", smooth_image(56, 64, seed=4))
    return root, store, meta_store, shards


def _csv(root: Path) -> Path:
    import pandas as pd

    path = root / "job.csv"
    pd.DataFrame(
        [
            {
                "test_set": "t",
                "degradation": "g2.0",
                "method": "bicubic",
                "steps": 0,
                "image": "gt",
                "psnr": 30.0,
                "ssim": 0.9,
                "seconds": 0.1,
            }
        ]
    ).to_csv(path, index=False)
    return path


def _summary(root: Path) -> Path:
    import pandas as pd

    path = root / "summary.csv"
    pd.DataFrame(
        [
            {"test_set": "t", "degradation": "g2.0", "method": m, "steps": s, "psnr": 30.0 + s, "ssim": 0.9}
            for m, s in (("bicubic", 0), ("mzsr", 0), ("mzsr", 1))
        ]
    ).to_csv(path, index=False)
    return path


SR_WILDCARDS = {"test_set": "t", "degradation": "g2.0", "image": "gt"}
SCRIPTS = {  # rule script -> (its input, output and params, given the inputs' folder and the output folder)
    "lr_image": lambda i, root, out: dict(
        input={"gt": str(root / "gt.png"), "kernel": []},
        output={"out": str(out / "lr.png")},
        params={"degradation": "g2.0", "scale": 2, "convention": "mzsr"},
        wildcards=SR_WILDCARDS,
    ),
    "sr_bicubic": lambda i, root, out: dict(
        input={"lr_image": str(i / "lr" / "a.png"), "gt": str(root / "gt.png")},
        output={"sr": str(out / "sr.png"), "csv": str(out / "sr.csv")},
        params={"scale": 2, "degradation": "g2.0", "convention": "mzsr"},
        wildcards=SR_WILDCARDS,
    ),
    "sr_mzsr": lambda i, root, out: dict(
        input={"lr_image": str(i / "lr" / "a.png"), "gt": str(root / "gt.png"), "weights": str(i / "w.safetensors")},
        output={"sr": str(out / "sr.png"), "csv": str(out / "sr.csv")},
        params={
            "scale": 2,
            "degradation": "g2.0",
            "convention": "mzsr",
            "method": "mzsr",
            "steps": [1],
            "adapt": {"steps": [1], "schedule": "auto"},
        },
        wildcards=SR_WILDCARDS,
    ),
    "patches": lambda i, root, out: dict(
        input={"folder": str(root / "hr")},
        output={"store": str(out / "p.h5")},
        params={
            "patches": {
                "patch_size": 16,
                "stride": 8,
                "max_per_image": 40,
                "seed": 0,
                "reject_flat": False,
                "flat_threshold": -6.0,
                "store_augmented": True,
            },
            "lr_scale": None,
        },
        wildcards={"kind": "meta"},
    ),
    "task_shard": lambda i, root, out: dict(
        input={"store": str(root / "meta.h5")},
        output={"shard": str(out / "s.h5")},
        params={"tasks": {"tasks": 2000, "scale": 2, "n_support": 2, "n_query": 2, "seed": 0}},
        wildcards={"shard": "0"},
    ),
    "import_tf": lambda i, root, out: dict(
        input={},
        output={"w": str(out / "w.safetensors")},
        params={"tf_checkpoint": str(i / "tf" / "Pretrained"), "scale": 2},
    ),
    "pretrain": lambda i, root, out: dict(
        input={"store": str(root / "patches.h5")},
        output={"weights": str(out / "w.safetensors"), "log_csv": str(out / "log.csv")},
        params={
            "work_dir": str(out / "work"),
            "pretrain": {
                "steps": 2,
                "batch_size": 2,
                "patch_size": 24,
                "num_workers": 0,
                "checkpoint_every": 1,
                "log_every": 1,
            },
        },
    ),
    "plot_steps": lambda i, root, out: dict(
        input={"summary": str(_summary(root))}, output={"png": str(out / "plot.png")}, params={"scale": 2}
    ),
    "images": lambda i, root, out: dict(
        input={}, output={"folder": str(out / "train")}, params={"data": {"source": "skimage:astronaut,chelsea"}}
    ),
    "crop": lambda i, root, out: dict(
        input={"gt": str(root / "gt.png"), "bicubic": str(root / "gt.png"), "csvs": [str(_csv(root))]},
        output={"png": str(out / "crop.png")},
        params={"scale": 2, "report": {"crop_size": 32}},
        wildcards=SR_WILDCARDS,
    ),
}


@pytest.mark.parametrize("kind", ["no space left", "read-only folder"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_file_system_fault_in_each_pipeline_script(inputs, script_inputs, monkeypatch, tmp_path, script, kind):
    root = script_inputs[0]
    with fault(kind, tmp_path) as (out, problem):
        job = SCRIPTS[script](inputs, root, out)
        log = tmp_path / "job.log"
        with pytest.raises(MZSRError) as e:
            run_script(monkeypatch, script, log=log, **job)
        line = error_line(e.value)
        assert line.startswith(f"mzsr: error: {out}/") and problem in line, line
        assert leftovers(out) in ([], ["work"]), leftovers(out)  # pretrain's work folder may exist, empty
        if (out / "work").exists():
            assert leftovers(out / "work") == []


# ------------------------------------------------------------------------------------ 5. out of GPU memory


class _OOMAbove(torch.nn.Module):
    """The model, but inputs larger than `limit` pixels (in inference or in training) raise CUDA's OOM."""

    def __init__(self, model, infer_limit: int, train_limit: int):
        super().__init__()
        self.model, self.infer_limit, self.train_limit = model, infer_limit, train_limit
        self.sizes = []

    def forward(self, x):
        area = x.shape[-1] * x.shape[-2]
        limit = self.train_limit if torch.is_grad_enabled() else self.infer_limit
        self.sizes.append((torch.is_grad_enabled(), tuple(x.shape[-2:])))
        if area > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self.model(x)


def test_out_of_memory_in_inference_retries_with_smaller_tiles(recwarn):
    from mzsr.adaptation.inference import to_tensor, upscale

    torch.manual_seed(0)
    model = MZSRNet().eval()
    lr = to_tensor(smooth_image(40, 40, seed=5), "cpu")
    reference = upscale(model, lr, 2, tile=None)
    guarded = _OOMAbove(model, infer_limit=48 * 48, train_limit=0)
    got = upscale(guarded, lr, 2, tile=64)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-5)
    said = [str(w.message) for w in recwarn]
    assert said == ["out of GPU memory in inference with 64x64 tiles; retrying with 32x32 tiles (same result)"]


def test_out_of_memory_in_adaptation_retries_with_smaller_crops(inputs, capsys, tmp_path, monkeypatch):
    """Through the command: one warning line, then the image is adapted on smaller crops."""
    import mzsr.files.checkpoints

    load_model = mzsr.files.checkpoints.load_model

    def guarded(*args, **kwargs):
        model, meta = load_model(*args, **kwargs)
        return _OOMAbove(model, infer_limit=10**9, train_limit=40 * 40), meta

    monkeypatch.setattr(mzsr.files.checkpoints, "load_model", guarded)
    write_png(tmp_path / "lr" / "c.png", smooth_image(64, 64, seed=6))
    rc = main(
        [
            "upscale",
            str(tmp_path / "lr"),
            "--out",
            str(tmp_path / "sr"),
            "--weights",
            str(inputs / "w.safetensors"),
            "--degradation",
            "g0.2",
            "--steps",
            "2",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0, err
    assert err == [
        "mzsr: warning: out of GPU memory adapting on 64x64 crops; starting the image again with 32x32 crops"
    ]
    assert read_image_uint8(tmp_path / "sr" / "c.png").shape == (128, 128, 3)


def test_out_of_memory_even_at_the_smallest_tile_is_one_line(inputs, capsys, tmp_path, monkeypatch):
    import mzsr.files.checkpoints

    load_model = mzsr.files.checkpoints.load_model
    monkeypatch.setattr(
        mzsr.files.checkpoints,
        "load_model",
        lambda *a, **k: (_OOMAbove(load_model(*a, **k)[0], infer_limit=0, train_limit=0), {}),
    )
    rc = main(
        [
            "upscale",
            str(inputs / "lr" / "a.png"),
            "--out",
            str(tmp_path / "sr"),
            "--weights",
            str(inputs / "w.safetensors"),
            "--steps",
            "0",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("mzsr: error: out of GPU memory in inference even with 32x32 tiles"), err
    assert not (tmp_path / "sr").exists()


# ------------------------------------------------------------------------------------ 6. two inputs with one stem


def test_two_inputs_with_one_stem_are_refused_before_any_work(inputs, tmp_path, capsys):
    folder = tmp_path / "lr"
    write_png(folder / "a.png", smooth_image(28, 32, seed=1))
    from PIL import Image

    Image.fromarray(read_image_uint8(folder / "a.png")).save(folder / "a.jpg", quality=95)
    for command in (
        ["degrade", str(folder), "--out", str(tmp_path / "o1"), "--degradation", "g0.2"],
        ["upscale", str(folder), "--out", str(tmp_path / "o2"), "--method", "bicubic"],
    ):
        rc = main(command)
        one_line(capsys, rc, folder / "a.jpg", r"a\.jpg and .*a\.png would both be written to .*o\d/a\.png; rename one")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_the_same_file_twice_is_taken_once(inputs, tmp_path, capsys):
    a = inputs / "lr" / "a.png"
    assert main(["upscale", str(a), str(inputs / "lr"), "--out", str(tmp_path / "sr"), "--method", "bicubic"]) == 0
    assert leftovers(tmp_path / "sr") == ["a.png", "b.png"]


def test_output_onto_its_own_input_is_refused(tmp_path, capsys):
    write_png(tmp_path / "lr" / "a.png", smooth_image(28, 32, seed=1))
    before = (tmp_path / "lr" / "a.png").read_bytes()
    rc = main(["upscale", str(tmp_path / "lr"), "--out", str(tmp_path / "lr"), "--method", "bicubic"])
    one_line(capsys, rc, tmp_path / "lr" / "a.png", "would overwrite this input; give another --out")
    assert (tmp_path / "lr" / "a.png").read_bytes() == before
