"""PointCAT's noise generator, perturbation normalisation, projection head and batched prototype search."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyvision_fast.models import create_model, list_models
from pyvision_fast.models.pointcat import (PointCATNoiseGenerator, ProjectionHead, perturb_points,
                                           scale_perturbation, search_feature_peaks)

# The official AutoEncoder's (normal_conv decoder) state_dict keys, in its order
# (shikiw/PointCAT:model/networks.py).
OFFICIAL_KEYS = (
    [f"ComMLP.conv{i}.{t}" for i in range(1, 7) for t in ("weight", "bias")]
    + [f"ComMLP.bn{i}.{t}" for i in range(1, 7)
       for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"{m}.{t}" for m in ("fc1",) for t in ("weight", "bias")]
    + [f"bn1.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"{m}.{t}" for m in ("fc1_1", "conv1_2", "conv1_3") for t in ("weight", "bias")]
    + [f"{m}.{t}" for m in ("bn1_1", "bn1_2", "bn1_3")
       for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
)


def _generator_params(n: int) -> int:
    """Parameters of the official generator for n points, layer by layer (weights + biases, BN scale +
    shift)."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]  # conv1 is 1x3 over 1 channel
    total = sum(cin * cout + cout + 2 * cout for cin, cout in convs)
    total += 1920 * 1024 + 1024 + 2 * 1024                  # fc1 + bn1
    total += 1024 * 8192 + 8192 + 2 * 8192                  # fc1_1 + bn1_1
    total += 64 * 64 + 64 + 2 * 64                          # conv1_2 + bn1_2
    out = 3 * n // 128
    total += 64 * out + out + 2 * out                       # conv1_3 + bn1_3
    return total


def test_generator_keys_and_parameter_count_match_the_official_module():
    assert "pointcat_noise_generator" in list_models()
    g = create_model("pointcat_noise_generator")
    assert list(g.state_dict()) == OFFICIAL_KEYS
    assert sum(p.numel() for p in g.parameters()) == _generator_params(1024) == 11_094_984
    assert g.conv1_3.out_channels == 24
    assert sum(p.numel() for p in PointCATNoiseGenerator(256).parameters()) == _generator_params(256)


def test_generator_layout_is_the_official_reshape():
    """Output (b, n, c) is the decoder's channel-major (3N/128, 128) map read as (3, N): value k of the flat
    map goes to coordinate k // N of point k % N."""
    torch.manual_seed(0)
    g = PointCATNoiseGenerator(128).eval()
    x = torch.rand(2, 128, 3) * 2 - 1
    out = g(x)
    assert out.shape == (2, 128, 3)
    latent = torch.relu(g.bn1(g.fc1(g.ComMLP(x))))
    feat = torch.relu(g.bn1_1(g.fc1_1(latent))).reshape(-1, 64, 128)
    flat = g.bn1_3(g.conv1_3(torch.relu(g.bn1_2(g.conv1_2(feat))))).reshape(2, -1)
    k = torch.arange(3 * 128)
    torch.testing.assert_close(out[:, k % 128, k // 128], flat)


def test_encoder_pools_the_four_widest_maps_to_1920():
    g = PointCATNoiseGenerator(128).eval()
    assert g.ComMLP(torch.rand(3, 128, 3)).shape == (3, 1920)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perturbation_norm_is_exactly_eps_sqrt_3n(dtype):
    torch.manual_seed(1)
    n = 1024
    scales = torch.tensor([1e-3, 1.0, 50.0, 1e4], dtype=dtype)[:, None, None]
    pert = torch.randn(4, n, 3, dtype=dtype) * scales
    scaled = scale_perturbation(pert, 0.04)
    norms = scaled.flatten(1).norm(dim=1)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    want = torch.full((4,), 0.04 * math.sqrt(3 * n), dtype=dtype)
    torch.testing.assert_close(norms, want, rtol=tol, atol=0)
    # the direction is kept
    unit = pert / pert.flatten(1).norm(dim=1)[:, None, None]
    torch.testing.assert_close(scaled / norms[:, None, None], unit)
    assert torch.equal(scale_perturbation(torch.zeros(1, 8, 3), 0.04), torch.zeros(1, 8, 3))


def test_perturb_points_clamps_after_scaling():
    torch.manual_seed(2)
    x = torch.rand(2, 256, 3) * 2 - 1
    pert = torch.randn(2, 256, 3)
    adv = perturb_points(x, pert, 0.04)
    assert adv.abs().max() <= 1.0
    unclamped = perturb_points(x, pert, 0.04, clamp=None)
    norms = (unclamped - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((2,), 0.04 * math.sqrt(768)))
    torch.testing.assert_close(adv, unclamped.clamp(-1, 1))


def test_generator_bad_inputs():
    with pytest.raises(ValueError, match="multiple of 128"):
        PointCATNoiseGenerator(1000)
    g = PointCATNoiseGenerator(128)
    with pytest.raises(ValueError, match="built for 128 points"):
        g(torch.rand(2, 256, 3))
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        g(torch.rand(2, 128, 6))
    with pytest.raises(ValueError, match="must have the shape"):
        perturb_points(torch.rand(2, 8, 3), torch.rand(2, 9, 3))


def test_projection_head_is_linear_bn_relu_linear():
    head = ProjectionHead(256)
    assert [k for k in head.state_dict() if not k.startswith("bn1.r") and "num_batches" not in k] == \
        ["l1.weight", "l1.bias", "bn1.weight", "bn1.bias", "l2.weight", "l2.bias"]
    assert sum(p.numel() for p in head.parameters()) == 2 * (256 * 256 + 256) + 2 * 256
    head.eval()
    x = torch.randn(5, 256)
    want = head.l2(torch.relu(head.bn1(head.l1(x))))
    torch.testing.assert_close(head(x), want)


class TinyClassifier(nn.Module):
    """A per-point MLP, max pool and BN: the (feature, logits) classifier interface in miniature."""

    num_features = 16

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, 16))
        self.bn = nn.BatchNorm1d(16)
        self.fc3 = nn.Linear(16, num_classes)

    def forward(self, points):
        feature = torch.relu(self.bn(self.mlp(points).amax(1)))
        return feature, self.fc3(feature)

    def get_classifier(self):
        return self.fc3

    def set_classifier(self, module):
        old, self.fc3 = self.fc3, module
        return old


def test_batched_prototype_search_equals_the_per_class_loop():
    torch.manual_seed(3)
    model = TinyClassifier(5).double()
    model.train()  # the search must put it in eval mode (BatchNorm per sample) and restore train mode
    model.bn.running_mean.uniform_(-0.1, 0.1)
    start = torch.rand(5, 64, 3, dtype=torch.float64) * 2 - 1
    clouds, feats = search_feature_peaks(model, start, iters=30, lr=0.005)
    assert model.training and model.bn.training
    for c in range(5):
        one_cloud, one_feat = search_feature_peaks(model, start[c:c + 1], labels=torch.tensor([c]), iters=30,
                                                   lr=0.005)
        torch.testing.assert_close(clouds[c:c + 1], one_cloud, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(feats[c:c + 1], one_feat, rtol=1e-9, atol=1e-12)
    assert not torch.equal(clouds, start)


def test_prototype_search_raises_each_class_margin_and_features_are_the_penultimate_layer():
    torch.manual_seed(4)
    model = TinyClassifier(4).eval()
    start = torch.rand(4, 128, 3) * 2 - 1
    labels = torch.arange(4)

    def margin(x):
        logits = model(x.clamp(-1, 1))[1]
        other = logits.masked_fill(torch.eye(4, dtype=torch.bool), float("-inf")).amax(1)
        return logits[labels, labels] - other

    with torch.no_grad():
        before = margin(start)
    clouds, feats = search_feature_peaks(model, start, iters=200, lr=0.01)
    with torch.no_grad():
        after = margin(clouds)
        torch.testing.assert_close(feats, model(clouds.clamp(-1, 1))[0])
    assert (after > before).all(), (before, after)


def test_batched_search_with_pointnet_equals_the_loop():
    """The real PointNet (with its input and feature transforms) in eval mode: clouds do not interact."""
    torch.manual_seed(5)
    model = create_model("pointnet", num_classes=3).double()
    start = torch.rand(3, 32, 3, dtype=torch.float64) * 2 - 1
    clouds, feats = search_feature_peaks(model, start, iters=2, lr=0.005)
    for c in range(3):
        one_cloud, one_feat = search_feature_peaks(model, start[c:c + 1], labels=torch.tensor([c]), iters=2)
        torch.testing.assert_close(clouds[c:c + 1], one_cloud, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(feats[c:c + 1], one_feat, rtol=1e-9, atol=1e-10)
