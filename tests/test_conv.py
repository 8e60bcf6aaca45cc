"""The CPU convolution path (mzsr.network.conv): the same gradients as plain PyTorch (NCHW `F.conv2d` and
its own autograd, the oracle below), first and second order, to float64 rounding; adapted outputs within
a grey level; bfloat16 gradients opt-in and close."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mzsr import MZSRError
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.network import conv
from mzsr.network.model import MZSRNet, init_release_
from mzsr.training.maml import meta_loss, tasks_forward

needs_bf16 = pytest.mark.skipif(not conv.native_bfloat16(), reason="this CPU has no AMX or AVX512-BF16")


# ------------------------------------------------------------------ the oracle: plain PyTorch
def plain_network(x, weights, biases):
    """MZSRNet's layers as plain NCHW `F.conv2d` with PyTorch's own (double) backward."""
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = F.conv2d(h, weight, bias, padding=1)
        h = torch.relu(h) if i < len(weights) - 1 else h
    return h


def plain_tasks_forward(params, x, grad_dtype=None):
    """`mzsr.training.maml.tasks_forward` in plain PyTorch: one task after another."""
    weights, biases = params[0::2], params[1::2]
    return torch.stack(
        [x[t] + plain_network(x[t], [w[t] for w in weights], [b[t] for b in biases]) for t in range(len(x))]
    )


class PlainNet(MZSRNet):
    """MZSRNet whose forward is plain PyTorch (what adaptation ran before the CPU path)."""

    def forward(self, x, grad_dtype=None):
        return x + plain_network(x, [c.weight for c in self.convs], [c.bias for c in self.convs])


def _net(dtype=torch.float64, seed=0, cls=MZSRNet):
    torch.manual_seed(seed)
    net = init_release_(cls()).to(dtype)
    with torch.no_grad():  # non-zero biases, so that their gradient terms count
        for c in net.convs:
            c.bias.normal_(0, 0.01)
    return net


def _meta_gradient(theta, batch, plain: bool, grad_dtype=None):
    theta = [p.detach().clone().requires_grad_() for p in theta]
    forward = plain_tasks_forward if plain else tasks_forward
    meta_loss(theta, batch, 2, 0.05, [0.3, 0.7], False, forward=forward, grad_dtype=grad_dtype).backward()
    return [p.grad for p in theta]


def _relative(a, b):
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


def test_the_cpu_path_is_channels_last():
    x = torch.rand(1, 3, 8, 8)
    assert conv.activation_layout(x).is_contiguous(memory_format=torch.channels_last)
    assert conv.fast_path(x)
    assert not conv.fast_path(torch.empty(1, 3, 8, 8, device="meta"))  # other devices: PyTorch's own


def test_meta_gradient_equals_plain_pytorchs_in_float64():
    """Second-order MAML through the written-out double backward: the issue's 1e-10 in float64."""
    theta = list(_net().parameters())
    g = torch.Generator().manual_seed(1)
    batch = [torch.rand(2, 3, 3, 12, 12, generator=g, dtype=torch.float64) for _ in range(4)]
    fast, plain = _meta_gradient(theta, batch, False), _meta_gradient(theta, batch, True)
    assert all(p.abs().max() > 0 for p in plain)
    assert _relative(fast, plain) < 1e-10


def _first_order_grads(net, x, loss):
    net.zero_grad()
    x.grad = None
    loss(net(x)).backward()
    return [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]


def test_first_order_gradient_of_the_network_equals_plain_pytorchs_in_float64():
    net, plain = _net(), _net(cls=PlainNet)
    x = torch.rand(2, 3, 10, 9, dtype=torch.float64, requires_grad=True)  # an input that wants its gradient too
    loss = lambda out: F.l1_loss(out, torch.zeros_like(out))  # noqa: E731
    assert _relative(_first_order_grads(net, x, loss), _first_order_grads(plain, x, loss)) < 1e-12


def test_network_without_biases_takes_the_same_path():
    """ZSSR's network (no biases) through the written-out backward."""
    torch.manual_seed(0)
    net = MZSRNet(bias=False).double()
    plain = PlainNet(bias=False).double()
    plain.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    loss = lambda out: out.square().mean()  # noqa: E731
    assert _relative(_first_order_grads(net, x, loss), _first_order_grads(plain, x, loss)) < 1e-12


def _small_lr(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((6, 6, 3))
    return np.clip(np.kron(base, np.ones((8, 8, 1))) + 0.05 * rng.standard_normal((48, 48, 3)), 0, 1)


def test_adapted_output_of_the_cpu_path_is_within_a_grey_level_of_plain_pytorchs():
    model, plain_model = _net(torch.float32), _net(torch.float32, cls=PlainNet)
    lr = _small_lr()
    options = AdaptOptions(steps=(0, 5))
    fast = adapt(model, lr, None, 2, "bicubic", options, device="cpu")
    plain = adapt(plain_model, lr, None, 2, "bicubic", options, device="cpu")
    for a, b in zip(fast, plain):
        assert np.abs(a.sr.astype(int) - b.sr.astype(int)).max() <= 1
    assert np.abs(fast[1].sr.astype(int) - fast[0].sr.astype(int)).max() > 1  # the 5 steps did change it


@needs_bf16
def test_bfloat16_meta_gradients_are_close_to_float32_ones():
    theta = list(_net(torch.float32).parameters())
    g = torch.Generator().manual_seed(2)
    batch = [torch.rand(2, 4, 3, 16, 16, generator=g) for _ in range(4)]
    exact = _meta_gradient([p.double() for p in theta], [b.double() for b in batch], False)
    f32 = _meta_gradient(theta, batch, False)
    bf16 = _meta_gradient(theta, batch, False, torch.bfloat16)
    f32_error, bf16_error = _relative([x.double() for x in f32], exact), _relative([x.double() for x in bf16], exact)
    assert f32_error < 1e-4
    assert 10 * f32_error < bf16_error < 2e-2  # really computed in bfloat16, and still close


@needs_bf16
def test_adaptation_in_bfloat16_stays_within_a_grey_level():
    model = _net(torch.float32)
    lr = _small_lr(1)
    exact = adapt(model, lr, None, 2, "bicubic", AdaptOptions(steps=(5,)), device="cpu")[0].sr
    fast = adapt(model, lr, None, 2, "bicubic", AdaptOptions(steps=(5,), grad_precision="bfloat16"), device="cpu")
    assert np.abs(fast[0].sr.astype(int) - exact.astype(int)).max() <= 1


def _bfloat16_network(net, x):
    """MZSRNet with its hidden layers in bfloat16, by plain PyTorch autograd: activations and their
    gradients in bfloat16 between them, weights cast from float32; the first and the last layer, the
    residual and its sum with the input in float32; channels-last as on the CPU path (another layout
    sums in another order)."""
    h, last = conv.activation_layout(x), len(net.convs) - 1
    for i, c in enumerate(net.convs):
        dtype = torch.float32 if i in (0, last) else torch.bfloat16
        bias = None if c.bias is None else c.bias.to(dtype)
        h = F.conv2d(h.to(dtype), c.weight.to(dtype), bias, padding=1)
        h = torch.relu(h) if i < last else h
    return x + h


@needs_bf16
@pytest.mark.parametrize("bias", [True, False])
def test_the_bfloat16_network_is_plain_pytorchs_bfloat16_network(bias):
    """With bfloat16 the network's hidden layers run in bfloat16, forward and first-order backward (the
    CPU path writes the backward out, without autograd's casts): the numbers are plain PyTorch's:
    outputs, ReLU masks, biases and the input's gradient; inference too. It cannot be differentiated
    twice (second-order MAML takes the per-layer path: mzsr.training.maml)."""
    torch.manual_seed(3)
    net = MZSRNet(bias=bias)
    x, y = torch.rand(2, 3, 20, 17, requires_grad=True), torch.rand(2, 3, 20, 17)
    results = []
    for forward in (lambda: net(x, grad_dtype=torch.bfloat16), lambda: _bfloat16_network(net, x)):
        net.zero_grad(set_to_none=True)
        x.grad = None
        out = forward()
        F.l1_loss(out, y).backward()
        results.append((out.detach() - x.detach(), [p.grad for p in net.parameters()] + [x.grad]))  # residual
    (fast_out, fast_grads), (plain_out, plain_grads) = results
    assert len(fast_grads) == (17 if bias else 9) and all(g.abs().max() > 0 for g in fast_grads)
    assert _relative([fast_out], [plain_out]) < 1e-6
    assert _relative(fast_grads, plain_grads) < 1e-2
    with torch.no_grad():
        assert _relative([net(x, grad_dtype=torch.bfloat16) - x], [plain_out]) < 1e-6
        assert _relative([net(x) - x], [plain_out]) > 1e-3  # the float32 network differs: bfloat16 is used
    first = torch.autograd.grad(
        F.l1_loss(net(x, grad_dtype=torch.bfloat16), y), list(net.parameters()), create_graph=True
    )
    with pytest.raises(RuntimeError, match="once_differentiable"):
        sum(g.sum() for g in first).backward()


def test_gradient_precision_is_checked():
    assert conv.grad_dtype("float32", "cpu") is None
    with pytest.raises(MZSRError, match="unknown gradient precision 'float16'"):
        conv.grad_dtype("float16", "cpu")
    with pytest.raises(MZSRError, match="needs a CPU with AMX or AVX512-BF16"):
        conv.grad_dtype("bfloat16", "cuda")
    with pytest.raises(MZSRError, match="unknown gradient precision 'half'"):
        adapt(_net(torch.float32), _small_lr(), None, 2, "bicubic", AdaptOptions(grad_precision="half"), "cpu")
