"""The export layer itself: reports, the TensorRT operator check, and build_engine without TensorRT."""
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pyvision_fast import export, ops


class _PointNetSetAbstraction(torch.nn.Module):
    """A small PointNet++ set-abstraction stage: FPS, ball query, grouping, shared MLP, max-pool."""

    def __init__(self, npoint=16, radius=0.3, nsample=8, channels=(3, 16, 32)):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        layers = []
        for cin, cout in zip(channels[:-1], channels[1:]):
            layers += [torch.nn.Conv2d(cin, cout, 1), torch.nn.ReLU()]
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, xyz):
        centers, _ = ops.sample_farthest_points(xyz, K=self.npoint)
        _, idx, _ = ops.ball_query(centers, xyz, K=self.nsample, radius=self.radius, return_nn=False)
        idx = torch.where(idx < 0, idx[..., :1].clamp(min=0), idx)  # PointNet++ pads with the first neighbour
        grouped = ops.grouping_operation(xyz.transpose(1, 2).contiguous(), idx)  # (B, 3, npoint, nsample)
        grouped = grouped - centers.transpose(1, 2)[..., None]
        return centers, self.mlp(grouped).amax(-1)


def test_pointnet_stage_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = _PointNetSetAbstraction()
    report = export.to_onnx(model, (torch.rand(2, 64, 3),), tmp_path / "sa.onnx")
    assert report.tensorrt_compatible
    assert report.max_abs_diff < 1e-5
    assert {"Loop", "TopK", "GatherElements", "Conv"} <= set(report.op_types)
    assert "ONNX Runtime vs PyTorch" in str(report)
    model_proto = onnx.load(str(report.path))
    assert all(n.domain in ("", "ai.onnx") for n in model_proto.graph.node)


def test_tensorrt_check_flags_custom_domains_and_large_topk():
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    graph = helper.make_graph(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"]), helper.make_node("MyOp", ["v"], ["y"], domain="custom")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[k])
    problems = export.unsupported_nodes(helper.make_model(graph))
    assert any("K=5000" in p for p in problems)
    assert any("custom domain" in p for p in problems)
    ok = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert export.unsupported_nodes(helper.make_model(ok)) == []


@pytest.mark.skipif(export.tensorrt_available(), reason="checks the message given without TensorRT")
def test_build_engine_without_tensorrt_says_what_to_install(tmp_path):
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        export.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan")


@pytest.mark.cuda
def test_build_engine_with_tensorrt(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    torch.manual_seed(0)
    report = export.to_onnx(_PointNetSetAbstraction(), (torch.rand(2, 64, 3),), tmp_path / "sa.onnx")
    engine = export.build_engine(report.path, tmp_path / "sa.plan", max_shapes={"xyz": (4, 64, 3)},
                                 min_shapes={"xyz": (1, 64, 3)}, opt_shapes={"xyz": (2, 64, 3)})
    assert engine.stat().st_size > 0
