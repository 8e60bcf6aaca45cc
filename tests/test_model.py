import torch

from mzsr.network.model import PARAMETER_COUNT, MZSRNet, count_parameters, functional_forward


def test_parameter_count_and_layout():
    model = MZSRNet()
    assert count_parameters(model) == PARAMETER_COUNT == 225_091
    convs = list(model.convs)
    assert len(convs) == 8
    assert (convs[0].in_channels, convs[0].out_channels, convs[-1].out_channels) == (3, 64, 3)
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)


def test_global_residual():
    model = MZSRNet()
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.zero_()
    x = torch.rand(2, 3, 10, 12)
    torch.testing.assert_close(model(x), x)


def test_functional_forward_equals_module_and_uses_given_weights():
    model = MZSRNet()
    x = torch.rand(2, 3, 16, 16)
    params = dict(model.named_parameters())
    torch.testing.assert_close(functional_forward(model, params, x), model(x))
    shifted = {k: v + 0.01 for k, v in params.items()}
    out = functional_forward(model, shifted, x)
    assert (out - model(x)).abs().max() > 1e-3
    # Gradients reach the fast weights, not only the module's own parameters.
    fast = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    functional_forward(model, fast, x).sum().backward()
    assert all(p.grad is not None for p in fast.values())
