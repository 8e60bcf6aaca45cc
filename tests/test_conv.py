"""The CPU convolution path (mzsr.network.conv): the same gradients as PyTorch's own path, first and second
order, to float64 rounding; adapted outputs within a grey level; bfloat16 gradients opt-in and close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mzsr import MZSRError
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.network import conv
from mzsr.network.model import MZSRNet, init_release_
from mzsr.training.maml import meta_loss

needs_bf16 = pytest.mark.skipif(not conv.native_bfloat16(), reason="this CPU has no AMX or AVX512-BF16")


def _net(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    net = init_release_(MZSRNet()).to(dtype)
    with torch.no_grad():  # non-zero biases, so that their gradient terms count
        for c in net.convs:
            c.bias.normal_(0, 0.01)
    return net


def _meta_gradient(theta, batch, plain: bool, precision="float32"):
    theta = [p.detach().clone().requires_grad_() for p in theta]
    with conv.plain_path() if plain else conv.gradient_precision(precision):
        meta_loss(theta, batch, steps=2, inner_lr=0.05, weights=[0.3, 0.7], first_order=False).backward()
    return [p.grad for p in theta]


def _relative(a, b):
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


def test_the_cpu_path_is_channels_last_and_the_plain_path_is_not():
    x = torch.rand(1, 3, 8, 8)
    assert conv.activation_layout(x).is_contiguous(memory_format=torch.channels_last)
    with conv.plain_path():
        assert conv.activation_layout(x) is x
    assert conv.fast_path(x)  # restored on leaving
    assert not conv.fast_path(torch.empty(1, 3, 8, 8, device="meta"))  # other devices: PyTorch's own


def test_meta_gradient_equals_pytorchs_own_in_float64():
    """Second-order MAML through the written-out double backward: the issue's 1e-10 in float64."""
    theta = list(_net().parameters())
    g = torch.Generator().manual_seed(1)
    batch = [torch.rand(2, 3, 3, 12, 12, generator=g, dtype=torch.float64) for _ in range(4)]
    fast, plain = _meta_gradient(theta, batch, False), _meta_gradient(theta, batch, True)
    assert all(p.abs().max() > 0 for p in plain)
    assert _relative(fast, plain) < 1e-10


def test_first_order_gradient_of_the_network_equals_pytorchs_own_in_float64():
    net = _net()
    x = torch.rand(2, 3, 10, 9, dtype=torch.float64, requires_grad=True)  # an input that wants its gradient too
    grads = []
    for plain in (False, True):
        net.zero_grad()
        x.grad = None
        with conv.plain_path() if plain else conv.gradient_precision("float32"):
            F.l1_loss(net(x), torch.zeros_like(x)).backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in net.parameters()])
    assert _relative(grads[0], grads[1]) < 1e-12


def test_network_without_biases_takes_the_same_path():
    """ZSSR's network (no biases) through the written-out backward."""
    torch.manual_seed(0)
    net = MZSRNet(bias=False).double()
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    grads = []
    for plain in (False, True):
        net.zero_grad()
        with conv.plain_path() if plain else conv.gradient_precision("float32"):
            net(x).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert _relative(grads[0], grads[1]) < 1e-12


def _small_lr(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((6, 6, 3))
    return np.clip(np.kron(base, np.ones((8, 8, 1))) + 0.05 * rng.standard_normal((48, 48, 3)), 0, 1)


def test_adapted_output_of_the_cpu_path_is_within_a_grey_level_of_the_plain_path():
    model = _net(torch.float32)
    lr = _small_lr()
    options = AdaptOptions(steps=(0, 5))
    fast = adapt(model, lr, None, 2, "bicubic", options, device="cpu")
    with conv.plain_path():
        plain = adapt(model, lr, None, 2, "bicubic", options, device="cpu")
    for a, b in zip(fast, plain):
        assert np.abs(a.sr.astype(int) - b.sr.astype(int)).max() <= 1
    assert np.abs(fast[1].sr.astype(int) - fast[0].sr.astype(int)).max() > 1  # the 5 steps did change it


@needs_bf16
def test_bfloat16_gradients_are_close_to_float32_ones():
    theta = list(_net(torch.float32).parameters())
    g = torch.Generator().manual_seed(2)
    batch = [torch.rand(2, 4, 3, 16, 16, generator=g) for _ in range(4)]
    exact = _meta_gradient([p.double() for p in theta], [b.double() for b in batch], False)
    f32 = _meta_gradient(theta, batch, False)
    bf16 = _meta_gradient(theta, batch, False, "bfloat16")
    f32_error, bf16_error = _relative([x.double() for x in f32], exact), _relative([x.double() for x in bf16], exact)
    assert f32_error < 1e-4
    assert 10 * f32_error < bf16_error < 2e-2  # really computed in bfloat16, and still close


@needs_bf16
def test_adaptation_with_bfloat16_gradients_stays_within_a_grey_level():
    model = _net(torch.float32)
    lr = _small_lr(1)
    exact = adapt(model, lr, None, 2, "bicubic", AdaptOptions(steps=(5,)), device="cpu")[0].sr
    fast = adapt(model, lr, None, 2, "bicubic", AdaptOptions(steps=(5,), grad_precision="bfloat16"), device="cpu")
    assert np.abs(fast[0].sr.astype(int) - exact.astype(int)).max() <= 1


def _layer_by_layer(net, x):
    """MZSRNet's forward through `conv.conv3x3` one layer at a time (the per-layer backward)."""
    h = conv.activation_layout(x)
    for i, c in enumerate(net.convs):
        h = conv.conv3x3(h, c.weight, c.bias)
        h = torch.relu(h) if i < len(net.convs) - 1 else h
    return x + h


@needs_bf16
@pytest.mark.parametrize("bias", [True, False])
def test_whole_network_bfloat16_backward_equals_the_per_layer_one(bias):
    """MZSRNet's first-order backward keeps its gradients in bfloat16 between layers; the numbers are the
    per-layer path's (which casts each to float32 and back): ReLU masks, biases and the input's gradient."""
    torch.manual_seed(3)
    net = MZSRNet(bias=bias)
    x, y = torch.rand(2, 3, 20, 17, requires_grad=True), torch.rand(2, 3, 20, 17)
    grads = []
    for forward in (net, lambda x: _layer_by_layer(net, x)):
        net.zero_grad(set_to_none=True)
        x.grad = None
        with conv.gradient_precision("bfloat16"):
            F.l1_loss(forward(x), y).backward()
        grads.append([p.grad for p in net.parameters()] + [x.grad])
    whole, per_layer = grads
    assert len(whole) == (17 if bias else 9) and all(g.abs().max() > 0 for g in whole)
    assert _relative(whole, per_layer) < 1e-6
    with conv.gradient_precision("bfloat16"):
        first = torch.autograd.grad(F.l1_loss(net(x), y), list(net.parameters()), create_graph=True)
        with pytest.raises(RuntimeError, match="once_differentiable"):
            sum(g.sum() for g in first).backward()


def test_gradient_precision_is_checked():
    with pytest.raises(MZSRError, match="unknown gradient precision 'float16'"):
        conv.check_gradient_precision("float16", "cpu")
    with pytest.raises(MZSRError, match="needs a CPU with AMX or AVX512-BF16"):
        conv.check_gradient_precision("bfloat16", "cuda")
    with pytest.raises(ValueError, match="unknown grad_precision"):
        AdaptOptions(grad_precision="half")
