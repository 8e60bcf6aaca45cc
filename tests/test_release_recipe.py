"""The meta-training data equal the release's (gkernel.py, dataGenerator.py, imresize.py), given its
random draws: each formula re-stated here from the release, in float64 numpy, against the project's code."""

import numpy as np
import scipy.ndimage
import torch

from mzsr.degradation.kernels import gaussian_kernel, gaussian_kernels_torch, sample_training_params
from mzsr.degradation.resize import imresize
from mzsr.training.meta import synthesise


def release_gaussian_kernel(size, theta, l1, l2):
    """gkernel.anisotropic_Gaussian: Sigma = V diag(l1, l2) V^-1 on a grid centred at size / 2 - 0.5,
    pos = [X, Y] (X the column offset), k = exp(-pos^T Sigma^-1 pos / 2) / sum."""
    c, s = np.cos(theta), np.sin(theta)
    v = np.array([[c, -s], [s, c]])
    sigma_inv = np.linalg.inv(v @ np.diag([l1, l2]) @ np.linalg.inv(v))
    center = size / 2.0 - 0.5
    x, y = np.meshgrid(np.arange(center - size + 1, size - center), np.arange(center - size + 1, size - center))
    pos = np.stack([x, y], axis=-1)
    k = np.exp(-0.5 * np.einsum("...i,ij,...j->...", pos, sigma_inv, pos))
    return k / k.sum()


def release_kernel_draws(rng, scale, n):
    """gkernel.generate_kernel(k1=scale * 2.5): theta = pi u, l1 = 1 + (k1 - 1) u, l2 = 1 + (l1 - 1) u,
    with the uniforms drawn as the project draws them (all thetas, then all l1, then all l2)."""
    k1 = 2.5 * scale
    theta = np.pi * rng.random(n)
    l1 = 1.0 + (k1 - 1.0) * rng.random(n)
    l2 = 1.0 + (l1 - 1.0) * rng.random(n)
    return theta, l1, l2


def release_task_inputs(hr, kernel, scale, ds_method):
    """dataGenerator.make_data_tensor with noise_std 0: imresize(HR, 1/scale, kernel) (numeric_kernel_dir:
    scipy correlate, rows round(linspace(0, H - scale, H / scale)); numeric_kernel_bic: correlate, then
    cubic), clip to [0, 1], then imresize(LR, scale, output_shape=HR.shape, 'cubic')."""
    blurred = np.stack([scipy.ndimage.correlate(hr[..., c], kernel) for c in range(3)], axis=-1)
    h, w = hr.shape[:2]
    if ds_method == "direct":
        rows = np.round(np.linspace(0, h - scale, h // scale)).astype(int)
        cols = np.round(np.linspace(0, w - scale, w // scale)).astype(int)
        lr = blurred[rows[:, None], cols]
    else:
        lr = imresize(blurred, 1.0 / scale)
    lr = np.clip(lr, 0.0, 1.0)
    return imresize(lr, scale, output_shape=hr.shape[:2])


def test_kernel_formula_and_draws_are_the_release():
    rng_release, rng_ours = np.random.default_rng(7), np.random.default_rng(7)
    theta, l1, l2 = release_kernel_draws(rng_release, 2, 6)
    params = sample_training_params(rng_ours, 2, 6)
    np.testing.assert_allclose(params, np.stack([l1, l2, theta], axis=1), rtol=1e-15)
    ours = gaussian_kernels_torch(torch.from_numpy(params)).numpy()
    for i in range(6):
        want = release_gaussian_kernel(15, theta[i], l1[i], l2[i])
        np.testing.assert_allclose(ours[i], want, rtol=0, atol=1e-15)
        np.testing.assert_allclose(gaussian_kernel(l1[i], l2[i], theta[i]), want, rtol=0, atol=1e-15)


def test_task_inputs_are_the_release_synthesis_for_both_models():
    """The Direct model's tasks (the release's default ds_method) and the Bicubic model's (its
    numeric_kernel_bic), both x2 on 32 px patches, as meta_train makes them."""
    rng = np.random.default_rng(3)
    hr = rng.random((2, 4, 3, 32, 32))  # 2 tasks x (2 + 2) patches, (C, H, W)
    params = sample_training_params(rng, 2, 2)
    kernels = gaussian_kernels_torch(torch.from_numpy(params))
    for method in ("direct", "bicubic"):
        sx, sy, qx, qy = synthesise(torch.from_numpy(hr), kernels, 2, method, n_support=2)
        x = torch.cat([sx, qx], dim=1).numpy()
        np.testing.assert_array_equal(torch.cat([sy, qy], dim=1).numpy(), hr)
        for t in range(2):
            for i in range(4):
                want = release_task_inputs(hr[t, i].transpose(1, 2, 0), kernels[t].numpy(), 2, method)
                np.testing.assert_allclose(x[t, i].transpose(1, 2, 0), want, rtol=0, atol=1e-12)
