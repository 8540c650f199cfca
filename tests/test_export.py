"""The export layer itself: reports, the TensorRT operator check, and build_engine without TensorRT."""
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pyvision_fast import export
from pyvision_fast.nn import PointNetSetAbstraction


def _pointnet_stage():
    return PointNetSetAbstraction(npoint=16, radius=0.3, nsample=8, in_channels=0, mlp=(16, 32)).eval()


def test_pointnet_stage_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    model = _pointnet_stage()
    report = export.to_onnx(model, (torch.rand(2, 64, 3),), tmp_path / "sa.onnx")
    assert report.tensorrt_compatible
    assert report.max_abs_diff < 1e-5
    assert {"Loop", "TopK", "GatherElements", "Conv", "ReduceMax"} <= set(report.op_types)
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
    report = export.to_onnx(_pointnet_stage(), (torch.rand(2, 64, 3),), tmp_path / "sa.onnx")
    engine = export.build_engine(report.path, tmp_path / "sa.plan", max_shapes={"xyz": (4, 64, 3)},
                                 min_shapes={"xyz": (1, 64, 3)}, opt_shapes={"xyz": (2, 64, 3)})
    assert engine.stat().st_size > 0
