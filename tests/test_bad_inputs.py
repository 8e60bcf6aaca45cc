"""Every bad input gets a clear one-line error naming the file and the problem, or a documented conversion.

Table-driven (docs/reliability.md). Each image, kernel and weights case goes through the `mzsr`
command (in-process): exit status 1, one line `mzsr: error: <file>: <problem>` on stderr, nothing
written. Each image and kernel case also goes through the pipeline's rule script that meets it
(scripts/lr_image.py, run in-process as Snakemake runs it), and one real Snakemake run shows for one
case of each kind what the user sees (the same line in the job's log and on the console, the output
removed). Each config case fails Snakemake's dry run with one line naming the config file, the key
and the problem.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import runpy
import shutil
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from PIL import Image

from mzsr import MZSRError, error_line
from mzsr.cli import main
from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.degradation.kernels import gaussian_kernel, named_degradation
from mzsr.evaluation.metrics import modcrop
from mzsr.files.checkpoints import save_weights
from mzsr.files.images import read_image_uint8, write_png
from mzsr.network.model import MZSRNet
from conftest import run_snakemake, smooth_image
from script_runner import Named

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "micro.yaml"
H, W = 40, 48
SOURCE = to_uint8(smooth_image(H, W, seed=3))  # the picture behind every image case


# ------------------------------------------------------------------------------------ file makers


def _png(path: Path, arr: np.ndarray, **kw) -> None:
    Image.fromarray(arr).save(path, **kw)


def _png16(path: Path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _truncated(path: Path) -> None:
    _png(path, SOURCE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


GRAY = np.round(SOURCE.mean(axis=2)).astype(np.uint8)
ALPHA = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
ALPHA[:5] = 0  # fully transparent rows keep their colour too
PALETTE = np.random.default_rng(1).integers(0, 256, (16, 3), dtype=np.uint8)
INDICES = (np.arange(H * W).reshape(H, W) * 7 // 11 % 16).astype(np.uint8)
GRAY16 = np.random.default_rng(2).integers(0, 65536, (H, W), dtype=np.uint16)
RGB16 = np.random.default_rng(3).integers(0, 65536, (H, W, 3), dtype=np.uint16)


def _palette(path: Path) -> None:
    im = Image.fromarray(INDICES, mode="P")
    im.putpalette(PALETTE.flatten().tolist())
    im.save(path)


def _exif_rotated(path: Path) -> None:
    im = Image.fromarray(SOURCE)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation 6: shown rotated 90 degrees clockwise
    im.save(path, exif=exif, quality=95)


@dataclass(frozen=True)
class ImageCase:
    name: str
    file: str
    write: Callable[[Path], None]
    error: str | None = None  # regex of the one-line error; None: a documented conversion
    expected: np.ndarray | None = None  # what read_image_uint8 gives for a conversion
    tolerance: float = 0.0  # mean absolute difference allowed (lossy JPEG cases)


IMAGE_CASES = [
    ImageCase("truncated PNG", "truncated.png", _truncated, r"corrupt or truncated image"),
    ImageCase(
        "text file named .png",
        "text.png",
        lambda p: p.write_text("this is not a picture\n"),
        r"not a readable image \(unknown or corrupt format\)",
    ),
    ImageCase("empty file", "empty.png", lambda p: p.write_bytes(b""), r"empty file, not an image"),
    ImageCase(
        "1x1 image", "one.png", lambda p: _png(p, SOURCE[:1, :1]), r"image is 1x1 pixels, too small to super-resolve"
    ),
    ImageCase(
        "image smaller than the kernel",
        "small.png",
        lambda p: _png(p, SOURCE[:12, :14]),
        r"image is 14x12 pixels, smaller than the 21x21 kernel g2\.0",
    ),
    ImageCase("grayscale", "gray.png", lambda p: _png(p, GRAY), expected=np.repeat(GRAY[..., None], 3, axis=2)),
    ImageCase(
        "RGBA (alpha dropped, colour kept)", "rgba.png", lambda p: _png(p, np.dstack([SOURCE, ALPHA])), expected=SOURCE
    ),
    ImageCase("palette", "palette.png", _palette, expected=PALETTE[INDICES]),
    ImageCase(
        "16-bit grayscale PNG",
        "gray16.png",
        lambda p: _png(p, GRAY16),
        expected=np.repeat(np.round(GRAY16 / 65535 * 255).astype(np.uint8)[..., None], 3, axis=2),
    ),
    ImageCase("16-bit RGB PNG", "rgb16.png", lambda p: _png16(p, RGB16), expected=(RGB16 >> 8).astype(np.uint8)),
    ImageCase("EXIF-rotated JPEG", "exif.jpg", _exif_rotated, expected=np.rot90(SOURCE, -1), tolerance=6.0),
    ImageCase(
        "CMYK JPEG",
        "cmyk.jpg",
        lambda p: Image.fromarray(SOURCE).convert("CMYK").save(p, quality=95),
        expected=SOURCE,
        tolerance=3.0,
    ),
    ImageCase("odd size (mod-cropped)", "odd.png", lambda p: _png(p, SOURCE[:39, :47]), expected=SOURCE[:39, :47]),
]
IMAGE_ERRORS = [c for c in IMAGE_CASES if c.error]
IMAGE_CONVERSIONS = [c for c in IMAGE_CASES if not c.error]


class _Evil:
    """A pickle that would run code: it touches `marker` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


K = gaussian_kernel(2.0, 2.0, 0.0, 15)


def _with(value, at=(3, 3)):
    k = K.copy()
    k[at] = value
    return k


def _pickled_npy(path: Path) -> None:
    np.save(path, np.array([_Evil(path.with_suffix(".ran"))], dtype=object), allow_pickle=True)


@dataclass(frozen=True)
class KernelCase:
    name: str
    file: str
    write: Callable[[Path], None]
    error: str | None  # None: the documented conversion (normalised to sum 1, one-line warning)


KERNEL_CASES = [
    KernelCase(
        "kernel .mat with the wrong key",
        "wrongkey.mat",
        lambda p: scipy.io.savemat(p, {"blur": K}),
        r"no 'kernel' or 'Kernel' variable in the \.mat file \(found \['blur'\]\)",
    ),
    KernelCase("1-D kernel", "oned.npy", lambda p: np.save(p, K.sum(axis=0)), r"kernel must be 2-D, got shape \(15,\)"),
    KernelCase("kernel with NaN", "nan.npy", lambda p: np.save(p, _with(np.nan)), r"kernel has NaN or infinite values"),
    KernelCase(
        "kernel with negative values",
        "negative.npy",
        lambda p: np.save(p, _with(-0.1)),
        r"kernel has negative values \(min -0\.1\)",
    ),
    KernelCase("all-zero kernel", "zero.npy", lambda p: np.save(p, np.zeros((15, 15))), r"kernel sums to zero"),
    KernelCase(
        "kernel larger than the image",
        "big.npy",
        lambda p: np.save(p, np.full((61, 61), 1 / 61**2)),
        r"image is 48x40 pixels, smaller than the 61x61 kernel .*big\.npy",
    ),
    KernelCase(
        "truncated .mat",
        "truncated.mat",
        lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 20),
        r"cannot read kernel file",
    ),
    KernelCase(
        "pickled object array in .npy (would run code)",
        "pickled.npy",
        _pickled_npy,
        r"cannot read kernel file \(Object arrays cannot be loaded when allow_pickle=False\)",
    ),
    KernelCase("kernel not summing to 1", "unnormalised.npy", lambda p: np.save(p, 3 * K), None),
]


# ------------------------------------------------------------------------------------ helpers


def assert_one_line_error(rc: int, err: str, path, problem: str) -> str:
    """Exit status 1 and exactly one stderr line: `mzsr: error: <path>...<problem>`, no traceback."""
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mzsr: error: ") and str(path) in lines[0], lines[0]
    assert re.search(problem, lines[0]), lines[0]
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    assert not out.exists(), sorted(out.rglob("*"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every case's file, plus a plain good image and random weights for the `upscale` command."""
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "images").mkdir()
    (root / "kernels").mkdir()
    for case in IMAGE_CASES:
        case.write(root / "images" / case.file)
    for case in KERNEL_CASES:
        case.write(root / "kernels" / case.file)
    _png(root / "images" / "base.png", SOURCE)
    torch.manual_seed(0)
    save_weights(root / "weights.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
    return root


def cli(capsys, *args) -> tuple[int, str]:
    rc = main([*map(str, args)])
    return rc, capsys.readouterr().err


def lr_of(hr_u8: np.ndarray, kernel=None) -> np.ndarray:
    """What `mzsr degrade --degradation g2.0` must write for an HR image read as `hr_u8`."""
    kernel = named_degradation("g2.0").kernel if kernel is None else kernel
    return to_uint8(degrade(modcrop(hr_u8, 2) / 255.0, kernel, 2, "direct"))


# ------------------------------------------------------------------------------------ images, CLI


@pytest.mark.parametrize("command", ["degrade", "upscale"])
@pytest.mark.parametrize("case", IMAGE_ERRORS, ids=lambda c: c.name)
def test_bad_image_cli(files, tmp_path, capsys, case, command):
    path, out = files / "images" / case.file, tmp_path / "out"
    if command == "degrade":
        rc, err = cli(capsys, "degrade", path, "--out", out, "--degradation", "g2.0")
    else:
        rc, err = cli(
            capsys,
            "upscale",
            path,
            "--out",
            out,
            "--weights",
            files / "weights.safetensors",
            "--degradation",
            "g2.0",
            "--steps",
            "1",
            "--device",
            "cpu",
        )
    assert_one_line_error(rc, err, path, case.error)
    assert_nothing_written(out)


def test_one_bad_image_in_a_folder_stops_before_anything_is_written(files, tmp_path, capsys):
    folder = tmp_path / "hr"
    folder.mkdir()
    shutil.copy(files / "images" / "base.png", folder / "a_good.png")
    shutil.copy(files / "images" / "truncated.png", folder / "b_bad.png")
    rc, err = cli(capsys, "degrade", folder, "--out", tmp_path / "out", "--degradation", "g2.0")
    assert_one_line_error(rc, err, folder / "b_bad.png", "truncated")
    assert_nothing_written(tmp_path / "out")  # not even the good image before it


@pytest.mark.parametrize("case", IMAGE_CONVERSIONS, ids=lambda c: c.name)
def test_image_conversion_cli(files, tmp_path, capsys, case):
    path, out = files / "images" / case.file, tmp_path / "out"
    got = read_image_uint8(path)
    assert got.shape == case.expected.shape
    if case.tolerance:
        diff = np.abs(got.astype(float) - case.expected)
        assert diff.mean() < case.tolerance, diff.mean()
    else:
        np.testing.assert_array_equal(got, case.expected)
    rc, err = cli(capsys, "degrade", path, "--out", out, "--degradation", "g2.0")
    assert rc == 0 and err == ""
    lr = read_image_uint8(out / f"{path.stem}.png")
    np.testing.assert_array_equal(lr, lr_of(got))
    if case.file == "odd.png":  # 39x47 is mod-cropped to 38x46 before degrading
        assert lr.shape == (19, 23, 3)
    if case.file == "exif.jpg":  # shown upright: width and height swap
        assert lr.shape == (W // 2, H // 2, 3)
        assert np.abs(got.astype(float) - np.rot90(SOURCE, 1)).mean() > 5 * case.tolerance  # not the other way round


# ------------------------------------------------------------------------------------ kernels, CLI


@pytest.mark.parametrize("command", ["degrade", "upscale"])
@pytest.mark.parametrize("case", [c for c in KERNEL_CASES if c.error], ids=lambda c: c.name)
def test_bad_kernel_cli(files, tmp_path, capsys, case, command):
    kernel, out = files / "kernels" / case.file, tmp_path / "out"
    image = files / "images" / "base.png"
    if command == "degrade":
        rc, err = cli(capsys, "degrade", image, "--out", out, "--degradation", kernel)
    else:  # the kernel must fit the LR image given to upscale: 48x40 here too
        rc, err = cli(
            capsys,
            "upscale",
            image,
            "--out",
            out,
            "--weights",
            files / "weights.safetensors",
            "--degradation",
            kernel,
            "--steps",
            "1",
            "--device",
            "cpu",
        )
    line = assert_one_line_error(rc, err, kernel, case.error)
    if case.file == "big.npy":
        assert str(image) in line
    assert_nothing_written(out)
    assert not kernel.with_suffix(".ran").exists()


def test_unnormalised_kernel_is_normalised_with_a_one_line_warning(files, tmp_path, capsys):
    kernel = files / "kernels" / "unnormalised.npy"
    rc, err = cli(capsys, "degrade", files / "images" / "base.png", "--out", tmp_path / "out", "--degradation", kernel)
    assert rc == 0
    assert err.strip().splitlines() == [f"mzsr: warning: {kernel}: kernel sums to 3, normalised to 1"]
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "out" / "base.png"), lr_of(SOURCE, K))


# ------------------------------------------------------------------------------------ weights, CLI


def _state(**change):
    torch.manual_seed(1)
    state = MZSRNet().state_dict()
    state.update(change)
    return state


def _safetensors(path: Path, state: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def _torch_evil(path: Path) -> None:
    torch.save({"convs.0.weight": _Evil(path.with_suffix(".ran"))}, path)


def _pickle_evil(path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"convs.0.weight": _Evil(path.with_suffix(".ran"))}, f)


def _truncated_weights(path: Path) -> None:
    save_weights(path, _state(), {"scale": 2})
    path.write_bytes(path.read_bytes()[:5000])


WEIGHTS_CASES = [
    (
        "weights for another scale",
        "x4.safetensors",
        lambda p: save_weights(p, _state(), {"scale": 4}),
        r"was trained for x4, expected x2",
    ),
    (
        "wrong shapes",
        "shapes.safetensors",
        lambda p: _safetensors(p, _state(**{"convs.0.weight": torch.zeros(64, 3, 5, 5)})),
        r"shape mismatch at 'convs\.0\.weight': expected \[64, 3, 3, 3\], got \[64, 3, 5, 5\]",
    ),
    (
        "missing layer",
        "missing.safetensors",
        lambda p: _safetensors(p, {k: v for k, v in _state().items() if "7" not in k}),
        r"not MZSRNet weights: missing key 'convs\.7\.weight'",
    ),
    (
        "NaN weights",
        "nan.safetensors",
        lambda p: _safetensors(p, _state(**{"convs.2.bias": torch.full((64,), math.nan)})),
        r"'convs\.2\.bias' contains NaN or infinite values",
    ),
    (
        "pickle that would run code (torch.save)",
        "evil.pt",
        _torch_evil,
        r"refused to load: not a plain tensor checkpoint",
    ),
    (
        "pickle that would run code (pickle.dump)",
        "evil2.pth",
        _pickle_evil,
        r"refused to load: not a plain tensor checkpoint",
    ),
    # recognised by content: a pickle is a pickle whatever its name, and is refused as one
    (
        "pickle named .safetensors",
        "evil.safetensors",
        lambda p: p.write_bytes(pickle.dumps(_Evil(p.with_suffix(".ran")))),
        r"refused to load: not a plain tensor checkpoint",
    ),
    ("truncated weights file", "truncated.safetensors", _truncated_weights, r"not a readable safetensors file"),
    ("empty weights file", "empty.safetensors", lambda p: p.write_bytes(b""), r"weights file is empty"),
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name, file, write, problem", WEIGHTS_CASES, ids=[c[0] for c in WEIGHTS_CASES])
def test_bad_weights_cli(files, tmp_path, capsys, name, file, write, problem):
    path, out = tmp_path / file, tmp_path / "out"
    write(path)
    rc, err = cli(
        capsys,
        "upscale",
        files / "images" / "base.png",
        "--out",
        out,
        "--weights",
        path,
        "--degradation",
        "g2.0",
        "--steps",
        "1",
        "--device",
        "cpu",
    )
    assert_one_line_error(rc, err, path, problem)
    assert_nothing_written(out)
    assert not path.with_suffix(".ran").exists(), "the pickle's code ran"


# ------------------------------------------------------------------------------------ constant colour


def test_constant_colour_image_adapts_and_scores_infinite_psnr(files, tmp_path, capsys):
    """No division by zero anywhere: adaptation on a flat image works, identical images score PSNR inf."""
    flat = np.full((64, 56, 3), (200, 120, 40), np.uint8)  # LR 32x28: the 21x21 kernel fits
    write_png(tmp_path / "hr" / "flat.png", flat)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert main(["degrade", str(tmp_path / "hr"), "--out", str(tmp_path / "lr"), "--degradation", "g2.0"]) == 0
        assert (
            main(
                [
                    "upscale",
                    str(tmp_path / "lr"),
                    "--out",
                    str(tmp_path / "sr"),
                    "--weights",
                    str(files / "weights.safetensors"),
                    "--degradation",
                    "g2.0",
                    "--steps",
                    "3",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        assert main(["evaluate", str(tmp_path / "hr"), str(tmp_path / "hr"), "--csv", str(tmp_path / "m.csv")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "lr" / "flat.png"), flat[::2, ::2])
    assert read_image_uint8(tmp_path / "sr" / "flat.png").shape == (64, 56, 3)
    assert "PSNR     inf dB  SSIM 1.0000" in captured.out
    assert (tmp_path / "m.csv").read_text().splitlines()[1:] == ["flat,inf,1.000000", "mean,inf,1.000000"]


# ------------------------------------------------------------------------------------ the pipeline
# Every image and kernel case goes through the rule script that meets it in the pipeline
# (scripts/lr_image.py: the ground truth, mod-cropped and degraded), run in-process as Snakemake
# runs it; a real Snakemake run then shows, for one case of each kind, what the user sees.


def run_lr_image(monkeypatch, workdir: Path, image: str, degradation: str) -> Path:
    """scripts/lr_image.py on `image` (relative to workdir) as Snakemake's script directive runs it."""
    stem = Path(image).stem
    out = workdir / "resources" / "test_inputs" / Path(degradation).stem / f"{stem}.png"
    log = workdir / "logs" / f"{Path(degradation).stem}-{stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stub = SimpleNamespace(
        input=Named(gt=str(workdir / image), kernel=[]),
        output=Named(out=str(out)),
        log=Named(log=str(log)),
        params=SimpleNamespace(degradation=degradation, scale=2, convention="mzsr"),
        wildcards=SimpleNamespace(image=stem),
        threads=1,
        config={},
    )
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # _util installs the one-line hook
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the script sends stderr to its log
    try:
        runpy.run_path(str(REPO / "scripts" / "lr_image.py"), init_globals={"snakemake": stub})
    finally:
        if sys.stderr is not sys.__stderr__ and getattr(sys.stderr, "name", None) == str(log):
            sys.stderr.close()
    return out


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda c: c.name)
def test_image_cases_in_the_pipeline_script(files, monkeypatch, case):
    out_dir = files / "resources" / "test_inputs" / "g2.0"
    if case.error:
        with pytest.raises(MZSRError) as e:
            run_lr_image(monkeypatch, files, f"images/{case.file}", "g2.0")
        line = error_line(e.value)
        assert line.startswith(f"mzsr: error: {files / 'images' / case.file}: ") and re.search(case.error, line), line
        stem = Path(case.file).stem
        assert not (out_dir / f"{stem}.png").exists() and not list(out_dir.glob(f".{stem}.png.*"))
    else:
        out = run_lr_image(monkeypatch, files, f"images/{case.file}", "g2.0")
        np.testing.assert_array_equal(read_image_uint8(out), lr_of(read_image_uint8(files / "images" / case.file)))


@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: c.name)
def test_kernel_cases_in_the_pipeline_script(files, monkeypatch, case):
    kernel = f"kernels/{case.file}"
    if case.error is None:
        with pytest.warns(UserWarning, match="normalised to 1"):
            out = run_lr_image(monkeypatch, files, "images/base.png", kernel)
        np.testing.assert_array_equal(read_image_uint8(out), lr_of(SOURCE, K))
        return
    with pytest.raises(MZSRError) as e:
        run_lr_image(monkeypatch, files, "images/base.png", kernel)
    named = files / "images" / "base.png" if case.file == "big.npy" else kernel  # the image comes first there
    line = error_line(e.value)
    assert line.startswith(f"mzsr: error: {named}: ") and re.search(case.error, line), line
    assert not (files / "resources" / "test_inputs" / Path(case.file).stem).exists()
    assert not (files / "kernels" / f"{Path(case.file).stem}.ran").exists()


def deg_name(spec: str) -> str:
    """A degradation's name in the pipeline's paths: a kernel file's stem, else the name itself."""
    return Path(spec).stem if spec.endswith((".mat", ".npy")) else spec


# Run by Snakemake: (test image, degradation, file the error names, problem); a bad image, a bad
# kernel, a kernel the image does not fit, and two conversions (problem None).
SNAKEMAKE_CASES = [
    ("truncated.png", "g2.0", "images/truncated.png", r"corrupt or truncated image"),
    ("base.png", "kernels/nan.npy", "kernels/nan.npy", r"kernel has NaN or infinite values"),
    ("base.png", "kernels/big.npy", "images/base.png", r"smaller than the 61x61 kernel kernels/big\.npy"),
    ("rgb16.png", "g2.0", None, None),
    ("cmyk.jpg", "g2.0", None, None),
]


@pytest.fixture(scope="module")
def pipeline(files):
    workdir = files / "pipeline"
    workdir.mkdir()
    shutil.copytree(files / "images", workdir / "images")
    shutil.copytree(files / "kernels", workdir / "kernels")
    config = yaml.safe_load(MICRO.read_text())
    config["test_sets"] = {"bad": "images", "gone": "no/such/folder"}
    config["degradations"] = ["g2.0", "kernels/nan.npy", "kernels/big.npy"]
    (workdir / "cfg.yaml").write_text(yaml.safe_dump(config))
    targets = [
        f"resources/test_inputs/bad/{deg_name(deg)}/{Path(image).stem}.png" for image, deg, _, _ in SNAKEMAKE_CASES
    ]
    proc = run_snakemake(workdir, *targets, "--cores", "2", "--keep-going", "--configfile", "cfg.yaml")
    return workdir, proc, targets


@pytest.mark.slow
def test_what_the_user_sees_in_a_pipeline_run(pipeline):
    """A failed job: Snakemake's "Error in rule lr_image" names its log, which holds just the one-line
    error, also shown on the console; its output is removed; --keep-going finishes the other jobs."""
    workdir, proc, targets = pipeline
    console = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode != 0
    for target, (image, deg, named, problem) in zip(targets, SNAKEMAKE_CASES):
        output = workdir / target
        if problem is None:
            np.testing.assert_array_equal(read_image_uint8(output), lr_of(read_image_uint8(workdir / "images" / image)))
            continue
        assert not output.exists() and not list(output.parent.glob(f".{output.name}.*"))
        log = workdir / "logs" / "lr_image" / "bad" / deg_name(deg) / f"{output.stem}.log"
        lines = log.read_text().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mzsr: error: {named}: ") and re.search(problem, lines[0]), (
            lines
        )
        assert lines[0] in console
        assert any(line.strip().startswith(f"log: {log.relative_to(workdir)}") for line in console)
    # A missing test-set folder is skipped with a visible warning (config/config.yaml must plan on a
    # fresh clone before the benchmark sets are in place); the other test sets run.
    assert "test set gone: folder no/such/folder not found, skipped (put its HR images there to include it)" in console


CONFIG_CASES = [
    (
        "unknown key",
        lambda c: c["meta"].update(iteratons=5),
        r"^config {cfg}: meta: Additional properties are not allowed \('iteratons' was unexpected\)$",
    ),
    (
        "wrong type",
        lambda c: c["pretrain"].update(steps="many"),
        r"^config {cfg}: pretrain\.steps: 'many' is not of type 'integer'$",
    ),
    (
        "negative iteration count",
        lambda c: c["meta"].update(iterations=-3),
        r"^config {cfg}: meta\.iterations: -3 is less than the minimum of 1$",
    ),
    (
        "no test-set folder exists",
        lambda c: c.update(test_sets={"a": "no/such/folder"}),
        r"^no test set found: none of no/such/folder holds images \(config test_sets\)$",
    ),
]


@pytest.mark.parametrize("name, change, problem", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_fails_the_dry_run(tmp_path, name, change, problem):
    config = yaml.safe_load(MICRO.read_text())
    change(config)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(tmp_path, "-n", "--configfile", "cfg.yaml")
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode != 0
    pattern = problem.format(cfg=re.escape(str(tmp_path / "cfg.yaml")))
    assert any(re.search(pattern, line) for line in lines), "\n".join(lines[-20:])
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


# ------------------------------------------------------------------------------------ kernel estimation, CLI


@pytest.mark.parametrize("command", ["estimate-kernel", "upscale"])
def test_image_too_small_for_kernelgan(files, tmp_path, capsys, command):
    """KernelGAN needs 84x84 pixels (64 with --real): a smaller image is refused before any work,
    even when it comes after a good one."""
    folder, out = tmp_path / "lr", tmp_path / "out"
    folder.mkdir()
    write_png(folder / "a_good.png", to_uint8(smooth_image(100, 100, seed=4)))
    shutil.copy(files / "images" / "base.png", folder / "b_small.png")  # 48x40
    extra = (
        ["--weights", files / "weights.safetensors", "--degradation", "estimate", "--steps", "1"]
        if command == "upscale"
        else []
    )
    kgan = ["--estimator", "kernelgan", "--iterations", "1"]
    rc, err = cli(capsys, command, folder, "--out", out, *kgan, "--device", "cpu", *extra)
    assert_one_line_error(
        rc,
        err,
        folder / "b_small.png",
        r"48x40 pixels; KernelGAN needs at least 84 .*64 with the real-image setting: --real",
    )
    assert_nothing_written(out)
    rc, err = cli(capsys, command, folder / "b_small.png", "--out", out, "--real", *kgan, *extra)
    assert_one_line_error(rc, err, folder / "b_small.png", "KernelGAN needs at least 64 pixels on each side$")
    assert_nothing_written(out)
