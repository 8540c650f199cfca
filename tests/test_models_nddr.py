"""nddr_vgg16: DeepLab-LargeFOV geometry (output stride 8, 321 -> 41), outputs and their normalisation, NDDR
fusion (identity init keeps the tasks apart), torchvision VGG-16 weights in both branches, ONNX export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from pyvision_fast.models import create_model, list_models, load_weights

SMALL = dict(width=0.125, img_size=65)


def test_registered_and_shapes():
    assert "nddr_vgg16" in list_models()
    torch.manual_seed(0)
    m = create_model("nddr_vgg16", width=0.125)
    assert m.tasks == ("seg", "normal") and m.default_input_size == (3, 321, 321)
    assert [n.channels for n in m.nddr] == [8, 16, 32, 64, 64] and m.branches["seg"].fc6.out_channels == 128
    assert m.branches["seg"].fc6.dilation == (12, 12) and m.branches["seg"].features[24].dilation == (2, 2)
    x = torch.randn(1, 3, 321, 321)
    m.eval()
    with torch.no_grad():
        logits = m.forward_logits(x)
        out = m(x)
    assert logits["seg"].shape == (1, 40, 41, 41) and logits["normal"].shape == (1, 3, 41, 41)
    assert out["seg"].shape == (1, 40, 321, 321) and out["normal"].shape == (1, 3, 321, 321)
    norms = out["normal"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    m.train()
    raw = m(torch.randn(2, 3, 48, 64))["normal"]
    assert raw.shape == (2, 3, 48, 64) and not torch.allclose(raw.norm(dim=1), torch.ones(2, 48, 64))


def test_tasks_and_bad_arguments():
    m = create_model("nddr_vgg16", width=0.125, num_classes=13, tasks="seg,depth,normal")
    assert m.tasks == ("seg", "depth", "normal") and m.nddr[0].num_tasks == 3
    out = m.eval()(torch.randn(1, 3, 33, 33))
    assert {k: v.shape[1] for k, v in out.items()} == {"seg": 13, "depth": 1, "normal": 3}
    with pytest.raises(ValueError, match="unknown task"):
        create_model("nddr_vgg16", tasks=("seg", "edges"))
    with pytest.raises(ValueError, match="at least two tasks"):
        create_model("nddr_vgg16", tasks=("seg",))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m(torch.randn(1, 1, 33, 33))


def test_identity_nddr_keeps_tasks_apart_and_fusion_mixes_them():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 40, 40)
    for init, separate in (((1.0, 0.0), True), ((0.9, 0.1), False)):
        m = create_model("nddr_vgg16", nddr_init=init, **SMALL).eval()
        with torch.no_grad():
            before = m(x)["seg"]
            for p in m.branches["normal"].parameters():  # change only the other task's branch
                p.add_(torch.randn_like(p) * 0.1)
            after = m(x)["seg"]
        assert torch.equal(before, after) == separate


def test_torchvision_vgg16_weights_load_into_both_branches(tmp_path):
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16()
    m = create_model("nddr_vgg16")
    full = m.adapt_state_dict(vgg.state_dict())  # the whole file's keys: the classifier is dropped
    assert set(full) == set(m.state_dict())
    path = tmp_path / "vgg16.pth"  # the file without fc6/fc7's 120M parameters, to keep the test light
    light = {k: v for k, v in vgg.state_dict().items() if not k.startswith(("classifier.0", "classifier.3"))}
    torch.save(light, path)
    fc6_before = m.branches["seg"].fc6.weight.clone()
    load_weights(m, path)
    for t in ("seg", "normal"):
        for i in (0, 14, 28):
            assert torch.equal(m.branches[t].features[i].weight, vgg.features[i].weight)
            assert torch.equal(m.branches[t].features[i].bias, vgg.features[i].bias)
    assert torch.equal(m.branches["seg"].fc6.weight, fc6_before)
    bn = torchvision.models.vgg11_bn().state_dict()
    with pytest.raises(ValueError, match="not a torchvision VGG-16"):
        m.adapt_state_dict(bn)
    small = create_model("nddr_vgg16", width=0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(small, path)


def test_export_standard_operators_dynamic_batch(tmp_path):
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import export_model, run_onnxruntime
    from pyvision_fast.models import save_safetensors

    torch.manual_seed(0)
    src = create_model("nddr_vgg16", **SMALL)
    with torch.no_grad():  # non-trivial BN statistics
        for layer in src.nddr:
            for bn in layer.norms:
                bn.running_mean.uniform_(-0.1, 0.1)
                bn.running_var.uniform_(0.5, 2.0)
    weights = save_safetensors(src.state_dict(), tmp_path / "w.safetensors")
    report = export_model("nddr_vgg16", tmp_path / "nddr.onnx", checkpoint=weights, model_args=SMALL)
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert not any(t.startswith("pvf") for t in report.op_types)
    assert report.max_abs_diff < 1e-4
    x = torch.rand(3, 3, 65, 65)
    seg, normal = run_onnxruntime(report.path, [x])
    with torch.no_grad():
        expected = src.eval()(x)
    np.testing.assert_allclose(seg, expected["seg"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(normal, expected["normal"].numpy(), rtol=1e-4, atol=1e-4)
