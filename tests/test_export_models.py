"""Registry models to ONNX of standard operators: the graph passes the TensorRT operator check, ONNX Runtime
agrees with PyTorch, the batch dimension stays dynamic."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from pyvision_fast.export import export_model, run_onnxruntime  # noqa: E402
from pyvision_fast.export.models import example_input_shape, inference_module  # noqa: E402
from pyvision_fast.models import create_model, save_safetensors  # noqa: E402

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)


@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_vit_exports_with_its_weights(tmp_path, global_pool):
    torch.manual_seed(0)
    src = create_model("vit_tiny_patch16_224", global_pool=global_pool, **TINY_VIT)
    weights = save_safetensors(src.state_dict(), tmp_path / "w.safetensors")
    report = export_model("vit_tiny_patch16_224", tmp_path / "vit.onnx", checkpoint=weights,
                          model_args=dict(global_pool=global_pool, **TINY_VIT))
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff < 1e-4
    assert "Softmax" in report.op_types and not any(t.startswith("pvf") for t in report.op_types)
    x = torch.rand(3, 3, 32, 32)  # another batch size than the export's example
    (onnx_out,) = run_onnxruntime(report.path, [x])
    with torch.no_grad():
        expected = src.eval()(x).numpy()
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


def test_example_input_comes_from_the_model():
    m = create_model("vit_tiny_patch16_224", img_size=(32, 64), patch_size=8, depth=1)
    assert example_input_shape(inference_module(m), 4) == (4, 3, 32, 64)
    with pytest.raises(ValueError, match="cannot tell its input size"):
        example_input_shape(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="unknown model"):
        export_model("no_such_model", "x.onnx")
