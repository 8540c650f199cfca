"""Reduced-precision ONNX: float16 conversion and static INT8 quantization to a Q/DQ graph, with the checks a
deployment needs (ONNX Runtime agreement, accuracy on a held-out image folder, latency).

    to_float16("vit.onnx", "vit.fp16.onnx")                      # float16 weights/compute, float32 inputs/outputs
    batches = image_batches("calib/", image_preprocess((3, 224, 224)), batch_size=8, limit=256)
    quantize_int8("vit.onnx", "vit.int8.onnx", batches)           # QuantizeLinear/DequantizeLinear pairs

Both use ONNX Runtime's own tools (``onnxruntime.transformers.float16``, ``onnxruntime.quantization``). The INT8
graph is what TensorRT 10 builds INT8 engines from: explicit Q/DQ, symmetric (zero point 0) activations and
weights, weights per output channel, only the compute-heavy operators quantized (Conv, MatMul, Gemm), normalisation
and softmax left in float. ONNX Runtime runs the same file on the CPU.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from pyvision_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

PathLike = Union[str, Path]

CALIBRATION_METHODS = ("entropy", "percentile", "minmax")
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def to_float16(onnx_path: PathLike, out_path: PathLike, keep_io_types: bool = True) -> Path:
    """Converts ``onnx_path`` to float16 at ``out_path`` (ONNX Runtime's converter); with ``keep_io_types`` the
    graph's inputs and outputs stay float32 (casts inside), so callers feed and read the same arrays as before."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=keep_io_types)
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    return out_path


def simplify(onnx_path: PathLike, out_path: PathLike) -> Path:
    """``onnx_path`` cleaned up by onnxslim (constant folding, dead nodes, shape and pattern fusion) at
    ``out_path`` (may be the same file). The caller checks the result against PyTorch (``export_module`` does)."""
    import onnx

    try:
        import onnxslim
    except ImportError as exc:
        raise ImportError("graph simplification needs onnxslim: pip install onnxslim (or pyvision_fast[export])") \
            from exc
    model = onnxslim.slim(onnx.load(str(onnx_path)))
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    return out_path


def image_preprocess(input_size: Sequence[int], mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, crop_pct: float = 0.875,
                     interpolation: str = "bicubic") -> Callable:
    """The evaluation transform of an image classifier whose input is ``input_size`` = (C, H, W): resize to
    H / ``crop_pct``, centre crop, [0, 1], normalise — timm's ``create_transform(is_training=False)``. Returns a
    function PIL image -> float32 (C, H, W) tensor."""
    from timm.data import create_transform

    c, h, w = (int(v) for v in input_size)
    if c != 3:
        raise ValueError(f"image_preprocess: RGB images give 3 channels, the model takes {c}")
    return create_transform((c, h, w), is_training=False, interpolation=interpolation, mean=tuple(mean),
                            std=tuple(std), crop_pct=crop_pct)


def image_batches(folder: PathLike, preprocess: Callable, batch_size: int = 8,
                  limit: Optional[int] = None) -> list[np.ndarray]:
    """The images under ``folder`` (any depth, sorted by path; at most ``limit``) through ``preprocess``, as
    float32 NCHW arrays of ``batch_size`` (the last one may be smaller)."""
    import torch

    from pyvision_fast.data.image_folder import IMG_EXTENSIONS, drop_undecodable
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder {str(folder)!r} does not exist")
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"no image ({', '.join(IMG_EXTENSIONS)}) under {str(folder)!r}")
    drop_undecodable(paths, "image_batches", folder, "error", workers=4)
    batches = []
    for start in range(0, len(paths), batch_size):
        tensors = []
        for p in paths[start:start + batch_size]:
            with Image.open(p) as im:
                tensors.append(preprocess(im.convert("RGB")))
        batches.append(torch.stack(tensors).numpy().astype(np.float32))
    return batches


def quantize_int8(onnx_path: PathLike, out_path: PathLike, calibration: Iterable[np.ndarray],
                  method: str = "entropy", per_channel: bool = True,
                  op_types: Sequence[str] = QUANTIZED_OPS) -> Path:
    """Static INT8 quantization of the single-input model ``onnx_path`` into a Q/DQ graph at ``out_path``.

    ``calibration``: input arrays (batches) in the model's preprocessing; the activation ranges are calibrated on
    them with ``method`` (``entropy``: KL-divergence thresholds; ``percentile``: 99.999th; ``minmax``).
    Activations and weights are symmetric int8 (TensorRT requires zero points of 0), weights per channel."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    model = onnx.load(str(onnx_path))
    inputs = [i.name for i in model.graph.input]
    if len(inputs) != 1:
        raise ValueError(f"quantize_int8: {onnx_path} has {len(inputs)} inputs; calibration feeds one")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in calibration]
    if not batches:
        raise ValueError("quantize_int8: no calibration batch")

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {inputs[0]: batch}

    out_path = Path(out_path)
    prepared = out_path.with_name(out_path.stem + ".prep.onnx")
    try:
        # ONNX shape inference + graph optimisation; the symbolic pass cannot read the exporter's Constant nodes
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                        op_types_to_quantize=list(op_types),
                        calibrate_method={"entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile,
                                          "minmax": CalibrationMethod.MinMax}[method],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        if prepared.exists():
            prepared.unlink()
    return out_path


def _session(onnx_path: PathLike, threads: Optional[int] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def classifier_accuracy(onnx_path: PathLike, folder: PathLike, preprocess: Callable, batch_size: int = 16) -> float:
    """Top-1 accuracy of the classifier ``onnx_path`` on the ImageFolder ``folder`` (``<class>/<image>``, labels
    by sorted class name), with ONNX Runtime on the CPU."""
    from pyvision_fast.data import ImageFolder

    data = ImageFolder(folder, preprocess)
    session = _session(onnx_path)
    name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        x = np.stack([img.numpy() for img, _ in items]).astype(np.float32)
        logits = session.run(None, {name: x})[0]
        if logits.ndim != 2 or logits.shape[1] < len(data.classes):
            raise ValueError(f"{onnx_path}: output {logits.shape} is not (batch, >= {len(data.classes)}) logits "
                             f"for the {len(data.classes)} classes of {str(folder)!r}")
        correct += int((logits.argmax(1) == np.array([label for _, label in items])).sum())
    return correct / len(data)


def onnxruntime_latency_ms(onnx_path: PathLike, example: np.ndarray, runs: int = 20, warmup: int = 3,
                           threads: Optional[int] = None) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU run of ``onnx_path`` on ``example``."""
    session = _session(onnx_path, threads)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(example, dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
