"""TF-1's Adam (mzsr.training.optim.AdamTF1): the update of TensorFlow 1's documentation, step for step."""

import io

import numpy as np
import pytest
import torch

from mzsr import MZSRError
from mzsr.training.optim import AdamTF1, make_optimizer


def tf1_adam_closed_form(theta0, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """TensorFlow 1's AdamOptimizer in float64 numpy: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    theta -= lr_t m_t / (sqrt(v_t) + eps). Returns theta after each step."""
    theta, m, v, out = theta0.copy(), np.zeros_like(theta0), np.zeros_like(theta0), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        theta = theta - lr_t * m / (np.sqrt(v) + eps)
        out.append(theta.copy())
    return out


def _gradients(steps=6, shape=(50,), seed=0):
    rng = np.random.default_rng(seed)
    # magnitudes from 1e-9 (far below eps: where TF-1 and PyTorch differ most) to 1
    return [rng.standard_normal(shape) * 10.0 ** rng.uniform(-9, 0, shape) for _ in range(steps)]


def _run(opt_cls, theta0, grads, lr, **kw):
    p = torch.tensor(theta0, requires_grad=True)
    opt = opt_cls([p], lr=lr, **kw)
    out = []
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out, opt


def test_update_sequence_equals_the_closed_form_in_float64():
    theta0, grads = np.random.default_rng(1).standard_normal(50), _gradients()
    ours, _ = _run(AdamTF1, theta0, grads, lr=1e-4)
    for got, want in zip(ours, tf1_adam_closed_form(theta0, grads, 1e-4)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    # PyTorch's Adam is another update where |g| is near eps: not what the release ran
    torch_adam, _ = _run(torch.optim.Adam, theta0, grads, lr=1e-4)
    assert np.abs(torch_adam[0] - ours[0]).max() > 1e-5


def test_first_step_damps_tiny_gradients_as_the_release():
    """At t = 1 TF-1 moves a parameter by lr |g| / (|g| + eps / sqrt(1 - b2)), 31.6x PyTorch's epsilon:
    0.35 lr for the median meta-gradient at theta_T (1.7e-7), where PyTorch's Adam moves it 0.94 lr;
    both move it by ~lr for large gradients."""
    g = np.array([1e-8, 1.7e-7, 1.0])
    ours, _ = _run(AdamTF1, np.zeros(3), [g], lr=1.0)
    theirs, _ = _run(torch.optim.Adam, np.zeros(3), [g], lr=1.0)
    np.testing.assert_allclose(-ours[0], g / (g + 1e-8 / np.sqrt(1 - 0.999)), rtol=1e-12)
    np.testing.assert_allclose(-theirs[0], g / (g + 1e-8), rtol=1e-9)
    assert -ours[0][1] == pytest.approx(0.35, abs=0.005) and -theirs[0][1] == pytest.approx(0.944, abs=0.001)


def test_resumed_state_continues_bit_for_bit():
    theta0, grads = np.random.default_rng(2).standard_normal(20).astype(np.float32), _gradients(8, (20,), 3)
    grads = [g.astype(np.float32) for g in grads]
    straight, _ = _run(AdamTF1, theta0, grads, lr=1e-3)
    first, opt = _run(AdamTF1, theta0, grads[:4], lr=1e-3)
    buf = io.BytesIO()
    torch.save({"params": torch.from_numpy(first[-1]), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    p = saved["params"].clone().requires_grad_(True)
    resumed = AdamTF1([p], lr=1e-3)
    resumed.load_state_dict(saved["opt"])
    for g, want in zip(grads[4:], straight[4:]):
        p.grad = torch.tensor(g)
        resumed.step()
        np.testing.assert_array_equal(p.detach().numpy(), want)


def test_zeroed_state_is_a_fresh_one():
    """mzsr.training.meta_step.MetaStep undoes its CUDA-graph warm-up by zeroing the state it created: that must be
    the state of an optimizer that never stepped."""
    theta0, grads = np.ones(5), _gradients(3, (5,), 4)
    want, _ = _run(AdamTF1, theta0, grads[1:], lr=1e-3)
    p = torch.tensor(theta0, requires_grad=True)
    opt = AdamTF1([p], lr=1e-3)
    p.grad = torch.tensor(grads[0])
    opt.step()
    with torch.no_grad():
        p.copy_(torch.tensor(theta0))
        for t in opt.state[p].values():
            t.zero_()
    for g, w in zip(grads[1:], want):
        p.grad = torch.tensor(g)
        opt.step()
        np.testing.assert_array_equal(p.detach().numpy(), w)


def test_make_optimizer_names():
    p = [torch.zeros(2, requires_grad=True)]
    assert isinstance(make_optimizer("adam_tf1", p, 1e-4), AdamTF1)
    assert type(make_optimizer("adam", p, 1e-4)) is torch.optim.Adam
    with pytest.raises(MZSRError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", p, 1e-4)
