"""The learned kernel estimator (mzsr.kernel_net): its Gaussian convention, the shipped weights on
images it never saw, the estimate_kernel path, and the training command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import skimage.data
import torch

from mzsr import MZSRError, kernel_net
from mzsr.degrade import degrade, to_uint8
from mzsr.estimate import estimate_kernel, kernel_error
from mzsr.images import write_png
from mzsr.kernels import analytic_kernel, gaussian_kernel, kernelgan_center, random_kernel, random_kernel_rng


def test_covariance_renders_as_gaussian_kernel():
    """The estimator's (row, column) covariance and `gaussian_kernel`'s (l1, l2, theta) are one kernel."""
    for l1, l2, theta in [(1.0, 4.0, 0.3), (0.7, 2.5, -2.0), (3.0, 3.0, 1.0)]:
        sigma = kernel_net.covariance(l1, l2, theta)[None].double()
        k = kernel_net.gaussian_from_covariance(sigma)[0].numpy()
        np.testing.assert_allclose(k, gaussian_kernel(l1, l2, theta, 11), atol=1e-8)


def _lr(hr_u8, kernel):
    return to_uint8(degrade(hr_u8 / 255.0, kernel, 2, "direct")) / 255.0


def test_shipped_estimator_beats_the_mean_kernel_on_unseen_images():
    """Four scikit-image photos (none in the training folders), each under two random rk kernels: the
    estimate's kernel error is well below that of the best fixed guess (the family's mean kernel)."""
    net = kernel_net.load()
    mean = np.mean([random_kernel(random_kernel_rng(0, f"__mean_{i}"), 2) for i in range(300)], axis=0)
    ours, guess = [], []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        hr = getattr(skimage.data, name)()[:384, :384]
        for seed in (1, 2):
            truth = random_kernel(random_kernel_rng(seed, name), 2)
            est = kernel_net.estimate(_lr(hr, truth), net)
            ours.append(kernel_error(est, truth))
            guess.append(kernel_error(mean, truth))
    assert np.mean(ours) < 0.75 * np.mean(guess), (np.mean(ours), np.mean(guess))  # shipped weights: 0.62


def test_estimate_kernel_learned_conventions():
    hr = skimage.data.astronaut()
    lr = _lr(hr, gaussian_kernel(4.0, 1.0, np.pi / 4, 11))
    est = estimate_kernel(lr, 2)  # the default method
    k = est.kernel
    assert est.method == "learned" and est.iterations == 0 and est.scale == 2 and k.shape == (11, 11)
    assert k.min() >= 0 and k.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(k), (5, 5), atol=1e-6)
    kg = est.kernelgan  # (in a frame padded for the half-pixel shift)
    np.testing.assert_allclose(scipy.ndimage.center_of_mass(kg), kernelgan_center(kg.shape), atol=1e-3)
    # the right orientation: closer to the true kernel than to its mirror image (shipped weights: 0.66)
    assert kernel_error(k, gaussian_kernel(4.0, 1.0, np.pi / 4, 11)) < 0.8 * kernel_error(
        k, gaussian_kernel(4.0, 1.0, -np.pi / 4, 11)
    )
    x4 = estimate_kernel(lr, 4)
    np.testing.assert_allclose(x4.kernel, analytic_kernel(k), atol=1e-12)


def test_training_command_writes_loadable_weights_with_provenance(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "train"
    images.mkdir()
    for i in range(3):
        write_png(images / f"img{i}.png", (rng.random((40, 48, 3)) * 255).astype(np.uint8))
    out = tmp_path / "net.safetensors"
    kernel_net.main(
        ["--images", str(images), "--out", str(out), "--iterations", "2", "--batch", "2", "--lr-size", "16"]
    )
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        provenance = json.loads(f.metadata()["provenance"])
    assert provenance["images"] == 3 and "--iterations 2" in provenance["command"]
    assert np.isfinite(provenance["final_training_kernel_error"])
    net = kernel_net.load(out)
    sigma = net(torch.rand(1, 3, 24, 24))
    assert sigma.shape == (1, 2, 2) and bool(torch.all(torch.linalg.eigvalsh(sigma) > 0))


def test_training_and_loading_refuse_what_is_missing(tmp_path):
    with pytest.raises(MZSRError, match="no training images"):
        kernel_net.main(["--images", str(tmp_path), "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(MZSRError, match="no kernel-estimator weights"):
        kernel_net.load(tmp_path / "missing.safetensors")


def test_large_images_are_estimated_tile_by_tile(monkeypatch):
    """Tiles bound the memory on large photos; the proposals of all tiles are weighed together, so the
    kernel stays close to the one pass over the whole image (which a small image gets exactly)."""
    hr = skimage.data.astronaut()[:320, :320]
    lr = _lr(hr, gaussian_kernel(3.0, 1.0, 0.5, 11))
    net = kernel_net.load()
    with torch.no_grad():
        whole = kernel_net.gaussian_from_covariance(net(torch.as_tensor(lr).float().permute(2, 0, 1)[None]).double())
    np.testing.assert_allclose(kernel_net.estimate(lr, net), whole[0].numpy(), atol=1e-7)
    monkeypatch.setattr(kernel_net, "TILE", 64)  # 3 x 3 tiles, the last ones 32 px
    tiled = kernel_net.estimate(lr, net)
    assert np.abs(tiled - whole[0].numpy()).max() < 5e-3 and tiled.sum() == pytest.approx(1.0)
