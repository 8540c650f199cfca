"""pyvision_fast.export: ONNX export with standard operators only, checks, and TensorRT engine building.

    from pyvision_fast.export import to_onnx, build_engine
    report = to_onnx(model, (x,), "model.onnx")     # checker + TensorRT op check + ONNX Runtime diff
    print(report)
    build_engine("model.onnx", "model.plan", fp16=True, max_shapes={"x": (32, 3, 224, 224)})
"""
from .models import export_model
from .onnx_export import ExportReport, run_onnxruntime, to_onnx, translation_table
from .tensorrt_engine import INSTALL_HINT, build_engine, tensorrt_available
from .trt_support import TENSORRT_ONNX_OPS, unsupported_nodes

__all__ = [
    "ExportReport",
    "INSTALL_HINT",
    "TENSORRT_ONNX_OPS",
    "build_engine",
    "export_model",
    "run_onnxruntime",
    "tensorrt_available",
    "to_onnx",
    "translation_table",
    "unsupported_nodes",
]
