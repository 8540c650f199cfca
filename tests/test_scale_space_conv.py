"""ScaleSpaceConv2d (our reconstruction of SCAN-CNN's scale-space convolution)."""
import math

import pytest
import torch
import torch.nn.functional as F

from op_harness import assert_close, check_onnx, gradcheck
from pyvision_fast.nn import ScaleSpaceConv2d, gaussian_derivative_basis


def test_basis_is_the_sampled_scale_normalised_gaussian_derivatives():
    sigma = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    k = 7
    basis = gaussian_derivative_basis(sigma, k, order=2)
    assert basis.shape == (3, 6, k, k)
    x = torch.arange(k, dtype=torch.float64) - 3
    for s, sg in enumerate(sigma):
        g = torch.exp(-x**2 / (2 * sg**2))
        g = g / g.sum()
        gx = -(x / sg) * g  # sigma * d/dx
        gxx = ((x / sg) ** 2 - 1) * g  # sigma^2 * d2/dx2
        expected = [g[:, None] * g[None], g[:, None] * gx[None], gx[:, None] * g[None], g[:, None] * gxx[None],
                    gx[:, None] * gx[None], gxx[:, None] * g[None]]
        # order of the basis: (0,0), (1,0)=d/dy, (0,1)=d/dx, (2,0), (1,1), (0,2)
        order = [0, 2, 1, 5, 4, 3]
        for b, e in enumerate(order):
            assert_close(basis[s, b], expected[e])
        assert abs(float(basis[s, 0].sum()) - 1) < 1e-12
        assert abs(float(basis[s, 2].sum())) < 1e-12  # odd filters sum to 0


def test_forward_equals_conv_with_materialised_kernels_and_fuse_is_plain_conv():
    torch.manual_seed(0)
    layer = ScaleSpaceConv2d(5, 12, 5, num_scales=4, order=2, stride=2, padding=2).double()
    x = torch.randn(3, 5, 17, 19, dtype=torch.float64)
    out = layer(x)
    assert_close(out, F.conv2d(x, layer.weight(), layer.bias, 2, 2))
    fused = layer.fuse()
    assert type(fused) is torch.nn.Conv2d and fused.weight.shape == (12, 5, 5, 5)
    assert_close(fused(x), out)


def test_groups_use_their_own_scale():
    layer = ScaleSpaceConv2d(1, 6, 7, num_scales=3, order=1).double()
    with torch.no_grad():
        layer.coeff.zero_()
        layer.coeff[:, 0, 0] = 1.0  # every output channel: the order-0 Gaussian of its group's scale
    w = layer.weight()[:, 0]
    sig = layer.sigma()
    assert layer.group_sizes == [2, 2, 2]
    for o in range(6):
        assert_close(w[o], gaussian_derivative_basis(sig, 7, 1)[o // 2, 0])


def test_gradcheck_in_coefficients_and_log_sigma():
    torch.manual_seed(1)
    layer = ScaleSpaceConv2d(2, 3, 3, num_scales=3, order=2, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    group_of_channel = torch.repeat_interleave(torch.arange(3), torch.tensor(layer.group_sizes))

    def run(coeff, log_sigma):
        layer.coeff.data, layer.log_sigma.data = coeff, log_sigma
        return F.conv2d(x, torch.einsum("oib,obyx->oiyx", coeff, gaussian_derivative_basis(
            log_sigma.exp(), 3, 2)[group_of_channel]), None, 1, 1)

    sigma = torch.tensor([0.6, 0.75, 0.9], dtype=torch.float64).log().requires_grad_()
    gradcheck(run, (layer.coeff.detach().clone().requires_grad_(), sigma))
    out = layer(x)
    out.sum().backward()
    assert layer.log_sigma.grad is not None and layer.log_sigma.grad.abs().sum() > 0


def test_sigma_stays_representable():
    layer = ScaleSpaceConv2d(1, 2, 5, num_scales=2)
    with torch.no_grad():
        layer.log_sigma.copy_(torch.tensor([-10.0, 10.0]))
    assert torch.allclose(layer.sigma(), torch.tensor([0.5, 2.0]))


def test_learns_the_scale_of_a_blur_from_data():
    """Fit a 1-scale, order-0 layer to Gaussian blur with sigma 1.5: sigma converges to it."""
    torch.manual_seed(2)
    k, target_sigma = 9, 1.5
    x = torch.randn(8, 1, 24, 24, dtype=torch.float64)
    g = torch.exp(-(torch.arange(k, dtype=torch.float64) - 4) ** 2 / (2 * target_sigma**2))
    g = g / g.sum()
    y = F.conv2d(x, (g[:, None] * g[None])[None, None], padding=4)
    layer = ScaleSpaceConv2d(1, 1, k, num_scales=1, order=0, padding=4, bias=False).double()
    with torch.no_grad():
        layer.coeff.fill_(1.0)
        layer.log_sigma.fill_(math.log(0.8))
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
    assert abs(float(layer.sigma().detach()) - target_sigma) < 0.05


def test_onnx_export(tmp_path):
    torch.manual_seed(3)
    layer = ScaleSpaceConv2d(4, 8, 3, num_scales=4, padding=1).eval()
    report = check_onnx(layer, (torch.randn(2, 4, 10, 10),), tmp_path, atol=1e-5)
    assert "Conv" in report.op_types
    check_onnx(layer.fuse().eval(), (torch.randn(2, 4, 10, 10),), tmp_path / "fused", atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=4), "odd"),
    (dict(kernel_size=1), "odd and >= 3"),
    (dict(num_scales=0), "num_scales"),
    (dict(num_scales=9), "num_scales"),
    (dict(order=-1), "order"),
])
def test_bad_arguments(kwargs, match):
    args = dict(in_channels=2, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ScaleSpaceConv2d(**args)
