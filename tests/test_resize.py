import numpy as np
import pytest
import torch

from mzsr.degradation.resize import contributions, imresize, imresize_torch, output_shape_for


def ramp(h, w):
    """f(y, x) = y + 2x, 1-based coordinates as MATLAB's."""
    y, x = np.mgrid[1 : h + 1, 1 : w + 1].astype(np.float64)
    return y + 2 * x


def test_output_size_is_ceil():
    assert output_shape_for((17, 23), 0.5) == (9, 12)
    assert output_shape_for((17, 23), 2) == (34, 46)
    assert imresize(np.zeros((17, 23, 3)), 1 / 3).shape == (6, 8, 3)
    assert imresize(np.zeros((10, 10)), output_shape=(7, 13)).shape == (7, 13)


def test_weights_sum_to_one_and_indices_mirror():
    idx, w = contributions(10, 5, 0.5)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert idx.min() >= 0 and idx.max() <= 9
    # The first output pixel of a downscale reaches past the border: indices are mirrored, 0 repeats.
    assert (idx[0] == 0).sum() >= 2


def test_identity_and_constant():
    rng = np.random.default_rng(0)
    img = rng.random((13, 9, 3))
    np.testing.assert_allclose(imresize(img, 1.0), img, atol=1e-12)
    const = np.full((12, 16, 3), 0.37)
    for s in (0.5, 2, 0.25, 3):
        np.testing.assert_allclose(imresize(const, s), 0.37, atol=1e-12)


def test_upscale_reproduces_linear_ramp_in_the_interior():
    # Keys' cubic (a = -0.5) reproduces linear functions; output pixel i sits at u = i/2 + 1/4.
    img = ramp(20, 20)
    out = imresize(img, 2)
    i = np.arange(1, 41)
    u = i / 2 + 0.25
    expected = u[:, None] + 2 * u[None, :]
    np.testing.assert_allclose(out[4:-4, 4:-4], expected[4:-4, 4:-4], atol=1e-10)


def test_antialiased_downscale_of_ramp():
    # The stretched kernel is symmetric, so a linear ramp is sampled at u = 2i - 1/2 (1-based).
    img = ramp(40, 40)
    out = imresize(img, 0.5)
    u = 2 * np.arange(1, 21) - 0.5
    expected = u[:, None] + 2 * u[None, :]
    np.testing.assert_allclose(out[3:-3, 3:-3], expected[3:-3, 3:-3], atol=1e-10)


def test_symmetric_boundary_value():
    # [0, 1] upscaled to 4 pixels. Output 1 sits at u = 0.75 (1-based); its taps j = -1, 0, 1, 2 read
    # the symmetric padding ... x2 x1 | x1 x2 | x2 x1 ..., i.e. values 1, 0, 0, 1, with Keys weights
    # w(1.75) = -0.0234375, w(0.75) = 0.2265625, w(0.25) = 0.8671875, w(1.25) = -0.0703125.
    out = imresize(np.array([[0.0, 1.0]]), output_shape=(1, 4))[0]
    assert out[0] == pytest.approx(-0.0234375 - 0.0703125, abs=1e-12)
    np.testing.assert_allclose(out, 1 - out[::-1], atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 2, 0.25, 1 / 3, 4])
def test_torch_twin_agrees(scale):
    rng = np.random.default_rng(1)
    img = rng.random((19, 26, 3))
    ref = imresize(img, scale)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = imresize_torch(x, scale)[0].permute(1, 2, 0).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_torch_batched_and_differentiable():
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    y = imresize_torch(x, 2)
    assert y.shape == (4, 3, 32, 32)
    for n in range(4):
        np.testing.assert_allclose(
            y[n].detach().permute(1, 2, 0).numpy(), imresize(x[n].detach().permute(1, 2, 0).numpy(), 2), atol=1e-12
        )
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_scale_with_a_size_keeps_the_scale_and_cuts_to_the_size():
    """son -> father of a 25 x 23 father: x2 of the 13 x 12 son, cut to 25 x 23 (as the release and ZSSR)."""
    rng = np.random.default_rng(5)
    son = rng.random((13, 12, 3))
    cut = imresize(son, 2.0, output_shape=(25, 23))
    np.testing.assert_array_equal(cut, imresize(son, 2.0)[:25, :23])
    ratio = imresize(son, output_shape=(25, 23))  # a size alone: scale 25/13 x 23/12
    assert np.abs(ratio - cut).max() > 0.05
    t = imresize_torch(torch.from_numpy(son.transpose(2, 0, 1)).unsqueeze(0), 2.0, output_shape=(25, 23))
    np.testing.assert_allclose(t[0].permute(1, 2, 0).numpy(), cut, atol=1e-12)
