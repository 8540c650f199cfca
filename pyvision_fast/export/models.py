"""Models to deployable ONNX: ``export_model("vit_small_patch16_224", "vit.onnx")`` builds a registry model (with
local weights when given), picks its example input, and ``export_module`` exports it with the library's
translations, checks it with ONNX Runtime (``to_onnx``) and optionally converts it to float16 or a Q/DQ INT8 graph
(``export.quantize``). ``pvf export`` calls these."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .onnx_export import DEFAULT_OPSET, ExportReport, to_onnx


def inference_module(model: nn.Module) -> nn.Module:
    """What a deployment runs: a model's ``export_module()`` when it has one (the MAE's encoder without masking,
    for instance), else the model itself; in eval mode."""
    module = model.export_module() if hasattr(model, "export_module") else model
    return module.eval()


def example_input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    """(batch, channels, H, W) of an image model: its ``default_input_size`` (C, H, W) when it declares one, else
    the configured size of its patch embedding."""
    size = getattr(model, "default_input_size", None)
    if size is None and hasattr(model, "patch_embed"):
        pe = model.patch_embed
        size = (getattr(pe, "in_chans", 3), *pe.img_size)
    if size is None:
        raise ValueError(f"{type(model).__name__}: cannot tell its input size; pass input_shape")
    return (batch, *size)


PRECISIONS = ("fp32", "fp16", "int8")


def model_preprocess(model: nn.Module, input_shape: tuple[int, ...], overrides: Optional[dict] = None):
    """The evaluation transform of an image model (PIL image -> (C, H, W) float tensor): its ``data_config``
    (timm's keys ``mean``, ``std``, ``crop_pct``, ``interpolation``) when it declares one, else ImageNet's with
    crop_pct 0.875 and bicubic resizing; ``overrides`` (the same keys) win."""
    from .quantize import IMAGENET_MEAN, IMAGENET_STD, image_preprocess

    if len(input_shape) != 4:
        raise ValueError(f"calibration images need an image model with (N, C, H, W) input, got {input_shape}")
    cfg = {**(getattr(model, "data_config", None) or {}), **(overrides or {})}
    unknown = sorted(set(cfg) - {"mean", "std", "crop_pct", "interpolation"})
    if unknown:
        raise ValueError(f"preprocessing keys must be mean, std, crop_pct, interpolation; got {unknown}")
    return image_preprocess(input_shape[1:], mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD),
                            crop_pct=cfg.get("crop_pct", 0.875), interpolation=cfg.get("interpolation", "bicubic"))


def export_model(name: str, output: Union[str, Path], *, checkpoint: Union[str, Path, None] = None,
                 model_args: Optional[dict] = None, batch: int = 2,
                 input_shape: Optional[tuple[int, ...]] = None, seed: int = 0, **options) -> ExportReport:
    """Builds registry model ``name`` (``create_model(name, checkpoint_path=checkpoint, **model_args)``) and
    exports its inference module (``inference_module``) with ``export_module`` on a seeded random input of
    ``input_shape`` or the model's own size (``example_input_shape`` at ``batch``); ``options`` are
    ``export_module``'s (precision, calibration, dynamic batch, opset)."""
    from pyvision_fast.models import create_model

    _check_precision(options.get("precision", "fp32"), options.get("calib_dir"))
    model = create_model(name, checkpoint_path=checkpoint, **(model_args or {}))
    module = inference_module(model)
    shape = tuple(input_shape) if input_shape else example_input_shape(module, batch)
    example = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return export_module(module, (example,), output, **options)


def _check_precision(precision: str, calib_dir) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and calib_dir is None:
        raise ValueError("precision='int8' needs calibration images: calib_dir (--calib DIR)")
    if precision != "int8" and calib_dir is not None:
        raise ValueError("calibration images (calib_dir) apply to precision='int8' only")


def _check_runs(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """An input the model cannot take is the caller's error: say so in one line before torch.export's pages."""
    try:
        with torch.no_grad():
            module(*example_inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises, the input shape is what to fix
        shapes = ", ".join("x".join(map(str, t.shape)) for t in example_inputs)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{type(module).__name__} does not run on an input of shape {shapes} ({reason}); "
                         "pass the shape it takes with --input / input_shape") from exc


def export_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...], output: Union[str, Path], *,
                  dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, precision: str = "fp32",
                  calib_dir: Union[str, Path, None] = None, calib_method: str = "entropy", calib_limit: int = 512,
                  calib_eval_dir: Union[str, Path, None] = None,
                  preprocess_config: Optional[dict] = None, simplify: bool = False) -> ExportReport:
    """Exports ``module`` to ``output`` and returns ``to_onnx``'s report (nodes, TensorRT operator check, ONNX
    Runtime vs PyTorch difference on ``example_inputs``).

    ``precision="fp16"`` converts the graph to float16 (float32 inputs/outputs); ``"int8"`` quantizes it to a Q/DQ
    graph calibrated on the images of ``calib_dir`` (at most ``calib_limit``, ``calib_method`` entropy, percentile
    or minmax) in the model's preprocessing (``model_preprocess``, ``preprocess_config`` overriding it). Either way
    the float32 graph stays beside ``output`` as ``<stem>.fp32.onnx``, the report's difference is the converted
    graph's (the float32 one's is in ``measurements``), and ONNX Runtime's latency on the example input is
    measured for both; with ``calib_eval_dir`` (an ImageFolder) the top-1 accuracy is measured there too.
    ``simplify`` cleans the float32 graph up with onnxslim (constant folding, shape and pattern fusion) before any
    conversion; the report's ONNX Runtime difference is then the simplified graph's."""
    from . import quantize

    _check_precision(precision, calib_dir)
    module = module.eval()
    example_inputs = tuple(example_inputs)
    image_model = len(example_inputs) == 1 and example_inputs[0].dim() == 4
    if (precision == "int8" or calib_eval_dir) and not image_model:
        raise ValueError("calibration and accuracy on image folders need a model with one (N, C, H, W) input")
    preprocess = (model_preprocess(module, tuple(example_inputs[0].shape), preprocess_config)
                  if precision == "int8" or calib_eval_dir else None)
    if precision == "int8":  # a bad folder fails before the export's minutes
        batches = quantize.image_batches(calib_dir, preprocess, batch_size=8, limit=calib_limit)
    _check_runs(module, example_inputs)
    output = Path(output)
    fp32_path = output if precision == "fp32" else output.with_name(output.stem + ".fp32.onnx")
    report = to_onnx(module, example_inputs, fp32_path, dynamic_batch=dynamic_batch, opset=opset)
    if simplify:
        nodes = report.num_nodes
        quantize.simplify(fp32_path, fp32_path)
        _refresh(report, fp32_path, module, example_inputs)
        report.measurements["simplified nodes"] = f"{nodes} -> {report.num_nodes}"
    if precision == "fp32":
        if calib_eval_dir is not None:
            report.measurements["top1"] = quantize.classifier_accuracy(output, calib_eval_dir, preprocess)
        return report
    if precision == "fp16":
        quantize.to_float16(fp32_path, output)
    else:
        quantize.quantize_int8(fp32_path, output, batches, method=calib_method)
    report.measurements.update({"fp32 graph": str(fp32_path), "fp32 max |diff|": report.max_abs_diff})
    _refresh(report, output, module, example_inputs)
    report.precision = precision
    if image_model:
        x = example_inputs[0].numpy()
        report.measurements["ORT ms fp32"] = quantize.onnxruntime_latency_ms(fp32_path, x)
        report.measurements[f"ORT ms {precision}"] = quantize.onnxruntime_latency_ms(output, x)
    if calib_eval_dir is not None:
        report.measurements["top1 fp32"] = quantize.classifier_accuracy(fp32_path, calib_eval_dir, preprocess)
        report.measurements[f"top1 {precision}"] = quantize.classifier_accuracy(output, calib_eval_dir, preprocess)
    return report


def _refresh(report: ExportReport, path: Path, module: nn.Module, example_inputs: tuple) -> None:
    """Points ``report`` at the graph now in ``path``: its nodes, the TensorRT operator check and ONNX Runtime's
    difference from ``module``."""
    import onnx

    from .onnx_export import onnxruntime_diffs
    from .trt_support import unsupported_nodes

    graph = onnx.load(str(path))
    report.path = path
    report.num_nodes = len(graph.graph.node)
    report.op_types = sorted({n.op_type for n in graph.graph.node})
    report.tensorrt_unsupported = unsupported_nodes(graph)
    report.output_diffs = onnxruntime_diffs(path, module, example_inputs)
    report.max_abs_diff = max(report.output_diffs) if report.output_diffs else 0.0
