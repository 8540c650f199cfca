"""Deployment cases: registry models served by PyTorch eager, ``torch.compile``, ONNX Runtime on the float32 export
and ONNX Runtime on the INT8 Q/DQ export (``pyvision_fast.export``), plus TensorRT fp16/int8 engines where TensorRT
and a GPU are present; reported with samples/s and, on the CPU, each runtime's peak resident memory in its own
process. The models (``MODELS``): ViT-S/16 at 224x224, batch 1 and 32; SCAN-IR50 (fused to its plain IResNet-50)
on 112x112 faces, batch 1 and 32; DGCNN on 1024 points, batch 1 and 4 (its exported kNN holds an N x N x C
difference tensor per cloud). ``--quick``: smaller models and inputs, batch 1 and 2-4.

Each model runs as ``pvf export`` exports it (``export.models.inference_module``, its default input size). The INT8
graph is calibrated on seeded random inputs (latency does not depend on the calibration data; accuracy does, and
is what ``pvf export --int8 --calib DIR --calib-eval VAL`` reports). Each runtime is built on its first call
(export, quantization, compilation), which the harness's warm-up absorbs.
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pyvision_fast.models import create_model

from .harness import Case, Impl

# no tuned-process or neighbour rows (benchmarks/tuned.py, neighbour.py): the serving stacks allocate in their own runtimes
PROCESS_ROWS = False

_WORK = Path(tempfile.gettempdir()) / "pvf-bench-deploy"


def _lazy(build: Callable[[], Callable[[], object]]) -> Callable[[], object]:
    """A call that builds its runner the first time (export, compile) and runs it every time."""
    runner = []

    def call():
        if not runner:
            runner.append(build())
        return runner[0]()
    return call


def _onnx_files(tag: str, model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, Path]:
    """Float32 and INT8 ONNX exports of ``model`` for inputs of ``shape`` with a dynamic batch (made once per
    folder)."""
    from pyvision_fast.export import quantize_int8, to_onnx

    folder = _WORK / tag
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    if not fp32.is_file():
        to_onnx(model, (torch.rand(2, *shape[1:]),), fp32, check=False)
    if not int8.is_file():
        rng = np.random.default_rng(0)
        calib = [rng.random((2, *shape[1:]), dtype=np.float32) for _ in range(4)]
        quantize_int8(fp32, int8, calib)
    return {"fp32": fp32, "int8": int8}


def _ort(path_of: Callable[[], Path], x: torch.Tensor) -> Callable[[], object]:
    def build():
        import onnxruntime as ort

        session = ort.InferenceSession(str(path_of()), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)
    return _lazy(build)


def _eager(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def _compiled(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def build():
        compiled = torch.compile(model)

        def run():
            with torch.inference_mode():
                return compiled(x)
        return run
    return _lazy(build)


def _tensorrt(path_of: Callable[[], Path], x: torch.Tensor, precision: str, tag: str) -> Callable[[], object]:
    def build():
        from pyvision_fast.export import TensorRTModule, build_engine

        import onnx

        engine = _WORK / tag / f"model.{precision}.plan"
        if not engine.is_file():
            shape, name = tuple(x.shape), onnx.load(str(path_of())).graph.input[0].name
            build_engine(path_of(), engine, fp16=True, int8=precision == "int8",
                         min_shapes={name: (1, *shape[1:])}, opt_shapes={name: shape}, max_shapes={name: shape})
        module, xc = TensorRTModule(engine), x.cuda()
        return lambda: module(xc)
    return _lazy(build)


# (registry name, label, model arguments full / quick, batches full / quick)
MODELS = [
    ("vit_small_patch16_224", "ViT-S/16", {}, dict(img_size=64, depth=2), (1, 32), (1, 4)),
    ("scan_ir50", "SCAN-IR50 (fused)", {}, dict(img_size=64, num_features=64), (1, 32), (1, 4)),
    ("dgcnn", "DGCNN", {}, dict(k=8), (1, 4), (1, 2)),
]
# quick inputs of models whose input size is not a model argument
_QUICK_SHAPES = {"dgcnn": (256, 3)}


def cases(device: str, quick: bool) -> list[Case]:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        print("deploy: onnxruntime/onnxscript are not installed (pip install -e .[export])")
        return []
    from pyvision_fast.export.models import example_input_shape, inference_module

    trt = device == "cuda" and importlib.util.find_spec("tensorrt") is not None
    out = []
    for name, label, full_args, quick_args, full_batches, quick_batches in MODELS:
        torch.manual_seed(0)
        model = inference_module(create_model(name, **(quick_args if quick else full_args)))
        shape = example_input_shape(model, 1)
        if quick and name in _QUICK_SHAPES:
            shape = (1, *_QUICK_SHAPES[name])
        size = "x".join(str(d) for d in shape[1:])
        tag = f"{name}-{size}-{'quick' if quick else 'full'}"
        files: dict[str, Path] = {}

        def path(precision: str, model=model, shape=shape, tag=tag, files=files) -> Callable[[], Path]:
            def get():
                if not files:
                    files.update(_onnx_files(tag, model, shape))
                return files[precision]
            return get

        for batch in (quick_batches if quick else full_batches):
            x = torch.rand(batch, *shape[1:])
            impls = [Impl("PyTorch eager", _eager(model, x), "reference"),
                     Impl("torch.compile", _compiled(model, x), "peer"),
                     Impl("ORT fp32 (pvf export)", _ort(path("fp32"), x), "ours"),
                     Impl("ORT int8 Q/DQ (--int8)", _ort(path("int8"), x), "peer")]
            if trt:
                impls += [Impl("TensorRT fp16", _tensorrt(path("fp32"), x, "fp16", tag), "peer"),
                          Impl("TensorRT int8", _tensorrt(path("int8"), x, "int8", tag), "peer")]
            out.append(Case("deploy", f"{label} {size} inference b{batch}", {"batch": batch, "input": list(shape[1:])},
                            impls, samples=batch, measure_memory=device == "cpu",
                            note="runtimes on the CPU (ONNX Runtime's CPU provider); TensorRT rows need a GPU and "
                                 "TensorRT" if not trt else "TensorRT engines built from the same ONNX files"))
    return out
