import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mzsr.adapt import adapt, back_project, learning_rate, self_ensemble, to_tensor, upscale
from mzsr.degrade import degrade, degrade_torch
from mzsr.kernels import named_degradation
from mzsr.metrics import psnr
from mzsr.model import MZSRNet
from mzsr.resize import imresize, imresize_torch
from mzsr.zssr import zssr
from conftest import smooth_image


def test_direct_x2_schedule():
    assert [learning_rate("direct_x2", s) for s in range(6)] == [0.02, 0.01, 0.01, 0.01, 0.005, 0.005]
    with pytest.raises(ValueError):
        learning_rate("nope", 0)


def test_zero_steps_is_plain_inference_and_model_untouched():
    model = MZSRNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = smooth_image(20, 24)
    k = named_degradation("g2.0").kernel
    outs = adapt(model, lr, k, 2, "direct", (0, 1, 3), device="cpu")
    assert [o.steps for o in outs] == [0, 1, 3]
    assert all(o.sr.shape == (40, 48, 3) and o.sr.dtype == np.uint8 for o in outs)
    ref = upscale(model, to_tensor(lr, "cpu"), 2)
    expected = np.round(ref.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    np.testing.assert_array_equal(outs[0].sr, expected)
    assert not np.array_equal(outs[0].sr, outs[2].sr)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_adaptation_reduces_the_self_supervised_loss():
    torch.manual_seed(0)
    model = MZSRNet()
    lr = smooth_image(24, 24, seed=3)
    k = named_degradation("g2.0").kernel
    father = to_tensor(lr, "cpu")
    son_up = imresize_torch(degrade_torch(father, torch.tensor(k, dtype=torch.float32), 2, "direct"), output_shape=(24, 24))
    losses = []
    for steps in (0, 5):
        net = MZSRNet()
        net.load_state_dict(model.state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        for s in range(steps):
            for g in opt.param_groups:
                g["lr"] = learning_rate("direct_x2", s)
            opt.zero_grad()
            F.l1_loss(net(son_up), father).backward()
            opt.step()
        losses.append(F.l1_loss(net(son_up), father).item())
    assert losses[1] < losses[0]


def test_self_ensemble_of_identity_network_is_bicubic():
    model = MZSRNet()
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.zero_()
    lr = to_tensor(smooth_image(12, 16), "cpu")
    torch.testing.assert_close(self_ensemble(model, lr, 2), imresize_torch(lr, 2.0), atol=1e-5, rtol=0)


def test_back_projection_reduces_reprojection_error():
    hr = smooth_image(32, 32, seed=4)
    k = named_degradation("g2.0").kernel
    lr = degrade(hr, k, 2, "direct")
    sr0 = to_tensor(imresize(lr, 2), "cpu").double()
    lr_t, k_t = to_tensor(lr, "cpu").double(), torch.tensor(k)
    err = lambda sr: (degrade_torch(sr, k_t, 2, "direct") - lr_t).abs().mean().item()  # noqa: E731
    assert err(back_project(sr0, lr_t, k_t, 2, "direct", 10)) < 0.5 * err(sr0)


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
    lr = to_tensor(smooth_image(70, 90, seed=6), "cpu")
    whole = upscale(model, lr, 2, tile=None)
    tiled = upscale(model, lr, 2, tile=48)
    assert (whole - lr.new_tensor(0)).abs().max() > 0.05
    assert (tiled - whole).abs().max().item() < 1e-5  # far inside 1/255
    np.testing.assert_array_equal(tiled.shape, (1, 3, 140, 180))


def test_crop_based_adaptation_on_a_large_image_stays_bounded():
    model = MZSRNet()
    lr = smooth_image(96, 128, seed=7)
    k = named_degradation("g2.0").kernel
    crops = adapt(model, lr, k, 2, "direct", (0, 3), device="cpu", max_adapt_pixels=32 * 32, tile=64)
    full = adapt(model, lr, k, 2, "direct", (0, 3), device="cpu", max_adapt_pixels=None, tile=None)
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
    paper = adapt(model, lr, deg.kernel, 2, "direct", (0,), device="cpu")[0]
    best = adapt(model, lr, deg.kernel, 2, "direct", (0,), device="cpu", preset="best")[0]
    assert not np.array_equal(paper.sr, best.sr)
    # Back-projection with the true kernel must make the output more consistent with the LR input.
    assert psnr(best.sr, hr_u8, 2) > psnr(paper.sr, hr_u8, 2) - 0.5
    with pytest.raises(ValueError, match="preset"):
        adapt(model, lr, deg.kernel, 2, "direct", (0,), device="cpu", preset="fast")
