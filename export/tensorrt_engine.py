"""TensorRT engine building from an exported ONNX model, through TensorRT's Python API (TensorRT 8.6+ / 10.x)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

Shape = Sequence[int]

INSTALL_HINT = (
    "TensorRT is not installed. On a machine with an NVIDIA GPU and driver: `pip install tensorrt` "
    "(or the tensorrt-cu12 / tensorrt-cu13 wheel matching your CUDA), then retry. The ONNX model itself "
    "needs no plugin: `pyvision_fast.export.to_onnx` already checked its operators."
)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def build_engine(onnx_path: Union[str, Path], engine_path: Union[str, Path], fp16: bool = False,
                 workspace: int = 1 << 30, min_shapes: Optional[Mapping[str, Shape]] = None,
                 opt_shapes: Optional[Mapping[str, Shape]] = None,
                 max_shapes: Optional[Mapping[str, Shape]] = None) -> Path:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and write a serialized engine to ``engine_path``.

    Args:
        fp16: allow half-precision kernels.
        workspace: workspace memory pool limit in bytes.
        min_shapes / opt_shapes / max_shapes: per-input shapes of the optimisation profile, required for
            inputs with dynamic dimensions (e.g. ``{"x": (1, 3, 224, 224)}``); opt defaults to max.

    Raises RuntimeError when TensorRT is missing (saying what to install) or when parsing/building fails
    (with the parser's messages).
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        if not max_shapes:
            names = ", ".join(t.name for t in dynamic)
            raise ValueError(f"inputs {names} have dynamic dimensions: give min_shapes/opt_shapes/max_shapes")
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            mx = tuple(max_shapes[tensor.name])
            mn = tuple((min_shapes or {}).get(tensor.name, mx))
            op = tuple((opt_shapes or {}).get(tensor.name, mx))
            profile.set_shape(tensor.name, mn, op, mx)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    return engine_path
