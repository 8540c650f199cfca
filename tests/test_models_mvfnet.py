"""MVFNet models: parameter counts, torchvision layout, the TSN head against a plain torchvision ResNet, the
MVF blocks against the official formulation, ImageNet and official-checkpoint loading, ONNX export."""
from __future__ import annotations

import pytest
import torch
import torchvision

from benchmarks.models_mvfnet import OfficialMVF, official_formulation
from pyvision_fast.models import create_model, list_models, load_weights, save_safetensors
from pyvision_fast.models.mvfnet import MVFNet, convert_official_checkpoint, load_imagenet_resnet
from pyvision_fast.nn import MVF

TINY = dict(layers=(1, 1, 1, 1), num_segments=4)
NARROW = dict(TINY, width=16)   # layer1..4 planes 16, 32, 64, 128: 0.5M parameters


def tiny(**kwargs) -> MVFNet:
    torch.manual_seed(0)
    return create_model("mvfnet_r50", **{**TINY, "num_classes": 5, **kwargs})


def test_registered_and_parameter_counts():
    assert {"mvfnet_r50", "mvfnet_r101"} <= set(list_models("mvfnet_*"))
    r50 = create_model("mvfnet_r50")
    n50 = sum(p.numel() for p in r50.parameters())
    # torchvision's ResNet-50 with a 400-way fc, plus 11 * C_fused per MVF (three 3-tap depthwise kernels and
    # BatchNorm's weight and bias): C_fused = 64, 5 x 128 in layer3 and 128, 2 x 256 in layer4.
    trunk = sum(p.numel() for p in torchvision.models.resnet50(num_classes=400).parameters())
    assert trunk == 24_327_632
    assert n50 == trunk + 11 * (64 + 5 * 128 + 128 + 2 * 256) == 24_342_416  # the paper's 24.34M
    assert r50.num_mvf == 9 and r50.num_segments == 8 and r50.fc.out_features == 400
    assert isinstance(r50.dropout, torch.nn.Dropout) and r50.dropout.p == 0.5
    r101 = create_model("mvfnet_r101", num_classes=400)
    trunk101 = sum(p.numel() for p in torchvision.models.resnet101(num_classes=400).parameters())
    assert sum(p.numel() for p in r101.parameters()) == trunk101 + 11 * (64 + 22 * 128 + 128 + 2 * 256)
    assert r101.num_mvf == 26
    # MVF sits on conv1 of every block of layer3 and layer4 only, with alpha 1/8 of the block's input channels
    wrapped = {name: m for name, m in r50.named_modules() if isinstance(m, MVF)}
    assert sorted(wrapped) == ([f"layer3.{i}.conv1" for i in range(6)]
                               + [f"layer4.{i}.conv1" for i in range(3)])
    assert wrapped["layer3.0.conv1"].num_shift_channel == 512 // 8
    assert wrapped["layer4.1.conv1"].num_shift_channel == 2048 // 8
    assert all(m.mode == "THW" and m.use_hs for m in wrapped.values())
    fc = create_model("mvfnet_r50", num_classes=400).fc
    assert 0.009 < float(fc.weight.detach().std()) < 0.011 and float(fc.bias.detach().abs().max()) == 0


def test_keys_are_torchvision_with_mvf_inside_conv1():
    model = create_model("mvfnet_r50")
    keys = set(model.state_dict())
    tv = set(torchvision.models.resnet50().state_dict())
    renamed = {k.replace("conv1.weight", "conv1.net.weight") if k.startswith(("layer3.", "layer4.")) else k
               for k in tv}
    mvf_keys = keys - renamed
    assert renamed <= keys
    assert {k.split("conv1.", 1)[1] for k in mvf_keys} == {
        "shift_conv.weight", "h_conv.weight", "w_conv.weight", "bn.weight", "bn.bias", "bn.running_mean",
        "bn.running_var", "bn.num_batches_tracked"}
    assert model.state_dict()["layer3.0.conv1.shift_conv.weight"].shape == (64, 1, 3, 1, 1)


def test_alpha_zero_is_a_tsn_resnet_averaging_frame_logits():
    """With alpha 0 the model is torchvision's ResNet applied per frame, logits averaged over T."""
    model = tiny(alpha=0.0).eval()
    ref = torchvision.models.resnet50(num_classes=5)
    ref.layer1, ref.layer2, ref.layer3, ref.layer4 = (torchvision.models.resnet.ResNet(
        torchvision.models.resnet.Bottleneck, [1, 1, 1, 1]).get_submodule(f"layer{i}") for i in range(1, 5))
    torch.manual_seed(1)
    for p in ref.parameters():
        torch.nn.init.normal_(p, 0, 0.05)
    load_imagenet_resnet(model, ref.state_dict())
    model.fc.load_state_dict(ref.fc.state_dict())
    ref.eval()
    x = torch.randn(2, 3, 4, 32, 32)
    frames = x.permute(0, 2, 1, 3, 4).reshape(8, 3, 32, 32)
    with torch.no_grad():
        want = ref(frames).view(2, 4, 5).mean(1)
        assert torch.allclose(model(x), want, atol=1e-5)
        assert torch.allclose(model(frames), want, atol=1e-5)  # the (B*T, 3, H, W) layout


@pytest.mark.parametrize("training", [False, True])
def test_mvf_blocks_match_the_official_formulation(training):
    model = tiny(width=16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MVF):
                m.bn.running_mean.uniform_(-0.3, 0.3)
                m.bn.running_var.uniform_(0.5, 2.0)
    model = model.double()
    peer = official_formulation(model)
    assert sum(isinstance(m, OfficialMVF) for m in peer.modules()) == model.num_mvf
    model.train(training)
    peer.train(training)
    model.dropout.p = peer.dropout.p = 0.0
    x = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    got, want = model(x), peer(x)
    assert torch.allclose(got, want, atol=1e-10)
    got.square().sum().backward()
    want.square().sum().backward()
    peer_params = dict(peer.named_parameters())
    assert set(peer_params) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, peer_params[name].grad, atol=1e-9), name


def test_bad_inputs():
    model = tiny(width=16)
    with pytest.raises(ValueError, match="T == num_segments=4"):
        model(torch.randn(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of num_segments=4"):
        model(torch.randn(6, 3, 32, 32))
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="layers must be"):
        MVFNet(layers=(1, 1, 1))
    with pytest.raises(ValueError, match="alpha"):
        MVFNet(alpha=1.5)
    with pytest.raises(ValueError, match="width must be a positive multiple of 8"):
        MVFNet(width=12)


def test_width_scales_the_stages():
    model = tiny(width=16)
    outs = [model.get_submodule(f"layer{i}")[0].conv3.out_channels for i in range(1, 5)]
    assert outs == [64, 128, 256, 512]
    assert model.conv1.out_channels == 64 and model.fc.in_features == 512
    assert model.get_submodule("layer3.0.conv1").num_shift_channel == 128 // 8
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)


def test_imagenet_weights_load_strictly_and_skip_fc(tmp_path):
    model = create_model("mvfnet_r50", num_classes=400)
    mvf_before = model.get_submodule("layer3.0.conv1").shift_conv.weight.detach().clone()
    fc_before = model.fc.weight.detach().clone()
    torch.manual_seed(3)
    tv = torchvision.models.resnet50()  # randomly initialised torchvision weights, 1000-way fc
    sd = tv.state_dict()
    load_imagenet_resnet(model, sd)
    own = model.state_dict()
    assert torch.equal(own["layer3.2.conv1.net.weight"], sd["layer3.2.conv1.weight"])
    assert torch.equal(own["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert torch.equal(own["layer4.0.downsample.1.running_var"], sd["layer4.0.downsample.1.running_var"])
    assert torch.equal(own["fc.weight"], fc_before)
    assert torch.equal(model.get_submodule("layer3.0.conv1").shift_conv.weight, mvf_before)
    # through a file and load_weights (adapt_state_dict), also when num_classes is 1000
    path = save_safetensors(sd, tmp_path / "resnet50.safetensors")
    m1000 = create_model("mvfnet_r50", num_classes=1000)
    load_weights(m1000, path)
    assert torch.equal(m1000.state_dict()["layer3.0.conv1.net.weight"], sd["layer3.0.conv1.weight"])
    assert not torch.equal(m1000.fc.weight, sd["fc.weight"])
    torch.save(sd, tmp_path / "resnet50.pth")
    load_imagenet_resnet(tiny(layers=(3, 4, 6, 3)), tmp_path / "resnet50.pth")
    # strict for the ResNet part: a missing tensor, a ResNet-101 or a ResNet-18 is refused
    partial = dict(sd)
    partial.pop("layer2.1.bn2.weight")
    with pytest.raises(ValueError, match="missing.*layer2.1.bn2.weight"):
        load_imagenet_resnet(model, partial)
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['layer3\.1\d"):
        load_imagenet_resnet(model, torchvision.models.resnet101().state_dict())
    with pytest.raises(ValueError, match="do not fit"):
        load_imagenet_resnet(model, torchvision.models.resnet18().state_dict())


def _official_state_dict(model: MVFNet, head: str = "new_fc") -> dict:
    """A synthetic official checkpoint: ``model``'s keys and shapes under the official prefixes (mmaction
    ``backbone.*``, ``cls_head.<head>.*``) with fresh random values. The caller pins the official names that
    matter (read from whwu95/MVFNet: ``MVF.net``/``shift_conv``/``h_conv``/``w_conv``/``bn``, the head's
    ``new_fc``)."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            new = torch.randn(value.shape, generator=g)
        else:
            new = torch.full_like(value, 3)
        if key.startswith("fc."):
            out[f"cls_head.{head}.{key[3:]}"] = new
        else:
            out[f"backbone.{key}"] = new
    return out


def test_official_checkpoint_converts(tmp_path):
    model = tiny(width=16)
    official = _official_state_dict(model)
    assert "backbone.layer3.0.conv1.net.weight" in official
    assert "backbone.layer4.0.conv1.w_conv.weight" in official and "cls_head.new_fc.bias" in official
    converted = convert_official_checkpoint(official)
    model.load_state_dict(converted, strict=True)
    assert torch.equal(model.get_submodule("layer3.0.conv1").h_conv.weight,
                       official["backbone.layer3.0.conv1.h_conv.weight"])
    assert torch.equal(model.fc.bias, official["cls_head.new_fc.bias"])
    # a training checkpoint as mmaction saves it ({"meta", "state_dict", "optimizer"}), through load_weights
    torch.save({"meta": {"epoch": 150}, "state_dict": _official_state_dict(model, "fc_cls")},
               tmp_path / "epoch_150.pth")
    other = load_weights(tiny(width=16), tmp_path / "epoch_150.pth")
    assert torch.equal(other.get_submodule("layer4.0.conv1").bn.running_var,
                       _official_state_dict(model)["backbone.layer4.0.conv1.bn.running_var"])
    assert set(convert_official_checkpoint(tmp_path / "epoch_150.pth")) == set(model.state_dict())
    with pytest.raises(ValueError, match="unexpected key 'cls_head.fc.weight'"):
        convert_official_checkpoint({"backbone.conv1.weight": torch.zeros(1),
                                     "cls_head.fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not an MVFNet checkpoint"):
        convert_official_checkpoint({"cls_head.new_fc.weight": torch.zeros(1)})


def test_onnx_export_standard_ops_dynamic_batch(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from pyvision_fast.export import export_model

    args = dict(NARROW, num_classes=7)
    model = tiny(**args)
    with torch.no_grad():  # trained-looking BatchNorm statistics in the MVF modules
        for m in model.modules():
            if isinstance(m, MVF):
                m.bn.running_mean.uniform_(-0.3, 0.3)
                m.bn.running_var.uniform_(0.5, 2.0)
    weights = save_safetensors(model.state_dict(), tmp_path / "tiny.safetensors")
    report = export_model("mvfnet_r50", tmp_path / "mvfnet.onnx", model_args=args, checkpoint=weights,
                          input_shape=(2, 3, 4, 64, 64))
    assert report.tensorrt_compatible, report
    assert report.max_abs_diff < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "mvfnet.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = torch.randn(3, 3, 4, 64, 64)  # another batch than the export's
    got = sess.run(None, {name: x.numpy()})[0]
    assert got.shape == (3, 7)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert create_model("mvfnet_r50").default_input_size == (3, 8, 224, 224)
