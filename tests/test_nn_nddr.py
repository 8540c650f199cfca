"""NDDR layer: equal to the official concat + 1x1 conv formulation (float64, train and eval mode, T = 2 and
3), gradcheck, the initialisations, bad inputs, ONNX export of standard operators."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyvision_fast.nn.nddr import NDDR, NDDRConcat, nddr_init_weight, parse_nddr_init


def _pair(t, c, init=(0.9, 0.1), dtype=torch.float64):
    torch.manual_seed(0)
    ref = NDDRConcat(t, c, init=init).to(dtype)
    with torch.no_grad():  # a generic weight and BN affine, not the structured initialisation
        for layer in ref.layers:
            layer[0].weight.normal_()
            layer[1].weight.uniform_(0.5, 1.5)
            layer[1].bias.normal_()
    return ref, NDDR.from_concat(ref)


@pytest.mark.parametrize("t", [2, 3])
def test_equals_concat_formulation_in_train_and_eval(t):
    ref, ours = _pair(t, 5)
    xs = [torch.randn(3, 5, 4, 6, dtype=torch.float64) for _ in range(t)]
    for mode in ("train", "eval"):
        getattr(ref, mode)(), getattr(ours, mode)()
        for a, b in zip(ref(*xs), ours(*xs)):
            assert b.shape == (3, 5, 4, 6) and b.is_contiguous()
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    # the running statistics followed the same updates
    for tt in range(t):
        torch.testing.assert_close(ours.norms[tt].running_mean, ref.layers[tt][1].running_mean)
        torch.testing.assert_close(ours.norms[tt].running_var, ref.layers[tt][1].running_var)
    # a list works as well as separate arguments
    for a, b in zip(ours(xs), ours(*xs)):
        torch.testing.assert_close(a, b)


def test_gradients_equal_and_gradcheck():
    ref, ours = _pair(2, 3)
    xs = [torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    g = [torch.randn(2, 3, 3, 2, dtype=torch.float64) for _ in range(2)]
    out_ref = ref(*xs)
    grads_ref = torch.autograd.grad(out_ref, [*xs, *[l[0].weight for l in ref.layers]], g)
    out = ours(*xs)
    grads = torch.autograd.grad(out, [*xs, ours.weight], g)
    torch.testing.assert_close(grads[0], grads_ref[0])
    torch.testing.assert_close(grads[1], grads_ref[1])
    torch.testing.assert_close(grads[2], torch.stack([w[:, :, 0, 0] for w in grads_ref[2:]]))
    ours.eval()  # gradcheck of the eval-mode layer (train-mode BN stats make it a different but smooth map)
    w = ours.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, w: _mix_eval(ours, a, b, w), (*xs, w))


def _mix_eval(layer, a, b, w):
    from pyvision_fast.nn.nddr import nddr_mix

    return tuple(F.relu(bn(y)) for bn, y in zip(layer.norms, nddr_mix([a, b], w)))


def test_identity_init_with_identity_statistics_is_identity():
    layer = NDDR(2, 4, init=(1, 0)).double().eval()  # running mean 0, var 1: BN is x / sqrt(1 + eps)
    xs = [torch.rand(2, 4, 3, 3, dtype=torch.float64) for _ in range(2)]
    for x, y in zip(xs, layer(*xs)):
        torch.testing.assert_close(y, x / (1 + 1e-5) ** 0.5)


def test_initialisations():
    w = nddr_init_weight(2, 3, (0.9, 0.1))
    assert w.shape == (2, 3, 6)
    torch.testing.assert_close(w[0], torch.cat([0.9 * torch.eye(3), 0.1 * torch.eye(3)], 1))
    torch.testing.assert_close(w[1], torch.cat([0.1 * torch.eye(3), 0.9 * torch.eye(3)], 1))
    w3 = nddr_init_weight(3, 2, "0.5-0.25")
    assert torch.equal(w3[2][:, 4:], 0.5 * torch.eye(2)) and torch.equal(w3[2][:, :2], 0.25 * torch.eye(2))
    xav = nddr_init_weight(2, 64, "xavier")
    bound = (6 / (128 + 64)) ** 0.5
    assert xav.abs().max() <= bound and xav.abs().max() > 0.9 * bound and abs(float(xav.mean())) < 0.01
    assert parse_nddr_init("0,1") == (0.0, 1.0) and parse_nddr_init([1, 0]) == (1.0, 0.0)
    layer = NDDR(2, 8)
    bn = layer.norms[0]
    assert (bn.momentum, bn.eps) == (0.05, 1e-5) and torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    for bad in ("kaiming", "1,2,3", (1.0,)):
        with pytest.raises(ValueError, match="NDDR init"):
            parse_nddr_init(bad)


def test_state_dict_round_trip_with_concat_layout():
    ref, ours = _pair(2, 4, dtype=torch.float32)
    back = NDDRConcat(2, 4)
    back.load_state_dict(ours.concat_state_dict())
    xs = [torch.randn(2, 4, 3, 3) for _ in range(2)]
    for a, b in zip(back.eval()(*xs), ref.eval()(*xs)):
        torch.testing.assert_close(a, b)


def test_bad_inputs():
    layer = NDDR(2, 4)
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="expected 2 task features, got 1"):
        layer(x)
    with pytest.raises(ValueError, match="feature 1 has 5 channels"):
        layer(x, torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="all must match"):
        layer(x, torch.randn(2, 4, 3, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        layer(x, torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match=">= 1"):
        NDDR(0, 4)


def test_exports_with_standard_operators(tmp_path):
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import to_onnx

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.nddr = NDDR(2, 4)

        def forward(self, a, b):
            return self.nddr(a, b)

    torch.manual_seed(0)
    m = Wrap().eval()
    with torch.no_grad():
        m.nddr.weight.normal_()
    a, b = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    report = to_onnx(m, (a, b), tmp_path / "nddr.onnx", dynamic_batch=True)
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff < 1e-5
    assert not any(t.startswith("pvf") for t in report.op_types)
