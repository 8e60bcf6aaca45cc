import numpy as np
import pytest
import scipy.ndimage
import torch

from mzsr.degradation.degrade import blur, degrade, degrade_torch, to_uint8, write_lr_png
from mzsr.degradation.kernels import gaussian_kernel
from mzsr.degradation.resize import imresize
from mzsr.files.images import read_image_uint8


def _t(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def test_blur_is_correlation_not_convolution():
    # An asymmetric kernel: correlation shifts a delta the opposite way from convolution.
    img = np.zeros((9, 9, 1))
    img[4, 4, 0] = 1.0
    k = np.zeros((3, 3))
    k[1, 2] = 1.0  # weight to the right of the centre
    out = blur(img, k)[..., 0]
    # correlate: out[y, x] = sum k[i, j] in[y + i - 1, x + j - 1] -> the 1 lands at x = 3
    assert out[4, 3] == 1.0 and out.sum() == 1.0


def test_direct_keeps_pixels_0_s_2s_and_the_release_rows_at_other_sizes():
    rng = np.random.default_rng(0)
    hr = rng.random((12, 10, 3))
    delta = np.zeros((3, 3))
    delta[1, 1] = 1
    np.testing.assert_array_equal(degrade(hr, delta, 2, "direct"), hr[::2, ::2])
    # x3 of 10 columns: the release keeps round(linspace(0, 7, 4)) = 0, 2, 5, 7; the regular grid 0, 3, 6, 9.
    np.testing.assert_array_equal(degrade(hr, delta, 3, "direct"), hr[::3][:, [0, 2, 5, 7]])
    np.testing.assert_array_equal(degrade(hr, delta, 3, "direct", grid="regular"), hr[::3, ::3])


def test_direct_matches_scipy_reflect():
    rng = np.random.default_rng(1)
    hr = rng.random((16, 14, 3))
    k = gaussian_kernel(2.0, 1.0, 0.3)
    ref = np.stack([scipy.ndimage.correlate(hr[..., c], k, mode="reflect")[::2, ::2] for c in range(3)], -1)
    np.testing.assert_allclose(degrade(hr, k, 2, "direct"), ref, atol=1e-12)


def test_bicubic_method_and_plain_bicubic():
    rng = np.random.default_rng(2)
    hr = rng.random((16, 16, 3))
    k = gaussian_kernel(1.3, 1.3, 0)
    np.testing.assert_allclose(degrade(hr, k, 2, "bicubic"), imresize(blur(hr, k), 0.5), atol=1e-12)
    np.testing.assert_allclose(degrade(hr, None, 2), imresize(hr, 0.5), atol=1e-12)


@pytest.mark.parametrize("method", ["direct", "bicubic"])
@pytest.mark.parametrize("ksize", [15, 6, 21])
def test_torch_twin_agrees(method, ksize):
    rng = np.random.default_rng(3)
    hr = rng.random((24, 30, 3))
    k = rng.random((ksize, ksize))
    k /= k.sum()
    ref = degrade(hr, k, 2, method)
    out = degrade_torch(_t(hr), torch.from_numpy(k), 2, method)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-10)


def test_torch_per_item_kernels():
    rng = np.random.default_rng(4)
    hrs = rng.random((3, 3, 20, 20))
    ks = np.stack([gaussian_kernel(1 + i, 1, 0.5 * i) for i in range(3)])
    out = degrade_torch(torch.from_numpy(hrs), torch.from_numpy(ks), 2, "direct")
    for i in range(3):
        ref = degrade(hrs[i].transpose(1, 2, 0), ks[i], 2, "direct")
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), ref, atol=1e-10)


def test_lr_png_is_round_clip_255(tmp_path):
    rng = np.random.default_rng(5)
    hr = rng.random((20, 20, 3))
    k = gaussian_kernel(2.0, 2.0, 0, 21)
    lr = write_lr_png(hr, k, 2, "direct", tmp_path / "x.png")
    expected = np.round(np.clip(255 * degrade(hr, k, 2, "direct"), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(lr, expected)
    np.testing.assert_array_equal(read_image_uint8(tmp_path / "x.png"), expected)
    assert to_uint8(np.array([-0.1, 0.5, 1.2])).tolist() == [0, 128, 255]
