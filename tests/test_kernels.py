import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.ndimage

from mzsr import MZSRError
from mzsr.degradation.kernels import (
    NAMED_DEGRADATIONS,
    TRAIN_KERNEL_SIZE,
    analytic_kernel,
    gaussian_kernel,
    kernelgan_center,
    mzsr_center,
    mzsr_to_kernelgan,
    named_degradation,
    sample_training_params,
    validate_kernel,
)
from mzsr.degradation.resolve import load_kernel_file, resolve_degradation
from conftest import SHARED_DATA


def sample_training_kernel(rng: np.random.Generator, scale: int) -> np.ndarray:
    """One task kernel of MZSR's training distribution, as task shards draw it."""
    l1, l2, theta = sample_training_params(rng, scale, 1)[0]
    return gaussian_kernel(l1, l2, theta, TRAIN_KERNEL_SIZE)


def moments(k):
    r = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    x, y = np.meshgrid(r, r)
    return (
        (k * x).sum(),
        (k * y).sum(),
        np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]]),
    )


def test_gaussian_covariance_uses_variances():
    k = gaussian_kernel(4.0, 1.0, 0.0, 31)
    mx, my, cov = moments(k)
    assert abs(mx) < 1e-12 and abs(my) < 1e-12
    # l1, l2 are variances: the sampled covariance equals diag(4, 1), not diag(16, 1).
    np.testing.assert_allclose(cov, np.diag([4.0, 1.0]), atol=1e-3)
    k45 = gaussian_kernel(4.0, 1.0, np.pi / 4, 31)
    np.testing.assert_allclose(moments(k45)[2], [[2.5, 1.5], [1.5, 2.5]], atol=1e-3)


def test_sampler_statistics_and_seeding():
    rng = np.random.default_rng(0)
    ks = [sample_training_kernel(rng, 2) for _ in range(400)]
    assert all(k.shape == (15, 15) and abs(k.sum() - 1) < 1e-12 and k.min() >= 0 for k in ks)
    eig = np.array([np.linalg.eigvalsh(moments(k)[2])[::-1] for k in ks])
    # l1 ~ U[1, 5] (x2) and l2 ~ U[1, l1]: check ranges and means (truncation by the 15x15 grid is small).
    assert eig[:, 0].min() > 0.9 and eig[:, 0].max() < 5.05
    assert np.all(eig[:, 1] <= eig[:, 0] + 1e-9)
    assert abs(eig[:, 0].mean() - 3.0) < 0.2
    assert abs(eig[:, 1].mean() - 2.0) < 0.2
    a = sample_training_kernel(np.random.default_rng(7), 2)
    b = sample_training_kernel(np.random.default_rng(7), 2)
    np.testing.assert_array_equal(a, b)
    big = np.array([np.linalg.eigvalsh(moments(sample_training_kernel(rng, 4))[2]).max() for _ in range(200)])
    assert big.max() > 6  # x4 draws l1 up to 10


def test_named_degradations():
    assert set(NAMED_DEGRADATIONS) == {"g0.2", "g2.0", "ani", "gb1.3", "bicubic"}
    assert named_degradation("g2.0").kernel.shape == (21, 21)
    assert named_degradation("gb1.3").subsampling == "bicubic"
    assert named_degradation("ani").subsampling == "direct"
    assert named_degradation("bicubic").kernel is None
    k = named_degradation("g0.2").kernel
    # A narrow Gaussian sampled on the pixel grid: neighbours of the centre weigh exp(-1 / (2 * 0.2)).
    assert k[7, 8] / k[7, 7] == pytest.approx(np.exp(-2.5)) and k[8, 8] / k[7, 7] == pytest.approx(np.exp(-5.0))
    with pytest.raises(MZSRError, match="unknown degradation"):
        named_degradation("g9")


def test_validation_errors():
    for bad, msg in [
        (np.ones(5), "2-D"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.array([[1.0, -0.5], [0.2, 0.3]]), "negative"),
        (np.zeros((3, 3)), "sums to zero"),
    ]:
        with pytest.raises(MZSRError, match=msg):
            validate_kernel(bad, "k.mat")
    with pytest.raises(MZSRError, match="larger than the image"):
        validate_kernel(np.ones((15, 15)), "k.mat", image_shape=(10, 40))


def test_unnormalised_kernel_is_normalised_with_warning():
    with pytest.warns(UserWarning, match="normalised"):
        k = validate_kernel(np.ones((3, 3)), "k.npy")
    assert k.sum() == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_kernel(gaussian_kernel(1, 1, 0), "k")


def test_kernel_files(tmp_path):
    k = gaussian_kernel(2, 1, 0.4)
    scipy.io.savemat(tmp_path / "a.mat", {"kernel": k})
    scipy.io.savemat(tmp_path / "b.mat", {"Kernel": k})
    scipy.io.savemat(tmp_path / "c.mat", {"weights": k})
    np.save(tmp_path / "d.npy", k)
    for name in ("a.mat", "d.npy"):
        np.testing.assert_allclose(load_kernel_file(tmp_path / name), k, atol=1e-12)
    # key "Kernel": KernelGAN's convention, re-centred (k is centred already: only padded)
    np.testing.assert_allclose(load_kernel_file(tmp_path / "b.mat"), np.pad(k, 1), atol=1e-9)
    with pytest.raises(MZSRError, match=r"c\.mat.*no 'kernel' or 'Kernel'"):
        load_kernel_file(tmp_path / "c.mat")
    (tmp_path / "e.mat").write_text("not a mat file")
    with pytest.raises(MZSRError, match="e.mat"):
        load_kernel_file(tmp_path / "e.mat")
    assert load_kernel_file(tmp_path / "a.mat").flags.c_contiguous  # loadmat gives column-major arrays
    d = resolve_degradation(str(tmp_path / "a.mat"), "bicubic")
    assert d.subsampling == "bicubic" and d.name == "a"
    with pytest.raises(MZSRError, match="contradicts"):
        resolve_degradation("g2.0", "bicubic")


@pytest.mark.shared_data
def test_kernelgan_file():
    """ZSSR's 9x9 kernel has its centre of mass at (4.48, 4.46), KernelGAN's half-pixel-shifted centre
    (4.5, 4.5), not the middle pixel: it is read with that shift undone."""
    path = SHARED_DATA / "kernels" / "random_kernel_x2_Kernel_key.mat"
    raw = scipy.io.loadmat(path)["Kernel"]
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(raw), kernelgan_center(raw.shape), atol=0.05)
    k = load_kernel_file(path)
    assert k.shape == (15, 15) and k.min() >= 0 and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), mzsr_center(k.shape), atol=1e-4)


def test_kernelgan_convention_round_trip(tmp_path):
    """A kernel written as KernelGAN writes it (half-pixel shift, spline ringing) reads back as the
    centred original, up to the spline's smoothing of two half-pixel shifts."""
    k = gaussian_kernel(4.0, 1.0, 0.3, 15)
    shifted = mzsr_to_kernelgan(k)
    assert shifted.min() < 0  # KernelGAN's files carry the spline's ringing
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(shifted), kernelgan_center(k.shape) + 2, atol=1e-9)
    scipy.io.savemat(tmp_path / "x_kernel_x2.mat", {"Kernel": shifted})
    back = load_kernel_file(tmp_path / "x_kernel_x2.mat")
    assert back.shape == (23, 23)
    np.testing.assert_allclose(back[4:-4, 4:-4], k, atol=0.04 * k.max())
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(back), (11, 11), atol=1e-5)
    # an x2 blur applied twice = the analytic x4 kernel once (away from the borders)
    rng = np.random.default_rng(0)
    img = rng.random((96, 96))
    from mzsr.degradation.degrade import degrade

    twice = degrade(degrade(img, k, 2, "direct"), k, 2, "direct")
    once = degrade(img, analytic_kernel(k), 4, "direct")
    np.testing.assert_allclose(twice[4:-4, 4:-4], once[4:-4, 4:-4], atol=1e-3)


# ------------------------------------------------------------------ random per-image kernels (rk)


def _center_offset(k):
    return np.asarray(scipy.ndimage.center_of_mass(k)) - np.asarray(k.shape) // 2


def test_random_kernel_recipe_and_centre():
    from mzsr.degradation.kernels import analytic_kernel, random_kernel, random_kernel_params

    rng = np.random.default_rng(3)
    params = [random_kernel_params(rng) for _ in range(300)]
    l1, l2, theta = (np.array([p[i] for p in params]) for i in range(3))
    noise = np.stack([p[3] for p in params])
    assert l1.min() >= 0.6 and l1.max() <= 5 and l2.min() >= 0.6 and l2.max() <= 5
    assert (l2 > l1).any() and (l1 > l2).any()  # independent, not ordered
    assert theta.min() >= -np.pi and theta.max() < np.pi and theta.min() < -2.5 and theta.max() > 2.5
    assert noise.shape == (300, 11, 11) and noise.min() >= -0.25 and noise.max() <= 0.25 and noise.max() > 0.24
    rng = np.random.default_rng(4)
    for _ in range(50):
        k = random_kernel(rng, 2)
        assert k.shape == (11, 11) and k.min() >= 0 and abs(k.sum() - 1) < 1e-12
        np.testing.assert_allclose(_center_offset(k), 0, atol=1e-6)
    # x4: KernelGAN's analytic x4 kernel of the x2 kernel the same generator would have drawn
    k4 = random_kernel(np.random.default_rng(5), 4)
    np.testing.assert_array_equal(k4, analytic_kernel(random_kernel(np.random.default_rng(5), 2)))
    assert k4.shape == (21, 21) and abs(k4.sum() - 1) < 1e-12
    assert np.abs(_center_offset(k4)).max() < 0.02  # analytic_kernel's border crop, not re-centred
    with pytest.raises(MZSRError, match="not for scale 3"):
        random_kernel(np.random.default_rng(0), 3)


def test_random_kernel_gaussian_part_and_noise():
    """Noise factored out: the Gaussian has the drawn eigen-variances and rotation; the noise multiplies it."""
    from mzsr.degradation.kernels import noisy_gaussian_kernel, random_kernel_params

    rng = np.random.default_rng(11)
    for _ in range(20):
        l1, l2, theta, noise = random_kernel_params(rng)
        np.testing.assert_array_equal(noisy_gaussian_kernel(l1, l2, theta), gaussian_kernel(l1, l2, theta, 11))
        big = noisy_gaussian_kernel(l1, l2, theta, size=41)  # wide enough that truncation is negligible
        cov = moments(big)[2]
        np.testing.assert_allclose(np.linalg.eigvalsh(cov), sorted([l1, l2]), atol=1e-3)
        if abs(l1 - l2) > 0.5:  # the first eigenvector (variance l1) points along theta (row down = +y)
            v = np.linalg.eigh(cov)[1][:, np.argmin(np.abs(np.linalg.eigvalsh(cov) - l1))]
            assert abs(abs(v @ [np.cos(theta), np.sin(theta)]) - 1) < 1e-3
        noisy, plain = noisy_gaussian_kernel(l1, l2, theta, noise), gaussian_kernel(l1, l2, theta, 11)
        # (1 + noise) times the Gaussian, up to normalisation and the sub-pixel re-centring (which moves
        # the steep tails of a narrow Gaussian a lot, so compare where it holds a percent of its peak)
        core = plain > 0.01 * plain.max()
        assert np.corrcoef((noisy / plain)[core], noise[core])[0, 1] > 0.5
        np.testing.assert_allclose(_center_offset(noisy), 0, atol=1e-6)
    with pytest.raises(MZSRError, match="noise of shape"):
        noisy_gaussian_kernel(2, 1, 0, np.zeros((5, 5)))


def test_rk_degradation_is_per_image_and_reproducible():
    import zlib

    from mzsr.degradation.kernels import random_kernel, random_kernel_seed

    a = resolve_degradation("rk", image="a")
    assert a.subsampling == "direct" and a.name == "rk" and a.kernel.shape == (11, 11)
    np.testing.assert_array_equal(a.kernel, resolve_degradation("rk", image="a").kernel)
    np.testing.assert_array_equal(a.kernel, resolve_degradation("rk0", image="a").kernel)  # rk = seed 0
    np.testing.assert_array_equal(a.kernel, resolve_degradation("rk", "direct", image=Path("x/a.png")).kernel)
    np.testing.assert_array_equal(a.kernel, random_kernel(np.random.default_rng([0, zlib.crc32(b"a")]), 2))
    seven = resolve_degradation("rk7", image="img_001").kernel
    np.testing.assert_array_equal(seven, random_kernel(np.random.default_rng([7, zlib.crc32(b"img_001")]), 2))
    others = [resolve_degradation("rk", image="b").kernel, resolve_degradation("rk1", image="a").kernel, seven]
    assert all(np.abs(o - a.kernel).max() > 1e-3 for o in others)
    x4 = resolve_degradation("rk", image="a", scale=4)
    assert x4.kernel.shape == (21, 21) and x4.subsampling == "direct"
    assert (
        random_kernel_seed("rk"),
        random_kernel_seed("rk12"),
        random_kernel_seed("rkx"),
        random_kernel_seed("g2.0"),
    ) == (0, 12, None, None)
    with pytest.raises(MZSRError, match="'rk' draws a kernel of its own for every image"):
        resolve_degradation("rk")
    with pytest.raises(MZSRError, match="'rk3' uses direct subsampling; --subsampling bicubic contradicts it"):
        resolve_degradation("rk3", "bicubic", image="a")
    with pytest.raises(MZSRError, match="not for scale 3"):
        resolve_degradation("rk", image="a", scale=3)
    with pytest.raises(MZSRError, match=r"random per-image kernel \(rk, rk<seed>\)"):
        resolve_degradation("rkx")


def _write_mat73(path, **variables):
    """A MATLAB -v7.3 .mat file as MATLAB writes one: HDF5 behind a 512-byte header, arrays column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            f.create_dataset(name, data=np.asarray(value).T)
            f[name].attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Wed Dec  2 12:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02" + b"IM")


def test_kernel_files_in_matlab_v73_format(tmp_path):
    k = gaussian_kernel(3, 1, 0.4)[:, 2:-1]  # not square: a transposition would show
    k = k / k.sum()
    _write_mat73(tmp_path / "k.mat", kernel=k)
    with pytest.raises(NotImplementedError):
        scipy.io.loadmat(tmp_path / "k.mat")  # what the reader met before
    got = load_kernel_file(tmp_path / "k.mat")
    np.testing.assert_allclose(got, k, atol=1e-15)
    assert got.flags.c_contiguous
    _write_mat73(tmp_path / "g.mat", Kernel=gaussian_kernel(2, 1, 0.4))
    np.testing.assert_allclose(load_kernel_file(tmp_path / "g.mat"), np.pad(gaussian_kernel(2, 1, 0.4), 1), atol=1e-9)
