"""Kernel conventions: LR images made the KernelGAN way (DIV2KRK, KernelGAN's and ZSSR's code: the
kernel's centre of mass at size//2 + 0.5 (s - size mod 2)) against the paper's (centred on the
correlation origin), and `--kernel-convention`, which says which one an LR set was made in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage
from PIL import Image

from mzsr import MZSRError
from mzsr.cli import main
from mzsr.degradation.kernels import in_convention, kernelgan_center, mzsr_center, place_kernel
from mzsr.degradation.resolve import load_kernel_file, resolve_degradation
from mzsr.evaluation.metrics import psnr
from mzsr.files.images import read_image_uint8

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", ["rk", "g2.0", "ani"])
@pytest.mark.parametrize("scale", [2, 4])
def test_a_kernel_in_kernelgans_convention_has_its_centre_of_mass_where_kernel_shift_puts_it(spec, scale):
    if spec == "rk" or scale == 2:
        mzsr = resolve_degradation(spec, image="x", scale=scale).kernel
        kernelgan = resolve_degradation(spec, image="x", scale=scale, convention="kernelgan").kernel
        if scale == 2:  # (the analytic x4 kernel's crop leaves it up to 0.01 px off)
            np.testing.assert_allclose(scipy.ndimage.center_of_mass(mzsr), mzsr_center(mzsr.shape), atol=1e-6)
        np.testing.assert_allclose(
            scipy.ndimage.center_of_mass(kernelgan), kernelgan_center(kernelgan.shape, scale), atol=1e-6
        )
        assert kernelgan.min() >= 0 and abs(kernelgan.sum() - 1) < 1e-12
        assert in_convention(mzsr, "mzsr", scale) is mzsr  # the paper's convention: the kernel as it is


def test_either_key_reads_into_either_convention(tmp_path):
    """A kernel file read for the KernelGAN convention sits at KernelGAN's centre whatever its key;
    one read for MZSR's keeps key "kernel" as it is and undoes the shift of key "Kernel"."""
    kernel = resolve_degradation("rk", image="a").kernel
    shifted = place_kernel(kernel, "kernelgan", 2)
    scipy.io.savemat(tmp_path / "mzsr.mat", {"kernel": kernel})
    scipy.io.savemat(tmp_path / "kgan.mat", {"Kernel": shifted})
    for name in ("mzsr.mat", "kgan.mat"):
        k = load_kernel_file(tmp_path / name, "kernelgan", 2)
        np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), kernelgan_center(k.shape, 2), atol=1e-6)
    np.testing.assert_array_equal(load_kernel_file(tmp_path / "mzsr.mat"), kernel)
    back = load_kernel_file(tmp_path / "kgan.mat")
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(back), mzsr_center(back.shape), atol=1e-6)


def test_the_kernelgan_convention_is_one_of_direct_subsampling():
    with pytest.raises(MZSRError, match="kernelgan convention is one of direct subsampling"):
        resolve_degradation("gb1.3", convention="kernelgan")
    with pytest.raises(MZSRError, match="unknown kernel convention 'zssr'"):
        resolve_degradation("g2.0", convention="zssr")
    assert resolve_degradation("bicubic", convention="kernelgan").kernel is None


@pytest.fixture(scope="module")
def kernelgan_set(tmp_path_factory):
    """Two photo crops degraded the KernelGAN way with their own random kernels (as DIV2KRK)."""
    import skimage.data

    root = tmp_path_factory.mktemp("conventions")
    (root / "hr").mkdir()
    for name in ("astronaut", "coffee"):
        image = getattr(skimage.data, name)()
        h, w = image.shape[:2]
        Image.fromarray(image[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64]).save(root / "hr" / f"{name}.png")
    args = ["degrade", str(root / "hr"), "--out", str(root / "lr"), "--degradation", "rk"]
    assert main([*args, "--kernel-convention", "kernelgan"]) == 0
    return root


def _mean_psnr(root, sr: str) -> float:
    return float(
        np.mean(
            [
                psnr(read_image_uint8(p), read_image_uint8(root / "hr" / p.name), 2)
                for p in sorted((root / sr).glob("*.png"))
            ]
        )
    )


def _upscale(root, out: str, *degradation: str) -> float:
    args = ["upscale", str(root / "lr"), "--out", str(root / out), "--steps", "10", "--device", "cpu", *degradation]
    assert main(args) == 0
    return _mean_psnr(root, out)


def test_a_kernelgan_set_with_its_own_kernel_files_gives_the_sr_of_the_kernels_that_made_it(kernelgan_set):
    """`--kernel-convention kernelgan` with the set's own kernel files (key "Kernel", as DIV2KRK ships
    them) gives the SR of the very kernels that made the LR images, within 0.02 dB; the paper's
    convention, the default, reads the same files half a pixel off and loses. MZSR adapts on its own
    grid and moves its output by the conventions' offset: adapting with the kernel as placed (the
    network's grid half a pixel off the LR image's) loses more still."""
    root = kernelgan_set
    for path in sorted((root / "lr").glob("*.png")):  # the kernels that made them, used as they are
        made_with = resolve_degradation("rk", image=path.stem, convention="kernelgan").kernel
        np.testing.assert_allclose(
            scipy.io.loadmat(root / "lr" / "kernels" / f"{path.stem}_kernel_x2.mat")["Kernel"], made_with
        )
        (root / "exact").mkdir(exist_ok=True)
        np.save(root / "exact" / f"{path.stem}.npy", made_with)
    exact = []
    for path in sorted((root / "lr").glob("*.png")):
        out = f"sr_exact_{path.stem}"
        assert main(["upscale", str(path), "--out", str(root / out), "--steps", "10", "--device", "cpu",
                     "--degradation", str(root / "exact" / f"{path.stem}.npy"),
                     "--kernel-convention", "kernelgan"]) == 0  # fmt: skip
        exact.append(psnr(read_image_uint8(root / out / path.name), read_image_uint8(root / "hr" / path.name), 2))
    own = _upscale(root, "sr_own", "--degradation", "per-image", "--kernel-convention", "kernelgan")
    mismatched = _upscale(root, "sr_mzsr", "--degradation", "per-image")
    print(
        f"MZSR(10): made-with {np.mean(exact):.3f}, own files {own:.3f}, read in MZSR's convention {mismatched:.3f} dB"
    )
    assert abs(own - np.mean(exact)) <= 0.02
    assert own - mismatched > 0.5
    placed = []  # without the move: the kernel as placed, the output on the network's grid
    for path in sorted((root / "lr").glob("*.png")):
        from mzsr.adaptation.adapt import AdaptOptions, adapt
        from mzsr.adaptation.schedules import resolve_schedule
        from mzsr.files.checkpoints import load_model
        from mzsr.files.images import read_image

        model, _ = load_model(REPO / "models" / "direct_x2.safetensors", expected_scale=2)
        kernel = np.load(root / "exact" / f"{path.stem}.npy")
        options = AdaptOptions(steps=(10,), schedule=resolve_schedule("auto", "direct", 2))
        (out,) = adapt(model, read_image(path), kernel, 2, "direct", options, "cpu", (128, 128))
        placed.append(psnr(out.sr, read_image_uint8(root / "hr" / path.name), 2))
    print(f"adapted with the placed kernel, no move: {np.mean(placed):.3f} dB")
    assert own - np.mean(placed) > 0.5


def test_an_estimate_is_used_in_the_sets_convention(kernelgan_set):
    """--degradation estimate with --kernel-convention kernelgan: the estimate (which cannot see a
    half-pixel shift) placed as the LR images need it, and written as KernelGAN writes kernels."""
    root = kernelgan_set
    placed = _upscale(root, "sr_est_kgan", "--degradation", "estimate", "--kernel-convention", "kernelgan")
    centred = _upscale(root, "sr_est_mzsr", "--degradation", "estimate")
    assert placed > centred
    mat = scipy.io.loadmat(root / "sr_est_kgan" / "kernels" / "astronaut_kernel_x2.mat")
    assert "Kernel" in mat and "kernel" not in mat
