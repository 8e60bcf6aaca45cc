"""Released models: where they are found, what `mzsr upscale` takes without --weights, their
metadata, and the tool that extends their training run for a time budget (tiny, on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import pytest

from mzsr import MZSRError
from mzsr.cli import main
from mzsr.files.images import read_image_uint8, write_png
from mzsr.files.released import MODELS_ENV, describe_weights, release_info, released_weights
from conftest import REPO, SHARED_DATA, smooth_image


def test_the_released_direct_x2_model_is_found_and_says_where_it_comes_from():
    path = released_weights("direct", 2)
    assert path == REPO / "models" / "direct_x2.safetensors"
    info = release_info(path)
    assert info["name"] == "direct_x2" and info["iterations"] == 700 and info["device"] == "NVIDIA H100 80GB HBM3"
    assert {"data", "config_digest", "recipe", "set14", "start"} <= set(info)
    assert set(info["set14"]) == {"g0.2", "g2.0", "ani"} and set(info["set14"]["g2.0"]) == {"0", "1", "10"}
    assert describe_weights(path) == (
        f"released direct_x2, 700 meta-iterations on NVIDIA H100 80GB HBM3 ({info['data']})"
    )


def test_a_model_not_released_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(
        MZSRError,
        match=r"^no released model bicubic_x2 \(for bicubic subsampling at x2\) in .*models "
        r"\(released: direct_x2\); give --weights FILE",
    ):
        released_weights("bicubic", 2)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(MZSRError, match=r"elsewhere: no models folder \(set MZSR_MODELS"):
        released_weights("direct", 2)
    with pytest.raises(MZSRError, match="unknown subsampling 'nearest'"):
        released_weights("nearest", 2)


def test_upscale_without_weights_takes_the_released_model(tmp_path, capsys):
    write_png(tmp_path / "lr" / "a.png", smooth_image(30, 26, seed=4))
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "lr"),
                "--out",
                str(tmp_path / "sr"),
                "--degradation",
                "g2.0",
                "--steps",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_image_uint8(tmp_path / "sr" / "a.png").shape == (60, 52, 3)
    assert f"mzsr: weights {REPO / 'models' / 'direct_x2.safetensors'}" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "lr"), "--out", str(tmp_path / "sr2"), "--degradation", "gb1.3"]) == 1
    assert "mzsr: error: no released model bicubic_x2 (for bicubic subsampling at x2)" in capsys.readouterr().err
    assert not (tmp_path / "sr2").exists()


def _extend(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tools.extend_release", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.shared_data
def test_two_sessions_extend_one_run_and_the_better_model_is_adopted(tmp_path):
    state, models = tmp_path / "state", tmp_path / "models"
    session = lambda n, minutes: (  # noqa: E731
        *("train", "--tiny", "--budget-minutes", minutes, "--device", "cpu", "--data", SHARED_DATA),
        *("--work", tmp_path / f"work{n}", "--state-dir", state, "--out", tmp_path / f"out{n}"),
    )
    _extend(*session(1, 1e-4))  # a budget that ends the session at its first checkpoint (step 2 of 4)
    with h5py.File(tmp_path / "work1" / "meta.h5", "r") as f:  # 8 flips/rotations of each grid patch
        assert f["patches"].shape[0] % 8 == 0 and f["patches"].shape[0] > 8
    first = json.loads((tmp_path / "out1" / "slot.json").read_text())
    assert (first["start_step"], first["end_step"], first["device"]) == (0, 2, "cpu")
    assert "steps 0 -> 2 on cpu" in _extend("adopt", tmp_path / "out1", "--state-dir", state, "--models-dir", models)
    assert (models / "direct_x2.safetensors").is_file() and (state / "last.pt").is_file()
    _extend(*session(2, 30))  # another machine's session resumes from the state at step 2 and finishes the 4
    second = json.loads((tmp_path / "out2" / "slot.json").read_text())
    assert (second["start_step"], second["end_step"]) == (2, 4)
    log = (tmp_path / "out2" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["1", "2", "3", "4"]
    _extend("adopt", tmp_path / "out2", "--state-dir", state, "--models-dir", models)
    rows = (state / "slots.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("date,device,torch,start_step,end_step")
    info = release_info(models / "direct_x2.safetensors")
    adopted = rows[2].endswith("True")
    assert info["iterations"] == (4 if adopted else 2) and info["device"] == "cpu"


def test_provenance_is_read_without_torch_for_the_report_environment(tmp_path):
    from mzsr.files.released import header_metadata

    meta = header_metadata(REPO / "models" / "direct_x2.safetensors")
    assert meta["released"] == release_info(REPO / "models" / "direct_x2.safetensors") and meta["scale"] == 2
    (tmp_path / "x.pt").write_bytes(b"PK\x03\x04 not safetensors")
    assert header_metadata(tmp_path / "x.pt") == {}
    assert describe_weights(tmp_path / "x.pt") == f"{tmp_path / 'x.pt'}: unknown weights, step ?"
