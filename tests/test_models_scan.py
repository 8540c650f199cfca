"""SCAN-CNN and the plain IR-ResNet (``pyvision_fast.models.scan``): parameter counts, the scale-attention
convolution against a direct computation, fuse() equivalence and cost, insightface key compatibility, ONNX
export of the fused network."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pyvision_fast.models import create_model, list_models, save_safetensors
from pyvision_fast.models.scan import IResNet, ScanConv2d
from pyvision_fast.nn import ScaleSpaceConv2d
from pyvision_fast.reference import scale_space as ref

TINY = dict(widths=(8, 16, 16, 32), num_features=16, img_size=32)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, PReLU slopes, scales and scale attention (a fresh model has BN identity
    statistics and uniform attention, which would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
            elif isinstance(m, ScanConv2d):
                m.scale_logits.copy_(torch.randn(m.scale_logits.shape, generator=g) * 2)
                m.log_sigma.copy_(torch.empty(m.log_sigma.shape).uniform_(math.log(0.55), math.log(0.95),
                                                                          generator=g))
    return model


def test_registered_and_parameter_counts():
    assert {"scan_ir18", "scan_ir50", "iresnet18", "iresnet50"} <= set(list_models())
    plain50, scan50 = create_model("iresnet50"), create_model("scan_ir50")
    # insightface's r50: 43.59M parameters (the 25088 x 512 FC at 7 x 7 is 12.85M of them)
    assert 43.5e6 < _count(plain50) < 43.7e6
    assert plain50.fc.weight.shape == (512, 512 * 7 * 7)
    assert 23.9e6 < _count(create_model("iresnet18")) < 24.1e6
    # SCAN: each free 3x3 kernel (9 weights) becomes 6 basis coefficients; per layer S scales and C_out x S
    # attention logits
    convs3 = [m for m in plain50.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    expected = _count(plain50) - sum(m.weight.numel() // 3 for m in convs3) \
        + sum(4 + m.out_channels * 4 for m in convs3)
    assert _count(scan50) == expected
    assert 33.4e6 < _count(scan50) < 33.5e6  # what we get: 33.46M
    assert sum(isinstance(m, ScanConv2d) for m in scan50.modules()) == len(convs3) == 1 + 2 * (3 + 4 + 14 + 3)


def test_scan_conv_weight_is_the_attention_mix_of_scale_space_kernels():
    torch.manual_seed(0)
    conv = ScanConv2d(5, 6, 3, num_scales=3, stride=2)
    assert isinstance(conv, ScaleSpaceConv2d)
    with torch.no_grad():
        conv.scale_logits.normal_()
    a = conv.scale_logits.softmax(-1)
    # each scale's kernels from the reference ScaleSpaceConv2d weight with a single scale group
    per_scale = [ref.scale_space_weight(conv.coeff, conv.log_sigma[s:s + 1], 3, 2, 0.5, 1.0)
                 for s in range(3)]
    expected = sum(a[:, s, None, None, None] * per_scale[s] for s in range(3))
    torch.testing.assert_close(conv.weight(), expected, rtol=1e-5, atol=1e-6)
    x = torch.randn(2, 5, 9, 9)
    y = conv(x)
    assert y.shape == (2, 6, 5, 5)
    # the response is the attention-weighted sum of the responses at each scale
    parts = sum(a[None, :, s, None, None] * torch.nn.functional.conv2d(x, per_scale[s], stride=2, padding=1)
                for s in range(3))
    torch.testing.assert_close(y, parts, rtol=1e-4, atol=1e-5)
    y.square().sum().backward()
    for p in (conv.coeff, conv.log_sigma, conv.scale_logits):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_fuse_equals_unfused_and_is_plain():
    torch.manual_seed(0)
    model = _randomise(create_model("scan_ir18", **TINY)).eval()
    fused = model.fuse()
    kinds = {type(m) for m in fused.modules() if not list(m.children())}
    assert kinds <= {nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU, nn.Linear, nn.Dropout}
    assert not any(isinstance(m, ScaleSpaceConv2d) for m in fused.modules())
    assert any(isinstance(m, ScanConv2d) for m in model.modules())  # the original is untouched
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y, yf = model(x), fused(x)
    assert y.abs().max() > 0.1
    torch.testing.assert_close(yf, y, rtol=1e-4, atol=1e-4)
    # the fused network is a plain IR-ResNet: its state_dict loads strictly into iresnet18, same output
    plain = create_model("iresnet18", **TINY).eval()
    plain.load_state_dict(fused.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), y, rtol=1e-4, atol=1e-4)
    assert model.export_module() is not model and plain.export_module() is plain


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_fused_scan_costs_what_the_plain_network_costs():
    x = torch.randn(1, 3, 112, 112)
    widths = (16, 32, 64, 128)  # narrow, for speed; the FLOP identity does not depend on the widths
    scan = create_model("scan_ir18", widths=widths, num_features=64).eval()
    plain = create_model("iresnet18", widths=widths, num_features=64).eval()
    fused_flops, plain_flops = _flops(scan.fuse(), x), _flops(plain, x)
    assert fused_flops == plain_flops
    # by hand: 2 * MACs of every conv and of the FC at 112 x 112 (stages 56, 28, 14, 7)
    macs = 3 * 16 * 9 * 112 ** 2
    cin, side = 16, 112
    for w in widths:
        side //= 2
        macs += cin * w * 9 * (2 * side) ** 2 + w * w * 9 * side ** 2 + cin * w * side ** 2  # first block
        macs += w * w * 9 * side ** 2 * 2                                                 # second block
        cin = w
    macs += 128 * 49 * 64
    assert plain_flops == 2 * macs
    # unfused, SCAN only adds the kernel construction (small next to the convolutions)
    assert plain_flops < _flops(scan, x) < 1.05 * plain_flops


@pytest.mark.slow
def test_fused_scan_ir50_costs_what_iresnet50_costs():
    x = torch.randn(1, 3, 112, 112)
    fused = create_model("scan_ir50").eval().fuse()
    plain = create_model("iresnet50").eval()
    assert _flops(fused, x) == _flops(plain, x)
    assert 12.6e9 < _flops(plain, x) < 12.8e9  # insightface quotes r50 at 6.3 GMACs


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="divisible by 16"):
        create_model("scan_ir18", img_size=100)
    with pytest.raises(ValueError, match="4 stages"):
        IResNet((2, 2, 2), widths=(8, 8, 8))
    m = create_model("iresnet18", **TINY)
    with pytest.raises(ValueError, match=r"expected input \(B, 3, 32, 32\)"):
        m(torch.randn(1, 3, 64, 64))
    # create_model(..., num_classes=N), as the engine passes it, leaves the embedding size alone
    assert create_model("scan_ir18", num_classes=10, **TINY).features.num_features == 16


def test_no_weight_decay_names_scales_and_attention():
    m = create_model("scan_ir18", **TINY)
    names = m.no_weight_decay()
    assert "conv1.log_sigma" in names and "layer1.0.conv2.scale_logits" in names
    assert all(n.endswith(("log_sigma", "scale_logits")) for n in names)
    assert len(names) == 2 * sum(isinstance(x, ScanConv2d) for x in m.modules())
    assert not m.features.weight.requires_grad  # insightface's frozen embedding-BN scale


def test_export_model_exports_the_fused_network(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from pyvision_fast.export import export_model, run_onnxruntime

    torch.manual_seed(0)
    src = _randomise(create_model("scan_ir18", **TINY))
    weights = save_safetensors(src.state_dict(), tmp_path / "scan.safetensors")
    report = export_model("scan_ir18", tmp_path / "scan.onnx", checkpoint=weights, model_args=TINY)
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff < 1e-4
    assert "Conv" in report.op_types and "PRelu" in report.op_types
    assert not any(t.startswith("pvf") for t in report.op_types)
    # no kernel construction left in the graph: the fused network's op set is that of the plain network
    plain_report = export_model("iresnet18", tmp_path / "plain.onnx", model_args=TINY)
    assert set(report.op_types) == set(plain_report.op_types)
    x = torch.rand(5, 3, 32, 32)  # another batch than the export's example
    (out,) = run_onnxruntime(report.path, [x])
    with torch.no_grad():
        expected = src.eval()(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_scale_attention_highlights_the_channel_of_the_local_scale():
    # two channels with the same pattern (minus the scale-normalised Laplacian: a blob detector), attention on
    # sigma 0.5 (channel 0) or sigma 1 (channel 1); an image with a fine blob (std 0.5 px) on the left and a
    # coarse one (std 2 px) on the right: at each blob's centre the channel of the matching scale responds
    # more
    conv = ScanConv2d(1, 2, 3, num_scales=2, padding=1)
    orders = ref.basis_orders(2)
    with torch.no_grad():
        conv.log_sigma.copy_(torch.tensor([math.log(0.5), math.log(1.0)]))
        conv.coeff.zero_()
        conv.coeff[:, 0, orders.index((2, 0))] = -1.0
        conv.coeff[:, 0, orders.index((0, 2))] = -1.0
        conv.scale_logits.copy_(torch.tensor([[20.0, 0.0], [0.0, 20.0]]))
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(48.0), indexing="ij")
    image = torch.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / (2 * 0.5 ** 2)) \
        + torch.exp(-((xx - 34) ** 2 + (yy - 12) ** 2) / (2 * 2.0 ** 2))
    with torch.no_grad():
        y = conv(image[None, None])[0]
    fine, coarse = y[:, 12, 12], y[:, 12, 34]
    assert fine[0] > 1.5 * fine[1] and coarse[1] > 1.5 * coarse[0], (fine, coarse)
