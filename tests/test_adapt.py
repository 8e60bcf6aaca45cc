import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mzsr import MZSRError
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.inference import to_tensor, upscale
from mzsr.adaptation.refine import back_project, geometric_ensemble, self_ensemble, valid_transforms
from mzsr.adaptation.schedules import learning_rate, resolve_schedule, weights_subsampling
from mzsr.adaptation.zssr import zssr
from mzsr.degradation.degrade import degrade, degrade_torch, direct_indices
from mzsr.degradation.kernels import named_degradation
from mzsr.degradation.resize import imresize, imresize_torch
from mzsr.evaluation.metrics import psnr
from mzsr.network.model import MZSRNet
from conftest import smooth_image

# The authors' test.py, step by step (0-based), for each released model.
RELEASE_LRS = {
    "direct_x2": [0.02, 0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005],
    "bicubic_x2": [0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001, 0.001],
    "direct_x4": [0.01, 0.005, 0.005, 0.005, 0.005, 0.001, 0.001, 0.001, 0.001, 0.001],
    "multiscale": [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005, 0.005],
}


@pytest.mark.parametrize("name", sorted(RELEASE_LRS))
def test_each_schedule_is_the_release_one(name):
    assert [learning_rate(name, i) for i in range(10)] == RELEASE_LRS[name]


def test_schedule_follows_the_weights():
    assert resolve_schedule("auto", "direct", 2) == "direct_x2"
    assert resolve_schedule("auto", "bicubic", 2) == "bicubic_x2"
    assert resolve_schedule("auto", "direct", 4) == "direct_x4"
    assert resolve_schedule("multiscale", "direct", 2) == "multiscale"
    with pytest.raises(MZSRError, match="no released adaptation schedule for bicubic-subsampling x4"):
        resolve_schedule("auto", "bicubic", 4)
    with pytest.raises(MZSRError, match="unknown lr schedule 'nope'"):
        resolve_schedule("nope", "direct", 2)
    with pytest.raises(ValueError):
        learning_rate("nope", 0)
    meta = {"source": "meta", "degradation": "bicubic", "scale": 2}
    assert weights_subsampling(meta, "direct") == "bicubic"
    assert weights_subsampling({"source": "pretrain", "degradation": "bicubic"}, "direct") == "direct"


def test_zero_steps_is_plain_inference_and_model_untouched():
    model = MZSRNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = smooth_image(20, 24)
    k = named_degradation("g2.0").kernel
    outs = adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(0, 1, 3)), device="cpu")
    assert [o.steps for o in outs] == [0, 1, 3]
    assert all(o.sr.shape == (40, 48, 3) and o.sr.dtype == np.uint8 for o in outs)
    ref = upscale(model, to_tensor(lr, "cpu"), 2)
    expected = np.round(ref.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(outs[0].sr, expected)
    assert not np.array_equal(outs[0].sr, outs[2].sr)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def _reference_adaptation(model, lr, kernel, steps, lrs, son_rows, son_cols, exact_scale=True):
    """MZSR's meta-test written out independently of mzsr.adaptation: scipy correlation, the release's rows
    and columns, the full x2 bicubic upscale of the son cut to the father's size, plain SGD."""
    import scipy.ndimage

    blurred = np.stack([scipy.ndimage.correlate(lr[..., c], kernel, mode="reflect") for c in range(3)], axis=-1)
    son = np.clip(blurred[np.asarray(son_rows)[:, None], np.asarray(son_cols)], 0, 1)
    h, w = lr.shape[:2]
    son_up = imresize(son, 2.0)[:h, :w] if exact_scale else imresize(son, output_shape=(h, w))
    net = MZSRNet()
    net.load_state_dict(model.state_dict())
    x, y = to_tensor(son_up, "cpu"), to_tensor(lr, "cpu")
    for i in range(steps):
        loss = F.l1_loss(net(x), y)
        grads = torch.autograd.grad(loss, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= lrs[i] * g
    with torch.no_grad():
        out = net(to_tensor(imresize(lr, 2.0), "cpu"))
    return np.round(out.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_adaptation_matches_an_independent_reference_at_an_odd_size():
    torch.manual_seed(3)
    model = MZSRNet()
    lr = smooth_image(25, 23, seed=3)  # odd: the son keeps 13 x 12 of the release's rows/columns
    kernel = named_degradation("ani").kernel[3:12, 3:12]
    kernel = kernel / kernel.sum()
    rows = [0, 2, 4, 6, 8, 10, 12, 13, 15, 17, 19, 21, 23]  # round(linspace(0, 23, 13)), written out
    cols = [0, 2, 4, 6, 8, 10, 11, 13, 15, 17, 19, 21]  # round(linspace(0, 21, 12))
    assert direct_indices(25, 2).tolist() == rows and direct_indices(23, 2).tolist() == cols
    (ours,) = adapt(model, lr, kernel, 2, "direct", AdaptOptions(steps=(6,), schedule="direct_x2"), "cpu")
    ref = _reference_adaptation(model, lr, kernel, 6, RELEASE_LRS["direct_x2"], rows, cols)
    diff = np.abs(ours.sr.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float32 summation order only
    # The same loop with yesterday's geometry (son upscaled by 25/13 x 23/12) ends elsewhere.
    old = _reference_adaptation(model, lr, kernel, 6, RELEASE_LRS["direct_x2"], rows, cols, exact_scale=False)
    moved = np.abs(old.astype(int) - ref.astype(int))
    assert (moved > 0).mean() > 0.2


def test_regular_grid_differs_from_the_release_grid_only_at_odd_sizes():
    assert direct_indices(9, 2).tolist() == [0, 2, 4, 5, 7]  # round(linspace(0, 7, 5)) = 0 2 4 5 7
    assert direct_indices(9, 2, "regular").tolist() == [0, 2, 4, 6, 8]
    assert direct_indices(125, 2)[31:34].tolist() == [62, 63, 65]
    for n in (8, 64, 250):
        assert direct_indices(n, 2).tolist() == list(range(0, n, 2))
    assert direct_indices(12, 4).tolist() == [0, 4, 8] and direct_indices(10, 4).tolist() == [0, 3, 6]
    hr = smooth_image(9, 10, seed=1)
    k = named_degradation("g2.0").kernel[5:16, 5:16]
    release, regular = degrade(hr, k, 2, "direct"), degrade(hr, k, 2, "direct", grid="regular")
    np.testing.assert_array_equal(release[:3], regular[:3])
    assert np.abs(release[3:] - regular[3:]).max() > 1e-3
    torch.testing.assert_close(
        degrade_torch(to_tensor(hr, "cpu").double(), torch.tensor(k), 2, "direct")[0].permute(1, 2, 0),
        torch.from_numpy(release),
        rtol=0,
        atol=1e-6,
    )


def test_noise_level_perturbs_the_son_reproducibly():
    model = MZSRNet()
    lr = smooth_image(20, 20, seed=2)
    k = named_degradation("g2.0").kernel
    clean = adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(3,)), device="cpu")[0].sr
    noisy = adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(3,), noise_level=0.05, seed=1), device="cpu")[0].sr
    again = adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(3,), noise_level=0.05, seed=1), device="cpu")[0].sr
    np.testing.assert_array_equal(noisy, again)
    assert not np.array_equal(noisy, clean)
    np.testing.assert_array_equal(
        clean, adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(3,), noise_level=0.0, seed=1), device="cpu")[0].sr
    )


def test_self_ensemble_of_identity_network_is_bicubic():
    model = MZSRNet()
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.zero_()
    lr = to_tensor(smooth_image(12, 16), "cpu")
    torch.testing.assert_close(self_ensemble(model, lr, 2), imresize_torch(lr, 2.0), atol=1e-5, rtol=0)


def test_valid_transforms_follow_the_kernel_symmetry():
    assert len(valid_transforms(named_degradation("g2.0").kernel, "direct", 2)) == 8
    ani = valid_transforms(named_degradation("ani").kernel, "direct", 2)
    # theta = -45 deg: symmetric about both diagonals, so the identity, the 180-degree turn and the
    # two diagonal mirrors keep the kernel; the 90-degree turns and the axis mirrors do not.
    assert sorted(t for t, _ in ani) == [
        (False, False, False),
        (False, True, True),
        (True, False, False),
        (True, True, True),
    ]
    assert dict(ani)[(False, True, True)] == (1, 1)  # both axes reversed: one HR pixel off in each
    rng = np.random.default_rng(0)
    assert [t for t, _ in valid_transforms(rng.random((7, 7)), "direct", 2)] == [(False, False, False)]
    assert len(valid_transforms(np.full((4, 4), 1 / 16), "direct", 2)) == 1  # no centre pixel
    assert all(phase == (0, 0) for _, phase in valid_transforms(named_degradation("gb1.3").kernel, "bicubic", 2))
    assert len(valid_transforms(None, "bicubic", 2)) == 8


def _direct_consistent_sr(lr: torch.Tensor, shape) -> torch.Tensor:
    """An exactly consistent x2 SR operator for direct subsampling: each LR pixel at HR (2i, 2j), the
    rest filled by a symmetric linear interpolation ([0.5, 1, 0.5] in each axis)."""
    up = lr.new_zeros(lr.shape[:-2] + tuple(shape))
    up[..., 0::2, 0::2] = lr
    tent = lr.new_tensor([0.5, 1.0, 0.5])
    k = (tent[:, None] * tent[None, :]).expand(lr.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(up, (1, 1, 1, 1), mode="replicate"), k, groups=lr.shape[1])


def test_self_ensemble_is_exact_for_an_equivariant_sr_operator_under_direct_subsampling():
    lr = to_tensor(smooth_image(14, 18, seed=5), "cpu").double()
    k = named_degradation("g2.0").kernel
    plain = _direct_consistent_sr(lr, (28, 36))
    ensemble = geometric_ensemble(_direct_consistent_sr, lr, 2, k, "direct")
    inner = (..., slice(2, -2), slice(2, -2))  # the edge lines that a shift back repeats differ
    torch.testing.assert_close(ensemble[inner], plain[inner], rtol=0, atol=1e-12)
    # Without the phase shift (yesterday's ensemble), flipped outputs land one HR pixel off.
    naive = [torch.flip(_direct_consistent_sr(torch.flip(lr, (d,)), (28, 36)), (d,)) for d in (-1, -2)]
    assert min((n - plain)[inner].abs().max().item() for n in naive) > 0.02


def test_self_ensemble_of_an_equivariant_network_under_bicubic_subsampling_is_the_plain_output():
    torch.manual_seed(2)
    model = MZSRNet().double()
    with torch.no_grad():  # filters symmetric under all 8 flips/rotations: the network is equivariant
        for conv in model.convs:
            w = conv.weight
            sym = (
                sum(
                    apply(w)
                    for apply in (
                        lambda x: x,
                        lambda x: x.flip(-1),
                        lambda x: x.flip(-2),
                        lambda x: x.flip(-1, -2),
                        lambda x: x.transpose(-1, -2),
                        lambda x: x.transpose(-1, -2).flip(-1),
                        lambda x: x.transpose(-1, -2).flip(-2),
                        lambda x: x.transpose(-1, -2).flip(-1, -2),
                    )
                )
                / 8
            )
            w.copy_(3 * sym)
    lr = to_tensor(smooth_image(12, 16, seed=9), "cpu").double()
    plain = upscale(model, lr, 2)
    assert (plain - imresize_torch(lr, 2.0)).abs().max() > 0.01
    k = named_degradation("gb1.3").kernel
    torch.testing.assert_close(self_ensemble(model, lr, 2, k, "bicubic"), plain, rtol=0, atol=1e-10)


def test_back_projection_reduces_reprojection_error():
    hr = smooth_image(32, 32, seed=4)
    k = named_degradation("g2.0").kernel
    lr = degrade(hr, k, 2, "direct")
    sr0 = to_tensor(imresize(lr, 2), "cpu").double()
    lr_t, k_t = to_tensor(lr, "cpu").double(), torch.tensor(k)
    err = lambda sr: (degrade_torch(sr, k_t, 2, "direct") - lr_t).abs().mean().item()  # noqa: E731
    errors = [err(back_project(sr0, lr_t, k_t, 2, "direct", n)) for n in (0, 1, 10, 50)]
    assert errors == sorted(errors, reverse=True) and errors[2] < 0.5 * errors[0]  # no overshoot
    hr_t = to_tensor(hr, "cpu").double()
    # Aligned: from the bicubic guess it moves towards the true HR image, not half a pixel beside it.
    assert (back_project(sr0, lr_t, k_t, 2, "direct", 50) - hr_t).abs().mean() < (sr0 - hr_t).abs().mean()
    delta = torch.zeros(3, 3, dtype=torch.float64)
    delta[1, 1] = 1.0  # no blur: one exact round puts the LR pixels back in place
    lr_d = degrade_torch(hr_t, delta, 2, "direct")
    fixed = back_project(sr0, lr_d, delta, 2, "direct", 1)
    torch.testing.assert_close(degrade_torch(fixed, delta, 2, "direct"), lr_d.clamp(0, 1), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_zssr_trains_from_scratch_and_beats_bicubic():
    from skimage import data

    hr_u8 = data.astronaut()[40:136, 180:276]  # the face: real texture, bundled with scikit-image
    deg = named_degradation("g2.0")
    lr = degrade(hr_u8 / 255.0, deg.kernel, 2, "direct")
    bicubic = np.round(np.clip(imresize(lr, 2), 0, 1) * 255).astype(np.uint8)
    out = zssr(lr, deg.kernel, 2, "direct", {"iterations": 300, "crop_size": 32}, device="cpu", seed=0)
    assert out.sr.shape == (96, 96, 3) and 0 < out.steps <= 300
    assert psnr(out.sr, hr_u8, 2) > psnr(bicubic, hr_u8, 2) + 1.0


def test_tiled_inference_equals_whole_image():
    torch.manual_seed(1)
    model = MZSRNet()
    with torch.no_grad():  # make the residual large so tiling errors would show
        for conv in model.convs:
            conv.weight.mul_(3.0)
    model.double()  # float64, so that only a tiling error (not float32 summation order) can show
    lr = to_tensor(smooth_image(70, 90, seed=6), "cpu").double()
    whole = upscale(model, lr, 2, tile=None)
    tiled = upscale(model, lr, 2, tile=48)
    assert (whole - lr.new_tensor(0)).abs().max() > 0.05
    assert (tiled - whole).abs().max().item() < 1e-10
    np.testing.assert_array_equal(tiled.shape, (1, 3, 140, 180))


def test_crop_based_adaptation_on_a_large_image_stays_bounded():
    model = MZSRNet()
    lr = smooth_image(96, 128, seed=7)
    k = named_degradation("g2.0").kernel
    crops = adapt(
        model, lr, k, 2, "direct", AdaptOptions(steps=(0, 3), max_adapt_pixels=32 * 32, tile=64), device="cpu"
    )
    full = adapt(model, lr, k, 2, "direct", AdaptOptions(steps=(0, 3), max_adapt_pixels=None, tile=None), device="cpu")
    np.testing.assert_array_equal(crops[0].sr, full[0].sr)
    assert len(crops[1].step_seconds) == 3 and crops[1].sr.shape == (192, 256, 3)
    assert not np.array_equal(crops[1].sr, crops[0].sr)
    assert not np.array_equal(crops[1].sr, full[1].sr)  # the crops, not the whole image, were trained on


def test_best_preset_differs_and_is_sane():
    model = MZSRNet()
    hr = smooth_image(48, 48, seed=8)
    deg = named_degradation("g2.0")
    lr = degrade(hr, deg.kernel, 2, "direct")
    hr_u8 = np.round(hr * 255).astype(np.uint8)
    paper = adapt(model, lr, deg.kernel, 2, "direct", AdaptOptions(steps=(0,)), device="cpu")[0]
    best = adapt(model, lr, deg.kernel, 2, "direct", AdaptOptions(steps=(0,), preset="best"), device="cpu")[0]
    assert not np.array_equal(paper.sr, best.sr)
    # Back-projection with the true kernel must make the output more consistent with the LR input.
    assert psnr(best.sr, hr_u8, 2) > psnr(paper.sr, hr_u8, 2) - 0.5
    with pytest.raises(ValueError, match="preset"):
        AdaptOptions(steps=(0,), preset="fast")


def test_zero_steps_need_no_schedule():
    """A pre-trained model as it is (the pipeline's sr_pretrained) adapts nothing, so no schedule is
    looked up, even for a scale without a released one."""
    lr = smooth_image(10, 10)
    (out,) = adapt(MZSRNet(), lr, None, 3, "bicubic", AdaptOptions(steps=(0,)), "cpu")
    assert out.sr.shape == (30, 30, 3) and out.steps == 0
    with pytest.raises(MZSRError, match="no released adaptation schedule"):
        adapt(MZSRNet(), lr, None, 3, "bicubic", AdaptOptions(steps=(0, 1)), "cpu")
