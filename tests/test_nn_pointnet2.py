"""PointNet++ layers: equal to the same computation written with the plain-PyTorch reference ops."""
import torch

from op_harness import assert_close, check_onnx
from pyvision_fast.nn import PointNetFeaturePropagation, PointNetSetAbstraction
from pyvision_fast.reference import pointcloud as ref


def _reference_sa(layer, xyz, features):
    idx_c = ref.sample_farthest_points_idx(xyz, None, None, layer.npoint)
    centres = torch.gather(xyz, 1, idx_c[..., None].expand(-1, -1, 3))
    _, idx = ref.ball_query_idx(centres, xyz, None, None, layer.nsample, layer.radius)
    idx = torch.where(idx < 0, idx[..., :1], idx)
    B, S, K = idx.shape
    flat = idx.reshape(B, S * K)
    g_xyz = ref.gather_columns(xyz.transpose(1, 2), flat).view(B, 3, S, K) - centres.transpose(1, 2)[..., None]
    g_feat = ref.gather_columns(features, flat).view(B, -1, S, K)
    return centres, layer.mlp(torch.cat([g_xyz, g_feat], 1)).amax(-1)


def test_set_abstraction_matches_reference_composition():
    torch.manual_seed(0)
    layer = PointNetSetAbstraction(npoint=32, radius=0.25, nsample=16, in_channels=6, mlp=(16, 32)).double().eval()
    xyz = torch.rand(2, 200, 3, dtype=torch.float64)
    feats = torch.randn(2, 6, 200, dtype=torch.float64)
    new_xyz, out = layer(xyz, feats)
    r_xyz, r_out = _reference_sa(layer, xyz, feats)
    assert_close(new_xyz, r_xyz)
    assert_close(out, r_out)
    assert out.shape == (2, 32, 32)


def test_group_all_and_gradients():
    layer = PointNetSetAbstraction(None, None, None, in_channels=4, mlp=(8,), group_all=True)
    xyz = torch.rand(2, 50, 3, requires_grad=True)
    feats = torch.randn(2, 4, 50, requires_grad=True)
    new_xyz, out = layer(xyz, feats)
    assert new_xyz.shape == (2, 1, 3) and out.shape == (2, 8, 1)
    out.sum().backward()
    assert xyz.grad is not None and feats.grad.abs().sum() > 0


def test_feature_propagation_matches_reference():
    torch.manual_seed(1)
    layer = PointNetFeaturePropagation(in_channels=5 + 7, mlp=(16,)).double().eval()
    xyz1, xyz2 = torch.rand(2, 120, 3, dtype=torch.float64), torch.rand(2, 30, 3, dtype=torch.float64)
    f1, f2 = torch.randn(2, 5, 120, dtype=torch.float64), torch.randn(2, 7, 30, dtype=torch.float64)
    d, i = ref.knn_points_idx(xyz1, xyz2, None, None, 3)
    w = 1.0 / (d.sqrt() + 1e-8)
    w = w / w.sum(-1, keepdim=True)
    expected = layer.mlp(torch.cat([f1, ref.three_interpolate(f2, i, w)], 1))
    assert_close(layer(xyz1, xyz2, f1, f2), expected)


def test_pointnet2_segmentation_head_exports(tmp_path):
    class TinyPointNet2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sa1 = PointNetSetAbstraction(32, 0.3, 8, 0, (16,))
            self.sa2 = PointNetSetAbstraction(None, None, None, 16, (32,), group_all=True)
            self.fp2 = PointNetFeaturePropagation(16 + 32, (16,))
            self.fp1 = PointNetFeaturePropagation(16, (8,))

        def forward(self, xyz):
            l1_xyz, l1 = self.sa1(xyz)
            l2_xyz, l2 = self.sa2(l1_xyz, l1)
            l1 = self.fp2(l1_xyz, l2_xyz, l1, l2)
            return self.fp1(xyz, l1_xyz, None, l1)

    torch.manual_seed(2)
    check_onnx(TinyPointNet2().eval(), (torch.rand(2, 96, 3),), tmp_path, atol=1e-4)
