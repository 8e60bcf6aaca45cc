"""KernelGAN kernel estimation (mzsr.estimation.estimate): the collapsed generator equals the release's layered one,
the release's constraints and schedule, the conventions of the result, and that it finds a kernel's
orientation."""

import numpy as np
import pytest
import scipy.ndimage
import torch

from mzsr import MZSRError
from mzsr.degradation.degrade import degrade
from mzsr.degradation.kernels import analytic_kernel, gaussian_kernel, kernelgan_center, mzsr_center
from mzsr.estimation.estimate import estimate_kernel, kernel_error
from mzsr.estimation.kernelgan import (
    BICUBIC_X2,
    Constraints,
    Generator,
    crop_probabilities,
    gradient_map,
    penalty_mask,
    significant_kernel,
)


def test_collapsed_generator_is_the_layered_one():
    """G(x) = correlate(x, K(W)) keeping every 2nd pixel: same values and weight gradients as the
    release's six layers, and K(W) by transposed convolutions = the release's calc_curr_k."""
    torch.manual_seed(0)
    g = Generator(64).double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    assert g.kernel().shape == (13, 13)
    assert torch.allclose(g.kernel(), g.kernel_release(), rtol=0, atol=1e-18)
    fast, layered = g(x), g.forward_layered(x)
    assert fast.shape == layered.shape == (1, 3, 26, 26)
    assert torch.allclose(fast, layered, rtol=0, atol=1e-15)
    grads_fast = torch.autograd.grad(fast.square().sum(), list(g.parameters()))
    grads_layered = torch.autograd.grad(g.forward_layered(x).square().sum(), list(g.parameters()))
    for a, b in zip(grads_fast, grads_layered, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


def test_release_constants():
    # MATLAB's x0.5 bicubic weights: cubic(d / 2) / 2 at d = 0.5, 1.5, 2.5, 3.5
    def cubic(x):
        x = abs(x)
        return 1.5 * x**3 - 2.5 * x**2 + 1 if x <= 1 else -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2

    w = np.array([cubic(d / 2) / 2 for d in (3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5)])
    np.testing.assert_allclose(BICUBIC_X2, np.outer(w, w), atol=1e-15)
    assert BICUBIC_X2.sum() == pytest.approx(1.0)
    mask = penalty_mask(13)
    assert np.all(mask[2:-2, 2:-2] == 0) and mask[0, 0] == mask.max() and mask.max() < 30
    assert np.all(mask[[0, 1, -2, -1], :] > 0)


def test_learner_schedule():
    """lr / 10 at 750, the bicubic warm-up ends after 3 low losses in a row, then the bicubic weight
    falls 100x every 200 iterations and the centre/sparsity constraints come in below 5e-3."""
    c = Constraints(13, "cpu")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2e-4)
    for it, loss in enumerate([0.9, 0.3, 0.3, 0.9, 0.3, 0.3, 0.3, 0.3]):
        c.last_bicubic = loss
        c.update(it, [opt])
    assert c.similar_to_bicubic and c.weights["bicubic"] == 5.0
    for it in range(8, 751):
        c.update(it, [opt])
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-5)
    assert c.weights["bicubic"] == pytest.approx(5e-6, rel=1e-9)  # 5 -> 0.05 -> 5e-4 -> 5e-6 (floor)
    assert c.weights["centralized"] == 1.0 and c.weights["sparse"] == 5.0


def test_crop_sampling_follows_edges():
    img = np.zeros((80, 80, 3))
    img[:, 40:] = 1.0  # one vertical edge at column 40
    p = crop_probabilities(gradient_map(img), 26).reshape(80, 80)
    assert p.sum() == pytest.approx(1.0)
    assert np.all(p[:13] == 0) and np.all(p[:, -13:] == 0)  # no centre within crop // 2 of the border
    assert p[:, 31:50].sum() > 0.99  # centres within the two boxes (5 and 13 px) around the edge
    # a flat image (the release divides by zero there): every valid centre alike
    flat = crop_probabilities(gradient_map(np.full((60, 60, 3), 0.5)), 26).reshape(60, 60)
    np.testing.assert_allclose(flat[20:40, 20:40], 1.0 / 34**2)


def test_significant_kernel():
    k = np.arange(169, dtype=np.float64).reshape(13, 13)
    s = significant_kernel(k)
    # the 41st largest value is 128: everything up to 0.75 * 128 = 96 goes, 97..168 stay, shifted down
    assert s.sum() == pytest.approx(1.0) and np.count_nonzero(s) == 72
    np.testing.assert_allclose(s[k > 96], (k[k > 96] - 96) / (k[k > 96] - 96).sum())


@pytest.fixture(scope="module")
def estimate():
    """1,000 iterations (of 3,000) on a 256x256 crop of scikit-image's cat, blurred by an anisotropic
    kernel, on one thread. Short runs are at the mercy of the arithmetic: with two threads (whose
    reductions need not repeat) an Intel Xeon with AVX-512 pointed the wrong way at 600 and 1,000
    iterations (kernel errors 1.1 and 2.8 of the mirrored kernel's), an AMD EPYC at 300; one thread
    on the Xeon: 0.79 at 600, 0.31 at 1,000."""
    import skimage.data

    hr = skimage.data.chelsea()[:256, :256] / 255.0
    k = gaussian_kernel(4.0, 1.0, np.pi / 4, 15)
    lr = degrade(hr, k, 2, "direct")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return k, lr, estimate_kernel(lr, 2, {"method": "kernelgan", "iterations": 1000}, seed=1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_estimate_conventions_and_seed(estimate):
    _, lr, est = estimate
    k, kg = est.kernel, est.kernelgan
    assert est.iterations == 1000 and est.scale == 2 and k.shape[0] % 2 == 1
    assert k.min() >= 0 and k.sum() == pytest.approx(1.0)
    # (clipping the spline's ringing moves the centre of mass by a few thousandths of a pixel)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), mzsr_center(k.shape), atol=0.01)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(kg), kernelgan_center(kg.shape), atol=1e-3)
    short = estimate_kernel(lr, 2, {"method": "kernelgan", "iterations": 30}, seed=1)
    x4 = estimate_kernel(
        lr, 4, {"method": "kernelgan", "iterations": 30}, seed=1
    )  # the same run, then the analytic x4 kernel
    np.testing.assert_allclose(x4.kernel, analytic_kernel(short.kernel), atol=1e-12)
    assert not np.array_equal(
        estimate_kernel(lr, 2, {"method": "kernelgan", "iterations": 30}, seed=2).kernel, short.kernel
    )


@pytest.mark.slow  # a 1,000-iteration KernelGAN run on one thread
def test_estimate_finds_the_orientation(estimate):
    truth, _, est = estimate
    mirrored = gaussian_kernel(4.0, 1.0, -np.pi / 4, 15)
    assert kernel_error(est.kernel, truth) < 0.8 * kernel_error(est.kernel, mirrored)


def test_estimate_refuses_bad_input():
    with pytest.raises(MZSRError, match=r"photo\.png: image is 50x50 pixels; KernelGAN needs at least 84"):
        estimate_kernel(np.zeros((50, 50, 3)), 2, {"method": "kernelgan"}, source="photo.png")
    with pytest.raises(
        MZSRError, match=r"photo\.png: image is 12x15 pixels; the learned kernel estimator needs at least 16"
    ):
        estimate_kernel(np.zeros((15, 12, 3)), 2, source="photo.png")
    with pytest.raises(MZSRError, match="scale 3 is not supported"):
        estimate_kernel(np.zeros((100, 100, 3)), 3)
    with pytest.raises(MZSRError, match=r"unknown setting\(s\) \['iters'\]"):
        estimate_kernel(np.zeros((100, 100, 3)), 2, {"iters": 5})


def test_kernel_error():
    k = gaussian_kernel(2.0, 2.0, 0.0, 15)
    assert kernel_error(k, k) == 0.0
    assert kernel_error(np.pad(k, 3), k) == pytest.approx(0.0, abs=1e-20)  # padding is no difference
    assert kernel_error(k, gaussian_kernel(3.0, 3.0, 0.0, 15)) > 0
