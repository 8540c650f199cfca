"""TensorRT engines from the exported ONNX models, through TensorRT's Python API (written against TensorRT 10; 8.6
works for building), and ``TensorRTModule`` to run one with torch CUDA tensors.

    build_engine("vit.onnx", "vit.plan", fp16=True, max_shapes={"x": (32, 3, 224, 224)})
    # writes vit.plan, vit.plan.json (inputs/outputs, profile shapes, precision) and reuses vit.timing.cache
    y = TensorRTModule("vit.plan")(x.cuda())

Without TensorRT every entry point raises ``RuntimeError`` saying what to install; the engine's metadata
(``read_engine_metadata``, ``pvf engine-info``) reads without it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

Shape = Sequence[int]
PathLike = Union[str, Path]

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


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeError(INSTALL_HINT) from exc
    return trt


def metadata_path(engine_path: PathLike) -> Path:
    """Where ``build_engine`` writes an engine's metadata: ``<engine>.json`` beside it."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def profile_shapes(inputs: Mapping[str, Shape], min_shapes: Optional[Mapping[str, Shape]] = None,
                   opt_shapes: Optional[Mapping[str, Shape]] = None,
                   max_shapes: Optional[Mapping[str, Shape]] = None) -> dict[str, dict[str, list[int]]]:
    """The optimisation profile of every input whose shape (``inputs``: name -> shape, -1 for a dynamic
    dimension) is dynamic: {name: {"min", "opt", "max"}}; opt defaults to max, min to opt. Raises ``ValueError``
    naming an input without a max shape, a shape of another rank, a shape that contradicts a static dimension,
    or min > opt > max."""
    out = {}
    for name, shape in inputs.items():
        shape = [int(d) for d in shape]
        if -1 not in shape:
            continue
        if not max_shapes or name not in max_shapes:
            raise ValueError(f"input {name!r} has dynamic dimensions {shape}: give its max_shapes entry "
                             f"(and min/opt)")
        mx = [int(d) for d in max_shapes[name]]
        op = [int(d) for d in (opt_shapes or {}).get(name, mx)]
        mn = [int(d) for d in (min_shapes or {}).get(name, op)]
        for label, s in (("min", mn), ("opt", op), ("max", mx)):
            if len(s) != len(shape):
                raise ValueError(f"input {name!r}: {label} shape {s} has rank {len(s)}, the input {len(shape)}")
            bad = [i for i, (d, fixed) in enumerate(zip(s, shape)) if fixed != -1 and d != fixed]
            if bad:
                raise ValueError(f"input {name!r}: {label} shape {s} differs from the static dimension(s) "
                                 f"{[shape[i] for i in bad]} of {shape}")
        if any(a > b for a, b in zip(mn, op)) or any(a > b for a, b in zip(op, mx)):
            raise ValueError(f"input {name!r}: need min <= opt <= max, got {mn}, {op}, {mx}")
        out[name] = {"min": mn, "opt": op, "max": mx}
    return out


def _has_qdq(onnx_path: PathLike) -> bool:
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path)).graph.node)


def build_engine(onnx_path: PathLike, engine_path: PathLike, fp16: bool = False, int8: Optional[bool] = None,
                 workspace: int = 1 << 30, min_shapes: Optional[Mapping[str, Shape]] = None,
                 opt_shapes: Optional[Mapping[str, Shape]] = None,
                 max_shapes: Optional[Mapping[str, Shape]] = None,
                 timing_cache: Union[PathLike, None, bool] = True) -> Path:
    """Parses ``onnx_path`` with TensorRT's ONNX parser and writes a serialized engine to ``engine_path``, with its
    metadata beside it (``metadata_path``).

    Args:
        fp16: allow half-precision kernels.
        int8: allow INT8 kernels; None (default) = when the graph holds Q/DQ nodes (``quantize_int8``'s
            explicit quantization, whose scales TensorRT takes from the graph: no calibrator).
        workspace: workspace memory pool limit in bytes.
        min_shapes / opt_shapes / max_shapes: per-input shapes of the optimisation profile; every input with a
            dynamic dimension needs its max shape (``{"x": (32, 3, 224, 224)}``); opt defaults to max, min to opt.
        timing_cache: a file of kernel timings read before and written after the build, so rebuilding (another
            precision, another profile) skips the measurements already made; True = ``<engine stem>.timing.cache``
            beside the engine, None/False = none.

    Raises ``RuntimeError`` when TensorRT is missing (saying what to install) or when parsing/building fails
    (with the parser's messages), ``ValueError`` for profile shapes that do not fit the inputs.
    """
    trt = _tensorrt()
    engine_path = Path(engine_path)
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
    int8 = _has_qdq(onnx_path) if int8 is None else int8
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    profiles = profile_shapes(inputs, min_shapes, opt_shapes, max_shapes)
    if profiles:
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
    cache_file = (engine_path.with_name(engine_path.stem + ".timing.cache") if timing_cache is True
                  else Path(timing_cache) if timing_cache else None)
    if cache_file is not None:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache_file is not None:
        cache_file.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    outputs = {network.get_output(i).name: list(network.get_output(i).shape) for i in range(network.num_outputs)}
    metadata = {
        "onnx": str(onnx_path), "tensorrt": trt.__version__,
        "precision": [p for p, on in (("fp32", True), ("fp16", fp16), ("int8", int8)) if on],
        "inputs": {name: {"shape": list(shape), "dtype": str(network.get_input(i).dtype).split(".")[-1],
                          **profiles.get(name, {})}
                   for i, (name, shape) in enumerate(inputs.items())},
        "outputs": {name: {"shape": shape} for name, shape in outputs.items()},
        "workspace_bytes": int(workspace), "timing_cache": str(cache_file) if cache_file else None,
    }
    metadata_path(engine_path).write_text(json.dumps(metadata, indent=2) + "\n")
    return engine_path


def read_engine_metadata(engine_path: PathLike) -> dict[str, Any]:
    """The metadata ``build_engine`` wrote beside ``engine_path`` (no TensorRT needed)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"engine file not found: {engine_path}")
    meta = metadata_path(engine_path)
    if not meta.is_file():
        raise FileNotFoundError(f"{engine_path} has no metadata file {meta.name} beside it (engines built by "
                                f"pyvision_fast.export.build_engine have one)")
    return json.loads(meta.read_text())


_TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "INT32": "int32",
                 "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}


class TensorRTModule:
    """Runs a serialized TensorRT engine on torch CUDA tensors (TensorRT 10's name-based I/O API).

    ``module(*inputs)`` takes the inputs in the engine's input order (CUDA tensors of the engine's dtypes and of
    shapes inside its profile), runs the engine on torch's current CUDA stream and returns the outputs (one tensor,
    or a tuple) as new CUDA tensors."""

    def __init__(self, engine_path: PathLike, device: Optional[int] = None):
        trt = _tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("TensorRTModule needs a CUDA device; torch sees none")
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path} (built by another TensorRT version "
                               f"or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _dtype(self, name: str):
        import torch

        key = str(self.engine.get_tensor_dtype(name)).split(".")[-1]
        if key not in _TORCH_DTYPES:
            raise TypeError(f"engine tensor {name!r} has dtype {key}, which this module does not map to torch")
        return getattr(torch, _TORCH_DTYPES[key])

    def __call__(self, *inputs):
        import torch

        if len(inputs) != len(self.input_names):
            raise ValueError(f"the engine takes {len(self.input_names)} input(s) {self.input_names}, got "
                             f"{len(inputs)}")
        keep = []
        for name, x in zip(self.input_names, inputs):
            if not isinstance(x, torch.Tensor) or x.device.type != "cuda":
                raise TypeError(f"input {name!r} must be a CUDA tensor, got "
                                f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.device}")
            if x.dtype != self._dtype(name):
                raise TypeError(f"input {name!r} must be {self._dtype(name)}, got {x.dtype}")
            x = x.contiguous()
            keep.append(x)
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise ValueError(f"input {name!r} of shape {tuple(x.shape)} is outside the engine's profile")
            self.context.set_tensor_address(name, x.data_ptr())
        outputs = []
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtype(name),
                              device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
