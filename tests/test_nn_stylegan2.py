"""StyleGAN2 layers: the modulated convolution as one grouped conv against a per-sample loop (float64), its
up=2 path against zero insertion + convolution + blur, the resampling helpers and FusedBiasAct."""
import math

import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.nn.stylegan2 import (Blur, Downsample2d, FusedBiasAct, ModulatedConv2d, Upsample2d,
                                        modulated_conv2d, setup_filter)
from pyvision_fast.reference import stylegan2 as ref


def _per_sample_weights(weight, styles, demodulate, eps=1e-8):
    out = []
    for s in styles:
        w = weight * s[None, :, None, None]
        if demodulate:
            w = w / torch.sqrt(w.pow(2).sum(dim=[1, 2, 3], keepdim=True) + eps)
        out.append(w)
    return out


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("demodulate", [True, False])
def test_grouped_conv_equals_per_sample_loop(k, demodulate):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3, 4, 7, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4, k, k, generator=g, dtype=torch.float64)
    styles = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = modulated_conv2d(x, weight, styles, demodulate=demodulate)
    loop = torch.cat([F.conv2d(x[i:i + 1], w, padding=k // 2)
                      for i, w in enumerate(_per_sample_weights(weight, styles, demodulate))])
    assert y.shape == (3, 5, 7, 6)
    torch.testing.assert_close(y, loop, rtol=1e-12, atol=1e-12)


def test_demodulated_weights_have_unit_norm():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(6, 3, 3, 3, generator=g, dtype=torch.float64)
    styles = torch.rand(2, 3, generator=g, dtype=torch.float64) * 5
    for w in _per_sample_weights(weight, styles, True):
        torch.testing.assert_close(w.pow(2).sum(dim=[1, 2, 3]), torch.ones(6, dtype=torch.float64))
    # demodulation makes the output invariant to the scale of each sample's styles
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(modulated_conv2d(x, weight, styles), modulated_conv2d(x, weight, styles * 7.0))


@pytest.mark.parametrize("k", [3, 1])
def test_upsampling_path_equals_zero_insertion_conv_and_blur(k):
    """up=2: the grouped conv_transpose2d + FIR blur equals, per sample, zero insertion (the transposed conv's
    input), a full convolution with the flipped weight, then the blur with NVlabs' padding and gain 4."""
    g = torch.Generator().manual_seed(2 + k)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64)
    styles = torch.randn(2, 3, generator=g, dtype=torch.float64)
    f = setup_filter([1, 3, 3, 1]).double()
    y = modulated_conv2d(x, weight, styles, up=2, resample_filter=f)
    assert y.shape == (2, 4, 10, 8)
    p = k // 2
    px0, px1 = p + 2 - (k - 1), p + 1 - (k - 2)
    rows = []
    for i, w in enumerate(_per_sample_weights(weight, styles, True)):
        # zero insertion without the trailing zero, padded by k - 1: conv_transpose2d (stride 2) as a
        # convolution
        xz = ref.upfirdn2d(x[i:i + 1], torch.ones(1, 1, dtype=torch.float64), (2, 2), (1, 1),
                           (k - 1, k - 2, k - 1, k - 2))
        t = F.conv2d(xz, w.flip([2, 3]))
        rows.append(ref.upfirdn2d(t, f, (1, 1), (1, 1), (px0, px1, px0, px1), False, 4.0))
    torch.testing.assert_close(y, torch.cat(rows), rtol=1e-12, atol=1e-12)


def test_module_gradients_equal_the_loop():
    g = torch.Generator().manual_seed(4)
    layer = ModulatedConv2d(3, 4, 3, style_dim=8).double()
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 8, generator=g, dtype=torch.float64)
    y = layer(x, w)
    assert y.shape == (2, 4, 6, 6)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, layer.weight, layer.affine_weight, layer.affine_bias), gy)

    def loop(x, weight, aw, ab):
        styles = F.linear(w, aw / math.sqrt(8), ab)
        return torch.cat([F.conv2d(x[i:i + 1], wi, padding=1)
                          for i, wi in enumerate(_per_sample_weights(weight, styles, True))])

    params = (layer.weight, layer.affine_weight, layer.affine_bias)
    expected = torch.autograd.grad(loop(x, *params), (x, *params), gy)
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    up = ModulatedConv2d(3, 2, 3, style_dim=8, up=2).double()
    assert up(x, w).shape == (2, 2, 12, 12)


def test_setup_filter_rules():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    f1 = torch.tensor([1.0, 3, 3, 1])
    torch.testing.assert_close(f, torch.outer(f1, f1) / 64)
    assert setup_filter([1.0] * 8).shape == (8,)  # 8 taps or more stay separable
    assert setup_filter(None).shape == (1, 1)
    torch.testing.assert_close(setup_filter([1, 2], normalize=False, flip_filter=True, gain=4),
                               torch.tensor([[4.0, 2.0], [2.0, 1.0]]) * 4)  # outer([1, 2]), flipped, gain
    with pytest.raises(ValueError, match="non-empty"):
        setup_filter([])


def test_resampling_modules_keep_constant_images_and_sizes():
    x = torch.full((2, 3, 8, 6), 2.5, dtype=torch.float64)
    up = Upsample2d().double()(x)
    assert up.shape == (2, 3, 16, 12)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 2.5))
    down = Downsample2d().double()(x)
    assert down.shape == (2, 3, 4, 3)
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 2.5))
    blur = Blur().double()(x)
    assert blur.shape == x.shape
    torch.testing.assert_close(blur[:, :, 2:-2, 2:-2], torch.full_like(blur[:, :, 2:-2, 2:-2], 2.5))
    # W: 6 + 2 + 2 - 4 + 1, H: 8 + 1 + 1 - 4 + 1
    assert Blur(padding=(2, 1)).double()(x).shape == (2, 3, 7, 7)
    sep = Upsample2d(resample_filter=[1.0] * 8).double()(x)  # a separable 8-tap filter
    assert sep.shape == (2, 3, 16, 12)


def test_fused_bias_act():
    g = torch.Generator().manual_seed(5)
    layer = FusedBiasAct(4, act="lrelu", clamp=0.5, lr_multiplier=0.1).double()
    with torch.no_grad():
        layer.bias.copy_(torch.randn(4, generator=g, dtype=torch.float64))
    x = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    expected = ref.bias_act(x, layer.bias * 0.1, 1, "lrelu", 0.2, math.sqrt(2), 0.5)
    torch.testing.assert_close(y, expected)
    y.sum().backward()
    assert layer.bias.grad is not None and x.grad is not None
    with pytest.raises(ValueError, match="unknown act"):
        FusedBiasAct(3, act="gelu")
