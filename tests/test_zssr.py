"""ZSSR baseline: the original's augmentation, network, lr policy and a short run that learns."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mzsr.adaptation.inference import to_tensor, to_uint8_image, upscale
from mzsr.adaptation.zssr import (
    ZSSR_DEFAULTS,
    LrPolicy,
    random_augment,
    resolve_config,
    stalled,
    train_zssr,
    warp,
    zssr,
)
from mzsr.degradation.degrade import degrade, to_uint8
from mzsr.degradation.kernels import named_degradation
from mzsr.degradation.resize import imresize
from mzsr.evaluation.metrics import psnr
from mzsr.network.model import PARAMETER_COUNT, MZSRNet, init_zssr_
from conftest import REPO, smooth_image


def _ramps(h: int, w: int) -> torch.Tensor:
    """Non-symmetric test image: red rises to the right, green downwards, blue constant."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.2 + 0.6 * xx / (w - 1), 0.2 + 0.6 * yy / (h - 1), np.full((h, w), 0.5)], axis=-1)
    return to_tensor(img, "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared CPU, two OpenMP threads on these small convolutions are ~10x slower."""
    torch.set_num_threads(1)


def test_leave_as_is_is_an_exact_crop():
    x = to_tensor(smooth_image(30, 41, seed=1), "cpu")
    rng = np.random.default_rng(3)
    for _ in range(3):
        out = random_augment(x, 16, rng, leave_as_is_probability=1.0)
        matches = [
            (y0, x0)
            for y0 in range(30 - 15)
            for x0 in range(41 - 15)
            if torch.equal(out, x[..., y0 : y0 + 16, x0 : x0 + 16])
        ]
        assert len(matches) == 1


def test_affine_warp_by_whole_pixels_is_the_plain_crop():
    x = to_tensor(smooth_image(40, 50, seed=2), "cpu")
    crop = x[..., 5:29, 7:31]
    shift = np.array([[1.0, 0, -7], [0, 1, -5], [0, 0, 1]])  # dst = src - (7, 5): the crop at (5, 7)
    torch.testing.assert_close(warp(x, shift, 24), crop, rtol=0, atol=1e-5)  # bicubic, integer taps
    assert torch.equal(warp(x, shift, 24, exact=True), crop)
    half = shift.copy()
    half[0, 2] = -7.5
    assert (warp(x, half, 24) - crop).abs().max() > 1e-3  # a sub-pixel shift does interpolate
    # Outside the image the warp is zero, as cv2's default constant border.
    assert torch.equal(warp(x, np.eye(3), 60, exact=True)[..., 40:, :], torch.zeros(1, 3, 20, 60))


def _flipped(out: torch.Tensor) -> bool:
    """Whether red no longer rises to the right or green no longer downwards (inside the image)."""
    inside = out[0, 2] > 0.45
    dx = (out[0, 0, :, 1:] - out[0, 0, :, :-1])[inside[:, 1:] & inside[:, :-1]]
    dy = (out[0, 1, 1:, :] - out[0, 1, :-1, :])[inside[1:, :] & inside[:-1, :]]
    return bool(dx.median() <= 0 or dy.median() <= 0)


def test_without_rotation_the_father_is_never_flipped_or_rotated():
    x = _ramps(60, 70)
    rng = np.random.default_rng(0)
    assert not any(_flipped(random_augment(x, 24, rng)) for _ in range(150))
    rng = np.random.default_rng(0)  # the check does see flips and rotations when they are allowed
    assert sum(_flipped(random_augment(x, 24, rng, allow_rotation=True)) for _ in range(150)) > 30


def test_affine_fathers_are_shrunk_and_clipped():
    x = _ramps(64, 64)
    rng = np.random.default_rng(5)
    outs = [random_augment(x, 32, rng, leave_as_is_probability=0.0, no_interpolate_probability=0.0) for _ in range(40)]
    assert all(o.shape == (1, 3, 32, 32) and o.min() >= 0 and o.max() <= 1 for o in outs)
    # red spans 0.6 over 63 px; downscaled by 0.5-1 its mean slope per pixel grows accordingly
    slopes = [float((o[0, 0, 8:24, 9:24] - o[0, 0, 8:24, 8:23]).mean()) * 63 / 0.6 for o in outs]
    assert 0.4 < min(slopes) and max(slopes) > 1.2 and np.mean(slopes) > 1.1


def test_zssr_network_has_no_bias_and_the_original_init():
    torch.manual_seed(0)
    net = init_zssr_(MZSRNet(bias=False))
    biases = sum(c.out_channels for c in MZSRNet().convs)
    assert biases == 7 * 64 + 3
    assert sum(p.numel() for p in net.parameters()) == PARAMETER_COUNT - biases == 224_640
    assert all(c.bias is None for c in net.convs)
    for conv in net.convs:
        expected = math.sqrt(0.1 / (9 * conv.in_channels))
        assert abs(conv.weight.std().item() / expected - 1) < 0.05
        assert abs(conv.weight.mean().item()) < 0.1 * expected
    assert sum(p.numel() for p in MZSRNet().parameters()) == PARAMETER_COUNT  # the default net keeps its biases


def test_lr_policy_drops_on_a_flat_curve_not_on_a_falling_one():
    steps = [50, 100, 150, 200, 250]
    noise = np.array([1.0, -0.5, 0.8, -1.2, 0.3]) * 1e-5
    assert stalled(steps, 2e-3 + noise)
    assert not stalled(steps, np.linspace(4e-3, 2e-3, 5) + noise)
    assert not stalled(steps[:4], list(2e-3 + noise[:4]))  # fewer than 5 points: no decision
    # The std is scaled by residual / (n - 4), as polyfit did for ZSSR; today's polyfit (n - 2) is
    # sqrt(3) smaller and would keep the lr on this slowly falling curve.
    errors = np.linspace(2.0e-3, 1.99e-3, 5) + noise * 3
    (slope, _), cov = np.polyfit(steps, errors, 1, cov=True)
    assert -1.5 * slope > math.sqrt(cov[0, 0])  # today's numpy: not stalled
    assert stalled(steps, errors)


def test_lr_schedule_on_a_flat_curve_drops_three_times_then_stops():
    """Checks every 60 iterations, more than 256 after the last drop: 299, 599, 899, then lr < 9e-6."""
    policy = LrPolicy(resolve_config(None))
    jitter = iter(np.tile([1.0, -0.5, 0.8, -1.2, 0.3], 20) * 1e-5)
    lrs = []
    for iteration in range(3000):
        if iteration % 50 == 0:
            policy.record(iteration, 2e-3 + next(jitter))
        lrs.append(policy.update(iteration))
        if policy.finished:
            break
    assert (iteration, policy.changes) == (899, [299, 599, 899])
    assert lrs[298] == 1e-3 and lrs[299] == 1e-4 and lrs[598] == 1e-4 and math.isclose(lrs[-1], 1e-6)
    # a steadily falling curve keeps the lr
    policy = LrPolicy(resolve_config(None))
    for iteration in range(1000):
        if iteration % 50 == 0:
            policy.record(iteration, 2e-3 * 0.97 ** (iteration / 50))
        policy.update(iteration)
    assert policy.changes == [] and policy.lr == 1e-3


def test_config_defaults_and_schema_agree():
    cfg = resolve_config(None)
    assert (cfg["variant"], cfg["back_projection"], cfg["self_ensemble"]) == ("original", 2, False)
    assert resolve_config({"variant": "simple"})["back_projection"] == 0
    assert resolve_config({"variant": "simple", "back_projection": 3})["back_projection"] == 3
    with pytest.raises(ValueError, match="unknown ZSSR option"):
        resolve_config({"iteratons": 10})
    with pytest.raises(ValueError, match="variant"):
        resolve_config({"variant": "fancy"})
    schema = yaml.safe_load(Path(REPO, "mzsr/config.schema.yaml").read_text())
    keys = set(schema["properties"]["zssr"]["properties"]) - {"seed"}
    assert keys <= set(ZSSR_DEFAULTS) and "variant" in keys
    assert schema["properties"]["zssr"]["properties"]["variant"]["enum"] == ["original", "simple"]


def test_short_original_run_learns_and_beats_bicubic():
    hr = smooth_image(96, 96, seed=0)
    hr_u8 = to_uint8(hr)
    kernel = named_degradation("g2.0").kernel
    lr = to_uint8(degrade(hr, kernel, 2, "direct")) / 255.0
    torch.manual_seed(0)
    lr_t = to_tensor(lr, "cpu")
    # 301 iterations: a shorter run is still on its way and how far depends on the CPU's arithmetic
    # (an AMD EPYC with AVX-512 was below bicubic at 101; an Intel Xeon with AVX-512 at 151)
    cfg = resolve_config({"iterations": 301, "crop_size": 32})
    trained = train_zssr(lr_t, torch.as_tensor(kernel, dtype=torch.float32), 2, "direct", cfg, np.random.default_rng(0))
    assert trained.iterations == 301 and trained.policy.mse_steps == [0, 50, 100, 150, 200, 250, 300]
    assert trained.policy.mse_rec[-1] < 0.7 * trained.policy.mse_rec[0]
    sr = to_uint8_image(upscale(trained.net, lr_t, 2))  # the net alone, without back-projection
    bicubic = to_uint8(imresize(lr, 2))
    assert psnr(sr, hr_u8, 2) > psnr(bicubic, hr_u8, 2) + 0.3


def test_zssr_is_seeded_and_counts_its_iterations():
    lr = smooth_image(20, 24, seed=3)
    kernel = named_degradation("g2.0").kernel
    cfg = {"iterations": 4, "crop_size": 16}
    first, again = (zssr(lr, kernel, 2, "direct", cfg, device="cpu", seed=1) for _ in range(2))
    other = zssr(lr, kernel, 2, "direct", cfg, device="cpu", seed=2)
    assert first.sr.shape == (40, 48, 3) and first.steps == 4
    assert np.array_equal(first.sr, again.sr) and not np.array_equal(first.sr, other.sr)
