"""pyvision_fast.export: ONNX export with standard operators only, checks, and TensorRT engine building.

    from pyvision_fast.export import to_onnx, build_engine
    report = to_onnx(model, (x,), "model.onnx")     # checker + TensorRT op check + ONNX Runtime diff
    print(report)
    build_engine("model.onnx", "model.plan", fp16=True, max_shapes={"x": (32, 3, 224, 224)})
    export_model("vit_small_patch16_224", "vit.onnx", checkpoint="w.safetensors", precision="int8",
                 calib_dir="calib/")                # a registry model by name, float16 or Q/DQ INT8
"""
from .models import export_model
from .onnx_export import ExportReport, run_onnxruntime, to_onnx, translation_table
from .quantize import quantize_int8, to_float16
from .tensorrt_engine import (INSTALL_HINT, TensorRTModule, build_engine, read_engine_metadata,
                              tensorrt_available)
from .trt_support import TENSORRT_ONNX_OPS, unsupported_nodes

__all__ = [
    "ExportReport",
    "INSTALL_HINT",
    "TENSORRT_ONNX_OPS",
    "TensorRTModule",
    "build_engine",
    "export_model",
    "quantize_int8",
    "read_engine_metadata",
    "run_onnxruntime",
    "tensorrt_available",
    "to_float16",
    "to_onnx",
    "translation_table",
    "unsupported_nodes",
]
