import warnings

import numpy as np
import pytest
import scipy.io

from mzsr import MZSRError
from mzsr.kernels import (
    NAMED_DEGRADATIONS,
    gaussian_kernel,
    load_kernel_file,
    named_degradation,
    resolve_degradation,
    sample_training_kernel,
    validate_kernel,
)

from conftest import SHARED_DATA, needs_shared_data


def moments(k):
    r = np.arange(k.shape[0]) - (k.shape[0] - 1) / 2
    x, y = np.meshgrid(r, r)
    return (k * x).sum(), (k * y).sum(), np.array([[(k * x * x).sum(), (k * x * y).sum()], [(k * x * y).sum(), (k * y * y).sum()]])


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
    assert named_degradation("gb1.3").method == "bicubic"
    assert named_degradation("ani").method == "direct"
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
    for name in ("a.mat", "b.mat", "d.npy"):
        np.testing.assert_allclose(load_kernel_file(tmp_path / name), k, atol=1e-12)
    with pytest.raises(MZSRError, match=r"c\.mat.*no 'kernel' or 'Kernel'"):
        load_kernel_file(tmp_path / "c.mat")
    (tmp_path / "e.mat").write_text("not a mat file")
    with pytest.raises(MZSRError, match="e.mat"):
        load_kernel_file(tmp_path / "e.mat")
    d = resolve_degradation(str(tmp_path / "a.mat"), "bicubic")
    assert d.method == "bicubic" and d.name == "a"
    with pytest.raises(MZSRError, match="contradicts"):
        resolve_degradation("g2.0", "bicubic")


@needs_shared_data
def test_kernelgan_file():
    k = load_kernel_file(SHARED_DATA / "kernels" / "random_kernel_x2_Kernel_key.mat")
    assert k.shape == (9, 9) and k.sum() == pytest.approx(1.0)
