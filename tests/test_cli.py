import csv
import subprocess
import sys

import numpy as np
import pytest
import scipy.ndimage
import torch

from mzsr.cli import main
from mzsr.files.checkpoints import save_weights
from mzsr.files.images import read_image_uint8, write_png
from mzsr.network.model import MZSRNet
from conftest import smooth_image


@pytest.fixture()
def hr_dir(tmp_path):
    d = tmp_path / "hr"
    write_png(d / "a.png", smooth_image(41, 50, seed=1))  # odd size: mod-cropped to 40x50
    write_png(d / "b.png", smooth_image(48, 52, seed=2))
    return d


def test_round_trip_degrade_upscale_evaluate(tmp_path, hr_dir, capsys):
    lr_dir, sr_dir, mz_dir = tmp_path / "lr", tmp_path / "sr", tmp_path / "mz"
    assert main(["degrade", str(hr_dir), "--out", str(lr_dir), "--degradation", "g2.0", "--scale", "2"]) == 0
    assert read_image_uint8(lr_dir / "a.png").shape == (20, 25, 3)
    assert main(["upscale", str(lr_dir), "--out", str(sr_dir), "--method", "bicubic"]) == 0
    assert read_image_uint8(sr_dir / "a.png").shape == (40, 50, 3)
    weights = tmp_path / "w.safetensors"
    torch.manual_seed(0)
    save_weights(weights, MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    assert (
        main(
            [
                "upscale",
                str(lr_dir / "b.png"),
                "--out",
                str(mz_dir),
                "--weights",
                str(weights),
                "--degradation",
                "g2.0",
                "--steps",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_image_uint8(mz_dir / "b.png").shape == (48, 52, 3)
    out_csv = tmp_path / "m.csv"
    assert main(["evaluate", str(sr_dir), str(hr_dir), "--csv", str(out_csv)]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == ["a", "b", "mean"]
    psnrs = [float(r["psnr"]) for r in rows]
    assert all(25 < p < 60 for p in psnrs) and psnrs[2] == pytest.approx(np.mean(psnrs[:2]), abs=1e-3)
    assert "PSNR" in capsys.readouterr().out


def test_errors_are_one_line_with_the_file(tmp_path, hr_dir):
    bad = tmp_path / "bad.png"
    bad.write_text("this is not a png")
    r = subprocess.run(
        [sys.executable, "-m", "mzsr.cli", "degrade", str(bad), "--out", str(tmp_path / "o"), "--degradation", "g2.0"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "bad.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert main(["upscale", str(hr_dir), "--out", str(tmp_path / "x"), "--method", "mzsr"]) == 1
    assert main(["degrade", str(hr_dir), "--out", str(tmp_path / "y"), "--degradation", "nonsense"]) == 1
    assert main(["evaluate", str(tmp_path / "missing"), str(hr_dir)]) == 1


def test_help_everywhere(capsys):
    """`python -m mzsr.cli --help` as a command; every subcommand's help in-process (each a fresh parser)."""
    r = subprocess.run([sys.executable, "-m", "mzsr.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: mzsr" in r.stdout
    for cmd in (["degrade"], ["import-tf"], ["estimate-kernel"], ["upscale"], ["evaluate"]):
        with pytest.raises(SystemExit) as exit_:
            main([*cmd, "--help"])
        assert exit_.value.code == 0 and f"usage: mzsr {cmd[0]}" in capsys.readouterr().out


def test_per_image_kernels_zssr_and_redegradation(tmp_path):
    import scipy.io

    from mzsr.degradation.degrade import degrade, to_uint8
    from mzsr.degradation.kernels import gaussian_kernel
    from mzsr.degradation.resolve import kernel_file_for_image
    from mzsr.evaluation.metrics import redegradation_psnr

    hr = smooth_image(48, 56, seed=9)
    k_a, k_b = gaussian_kernel(2.0, 2.0, 0), gaussian_kernel(4.0, 1.0, 0.7)
    lr_dir = tmp_path / "lr"
    write_png(lr_dir / "a.png", to_uint8(degrade(hr, k_a, 2, "direct")))
    write_png(lr_dir / "b.png", to_uint8(degrade(hr, k_b, 2, "direct")))
    scipy.io.savemat(lr_dir / "a_kernel_x2.mat", {"Kernel": k_a})
    (lr_dir / "kernels").mkdir()
    scipy.io.savemat(lr_dir / "kernels" / "b_kernel_x2.mat", {"Kernel": k_b})
    assert kernel_file_for_image(lr_dir / "a.png", 2).name == "a_kernel_x2.mat"
    assert kernel_file_for_image(lr_dir / "b.png", 4) is None
    out = tmp_path / "sr"
    assert (
        main(
            [
                "upscale",
                str(lr_dir / "a.png"),
                str(lr_dir / "b.png"),
                "--out",
                str(out),
                "--method",
                "zssr",
                "--degradation",
                "per-image",
                "--zssr-iterations",
                "20",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert read_image_uint8(out / "a.png").shape == read_image_uint8(out / "b.png").shape == (48, 56, 3)
    # The re-degradation check: the true HR image re-degraded with the right kernel reproduces the LR
    # image up to quantisation; a wrong or shifted kernel is clearly visible.
    lr_a, hr_u8 = read_image_uint8(lr_dir / "a.png"), to_uint8(hr)
    right = redegradation_psnr(hr_u8, lr_a, k_a, 2, "direct")
    wrong = redegradation_psnr(hr_u8, lr_a, gaussian_kernel(0.2, 0.2, 0), 2, "direct")
    shifted = redegradation_psnr(hr_u8, lr_a, np.roll(k_a, 2, axis=1), 2, "direct")
    assert right > 45 and right > wrong + 10 and right > shifted + 10
    # Without a kernel file for the image, a clear error names it.
    write_png(tmp_path / "c" / "c.png", hr)
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "c" / "c.png"),
                "--out",
                str(out),
                "--method",
                "zssr",
                "--degradation",
                "per-image",
            ]
        )
        == 1
    )


def test_scale_4_needs_x4_weights(tmp_path, hr_dir):
    lr_dir = tmp_path / "lr4"
    assert (
        main(["degrade", str(hr_dir / "b.png"), "--out", str(lr_dir), "--degradation", "bicubic", "--scale", "4"]) == 0
    )
    assert read_image_uint8(lr_dir / "b.png").shape == (12, 13, 3)
    w2, w4 = tmp_path / "x2.safetensors", tmp_path / "x4.safetensors"
    save_weights(w2, MZSRNet().state_dict(), {"scale": 2, "degradation": "bicubic", "step": 0})
    save_weights(w4, MZSRNet().state_dict(), {"scale": 4, "degradation": "bicubic", "step": 0})
    out = tmp_path / "sr4"
    assert main(["upscale", str(lr_dir), "--out", str(out), "--weights", str(w2), "--steps", "0", "--scale", "4"]) == 1
    x4_bicubic = [
        "upscale",
        str(lr_dir),
        "--out",
        str(out),
        "--weights",
        str(w4),
        "--degradation",
        "bicubic",
        "--steps",
        "1",
        "--scale",
        "4",
        "--device",
        "cpu",
    ]
    assert main(x4_bicubic) == 1  # no released schedule for bicubic x4: the user must name one
    assert main(x4_bicubic + ["--schedule", "constant_0.01"]) == 0
    assert read_image_uint8(out / "b.png").shape == (48, 52, 3)


def test_degrade_with_random_per_image_kernels_writes_them_for_per_image(tmp_path, hr_dir):
    """`degrade --degradation rk`: every image its own kernel, written beside the LR images with key "kernel";
    `--degradation per-image` reads exactly that kernel back, and it reproduces the LR PNG from the HR."""
    import argparse

    import scipy.io

    from mzsr.cli.commands import _degradation_for
    from mzsr.degradation.degrade import degrade, to_uint8
    from mzsr.degradation.resolve import resolve_degradation
    from mzsr.evaluation.metrics import modcrop

    lr_dir = tmp_path / "lr"
    assert main(["degrade", str(hr_dir), "--out", str(lr_dir), "--degradation", "rk", "--scale", "2"]) == 0
    assert sorted(p.name for p in (lr_dir / "kernels").iterdir()) == ["a_kernel_x2.mat", "b_kernel_x2.mat"]
    kernels = {}
    for stem in ("a", "b"):
        mat = scipy.io.loadmat(lr_dir / "kernels" / f"{stem}_kernel_x2.mat")
        assert "kernel" in mat and "Kernel" not in mat
        np.testing.assert_array_equal(mat["kernel"], resolve_degradation("rk", image=stem).kernel)
        per_image = argparse.Namespace(degradation="per-image", subsampling=None, scale=2, kernel_convention="mzsr")
        kernels[stem], method, label = _degradation_for(per_image, lr_dir / f"{stem}.png")
        assert method == "direct" and label.endswith(f"kernels/{stem}_kernel_x2.mat")
        np.testing.assert_array_equal(kernels[stem], mat["kernel"])  # read as it is, no shift
        hr = modcrop(read_image_uint8(hr_dir / f"{stem}.png"), 2) / 255.0
        np.testing.assert_array_equal(
            to_uint8(degrade(hr, kernels[stem], 2, "direct")), read_image_uint8(lr_dir / f"{stem}.png")
        )
    assert np.abs(kernels["a"] - kernels["b"]).max() > 1e-3
    out, weights = tmp_path / "sr", tmp_path / "w.safetensors"
    save_weights(weights, MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    assert (
        main(
            [
                "upscale",
                str(lr_dir),
                "--out",
                str(out),
                "--weights",
                str(weights),
                "--degradation",
                "per-image",
                "--steps",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert main(["degrade", str(hr_dir), "--out", str(tmp_path / "x3"), "--degradation", "rk", "--scale", "3"]) == 1


# ------------------------------------------------------------------------------ kernel estimation


def _texture(size: int, seed: int) -> np.ndarray:
    """A blurred random texture (KernelGAN needs image structure at every scale; 20 iterations here)."""
    import scipy.ndimage

    rng = np.random.default_rng(seed)
    img = scipy.ndimage.gaussian_filter(rng.random((size, size, 3)), (1.2, 1.2, 0))
    return np.clip((img - img.mean()) * 4 + 0.5, 0, 1)


@pytest.fixture()
def texture_dir(tmp_path):
    d = tmp_path / "lr"
    write_png(d / "a.png", _texture(100, 1))
    write_png(d / "b.png", _texture(100, 2))
    return d


@pytest.fixture(scope="module")
def estimated(tmp_path_factory):
    """`mzsr estimate-kernel --estimator kernelgan` (20 iterations) on two 100x100 textures in both formats, and the
    estimate of a.png made directly. One torch thread: on a busy 2-core machine two threads make
    KernelGAN's many small convolutions ~15x slower."""
    import contextlib
    import io
    from types import SimpleNamespace

    from mzsr.estimation.estimate import estimate_kernel
    from mzsr.files.images import read_image

    root = tmp_path_factory.mktemp("estimate")
    lr = root / "lr"
    write_png(lr / "a.png", _texture(100, 1))
    write_png(lr / "b.png", _texture(100, 2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs, stdout = {}, {}
        for fmt in ("mzsr", "kernelgan"):
            runs[fmt], buffer = root / fmt, io.StringIO()
            with contextlib.redirect_stdout(buffer):
                rc = main(
                    [
                        "estimate-kernel",
                        str(lr),
                        "--out",
                        str(runs[fmt]),
                        "--estimator",
                        "kernelgan",
                        "--iterations",
                        "20",
                        "--format",
                        fmt,
                        "--device",
                        "cpu",
                    ]
                )
            assert rc == 0
            stdout[fmt] = buffer.getvalue()
        est = estimate_kernel(read_image(lr / "a.png"), 2, {"method": "kernelgan", "iterations": 20}, "cpu", seed=0)
    finally:
        torch.set_num_threads(threads)
    return SimpleNamespace(lr=lr, runs=runs, stdout=stdout, est=est)


def _centred_pad(k: np.ndarray, n: int) -> np.ndarray:
    return np.pad(k, [((n - m) // 2, n - m - (n - m) // 2) for m in k.shape])


def test_estimate_kernel_writes_both_formats(estimated):
    """estimate-kernel: <stem>_kernel_x2.mat (mzsr: key "kernel" = est.kernel, read back as it is;
    kernelgan: key "Kernel" = est.kernelgan, what the release writes) and a picture of it."""
    import scipy.io
    from PIL import Image

    from mzsr.degradation.resolve import load_kernel_file

    est = estimated.est
    for fmt, out in estimated.runs.items():
        assert sorted(p.name for p in out.iterdir()) == [
            "a_kernel_x2.mat",
            "a_kernel_x2.png",
            "b_kernel_x2.mat",
            "b_kernel_x2.png",
        ]
        lines = estimated.stdout[fmt].strip().splitlines()
        assert len(lines) == 2 and all("kernel" in line and "20 iterations" in line and " s " in line for line in lines)
        for stem in ("a", "b"):
            with Image.open(out / f"{stem}_kernel_x2.png") as im:
                assert im.mode == "L" and im.width >= 200 and np.asarray(im).max() == 255
    mat = scipy.io.loadmat(estimated.runs["mzsr"] / "a_kernel_x2.mat")
    assert "kernel" in mat and "Kernel" not in mat
    np.testing.assert_array_equal(load_kernel_file(estimated.runs["mzsr"] / "a_kernel_x2.mat"), est.kernel)
    own = load_kernel_file(estimated.runs["mzsr"] / "b_kernel_x2.mat")
    n = max(own.shape + est.kernel.shape) | 1  # (the frames of two estimates may differ in size)
    assert np.abs(_centred_pad(own, n) - _centred_pad(est.kernel, n)).max() > 1e-4  # b.png's own
    mat = scipy.io.loadmat(estimated.runs["kernelgan"] / "a_kernel_x2.mat")
    assert "Kernel" in mat and "kernel" not in mat
    np.testing.assert_array_equal(mat["Kernel"], est.kernelgan)


def test_kernelgan_format_reads_back_as_the_same_kernel(estimated):
    """The release's format (half-pixel shift, unclipped spline ringing) reads back in MZSR's
    convention: centred on the middle pixel, the conversion of exactly what the command wrote. How
    closely two half-pixel spline shifts keep a kernel's shape is tests/test_kernels.py's round trip,
    on a smooth kernel: a 20-iteration estimate is no fair subject (on an AMD EPYC with AVX-512 its
    mass lies partly in blobs at the frame's edge, which ringing and clipping reshape by 28%)."""
    from mzsr.degradation.kernels import kernelgan_to_mzsr
    from mzsr.degradation.resolve import load_kernel_file

    back = load_kernel_file(estimated.runs["kernelgan"] / "a_kernel_x2.mat")
    np.testing.assert_array_equal(back, kernelgan_to_mzsr(estimated.est.kernelgan))
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(back), np.array(back.shape) // 2, atol=1e-4)
    assert back.min() >= 0 and back.sum() == pytest.approx(1.0)


def test_upscale_with_estimated_kernels(tmp_path, estimated):
    """upscale --degradation estimate: each image's kernel estimated (as estimate-kernel does, same seed),
    used to adapt, and written to <out>/kernels/ in the mzsr format."""
    from mzsr.degradation.resolve import load_kernel_file

    torch.set_num_threads(1)  # see `estimated`; the autouse fixture sets it back for the next test
    weights, sr = tmp_path / "w.safetensors", tmp_path / "sr"
    save_weights(weights, MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    assert (
        main(
            [
                "upscale",
                str(estimated.lr),
                "--out",
                str(sr),
                "--weights",
                str(weights),
                "--degradation",
                "estimate",
                "--estimator",
                "kernelgan",
                "--iterations",
                "20",
                "--steps",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in sr.iterdir()) == ["a.png", "b.png", "kernels"]
    assert read_image_uint8(sr / "a.png").shape == read_image_uint8(sr / "b.png").shape == (200, 200, 3)
    assert sorted(p.name for p in (sr / "kernels").iterdir()) == sorted(
        p.name for p in estimated.runs["mzsr"].iterdir()
    )
    for stem in ("a", "b"):
        np.testing.assert_array_equal(
            load_kernel_file(sr / "kernels" / f"{stem}_kernel_x2.mat"),
            load_kernel_file(estimated.runs["mzsr"] / f"{stem}_kernel_x2.mat"),
        )


def test_estimate_kernel_with_the_learned_estimator(tmp_path, texture_dir, capsys):
    """The default estimator: one line per image naming it, the kernel file and its picture."""
    from mzsr.degradation.resolve import load_kernel_file

    out = tmp_path / "k"
    assert main(["estimate-kernel", str(texture_dir), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("11x11 (x2, learned estimator)" in line for line in lines)
    k = load_kernel_file(out / "a_kernel_x2.mat")
    assert k.shape == (11, 11) and k.sum() == pytest.approx(1.0)
    assert sorted(p.name for p in out.iterdir()) == [
        "a_kernel_x2.mat",
        "a_kernel_x2.png",
        "b_kernel_x2.mat",
        "b_kernel_x2.png",
    ]


def test_upscale_without_a_degradation_says_how_to_give_one(tmp_path, texture_dir, capsys):
    weights = tmp_path / "w.safetensors"
    save_weights(weights, MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    for method in (["--weights", str(weights)], ["--method", "zssr"]):
        assert main(["upscale", str(texture_dir), "--out", str(tmp_path / "sr"), *method]) == 1
        err = capsys.readouterr().err
        assert "give --degradation (a known kernel, or 'estimate'" in err and "g2.0 does better" in err
    assert not (tmp_path / "sr").exists()


def test_estimate_kernel_refusals(tmp_path, texture_dir, capsys):
    def err(*args):
        assert main([*map(str, args)]) == 1
        return capsys.readouterr().err.strip()

    out = tmp_path / "k"
    kgan = ("--estimator", "kernelgan")
    assert "--iterations must be >= 1" in err("estimate-kernel", texture_dir, "--out", out, *kgan, "--iterations", "0")
    assert "--iterations: KernelGAN's options, for --estimator kernelgan only" in err(
        "estimate-kernel", texture_dir, "--out", out, "--iterations", "5"
    )
    assert "--scale 3" in err("estimate-kernel", texture_dir, "--out", out, "--scale", "3")
    assert "--degradation estimate only" in err(
        "upscale", texture_dir, "--out", out, "--degradation", "g2.0", "--iterations", "5"
    )
    assert "degrade needs a known kernel" in err("degrade", texture_dir, "--out", out, "--degradation", "estimate")
    assert "--iterations must be >= 1" in err(
        "upscale",
        texture_dir,
        "--out",
        out,
        "--degradation",
        "estimate",
        *kgan,
        "--iterations",
        "0",
        "--method",
        "zssr",
    )
    assert not out.exists()
    # an output that would overwrite an input (here a.png's picture, a_kernel_x2.png, is an input too)
    write_png(texture_dir / "a_kernel_x2.png", _texture(100, 3))
    line = err("estimate-kernel", texture_dir, "--out", texture_dir)
    assert "would overwrite the input" in line and "a_kernel_x2.png" in line
    assert sorted(p.name for p in texture_dir.iterdir()) == ["a.png", "a_kernel_x2.png", "b.png"]


def test_a_gradient_precision_the_cpu_cannot_run_is_refused_before_any_work(texture_dir, tmp_path, capsys, monkeypatch):
    """--grad-precision bfloat16 on a CPU without AMX or AVX512-BF16: one line, before an image is read,
    a kernel estimated or a file written (here with --degradation estimate, which writes kernels first)."""
    from mzsr.network import conv

    monkeypatch.setattr(conv, "native_bfloat16", lambda: False)
    out = tmp_path / "sr"
    args = ["upscale", str(texture_dir), "--out", str(out), "--degradation", "estimate", "--steps", "1"]
    assert main([*args, "--grad-precision", "bfloat16", "--device", "cpu"]) == 1
    assert "gradient precision bfloat16 needs a CPU with AMX or AVX512-BF16" in capsys.readouterr().err
    assert not out.exists()
