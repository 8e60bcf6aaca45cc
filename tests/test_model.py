import torch

from mzsr.network.model import PARAMETER_COUNT, MZSRNet


def test_parameter_count_and_layout():
    model = MZSRNet()
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNT == 225_091
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
