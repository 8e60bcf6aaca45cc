import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from mzsr.evaluation.metrics import modcrop, psnr, rgb_to_y, ssim


def test_modcrop():
    assert modcrop(np.zeros((11, 13, 3)), 2).shape == (10, 12, 3)
    assert modcrop(np.zeros((12, 12, 3)), 4).shape == (12, 12, 3)
    assert modcrop(np.zeros((11, 13, 3)), 3).shape == (9, 12, 3)


def test_y_channel_bt601_rounded():
    px = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [10, 200, 30]]], np.uint8)
    y = rgb_to_y(px)[0]
    assert y.tolist() == [
        235.0,
        16.0,
        round(16 + 65.481),
        round(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255),
    ]


def test_psnr_against_hand_computation():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[5, 5] = [0, 0, 0] if hr[5, 5].sum() > 300 else [255, 255, 255]
    sr[0, 0] = 255 - hr[0, 0]  # on the shaved border: must not count
    yd = rgb_to_y(sr)[5, 5] - rgb_to_y(hr)[5, 5]
    mse = yd**2 / (16 * 16)
    assert psnr(sr, hr, 2) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr(hr, hr, 2) == math.inf


def test_ssim_protocol():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    noise = rng.integers(-10, 11, hr.shape)
    sr = np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8)
    ys, yh = rgb_to_y(sr)[2:-2, 2:-2], rgb_to_y(hr)[2:-2, 2:-2]
    ref = structural_similarity(ys, yh, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(sr, hr, 2) == pytest.approx(ref)
    assert ssim(hr, hr, 2) == pytest.approx(1.0)
    assert 0 < ssim(sr, hr, 2) < 1


def test_shape_and_dtype_errors():
    a = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, np.zeros((12, 10, 3), np.uint8), 2)
    with pytest.raises(TypeError, match="uint8"):
        psnr(a.astype(float), a, 2)
