"""Registry models to ONNX: ``export_model("vit_small_patch16_224", "vit.onnx")`` builds the model (with local
weights when given), picks its example input, exports it with the library's translations and checks it with ONNX
Runtime (``to_onnx``). ``pvf export NAME`` calls this."""
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


def export_model(name: str, output: Union[str, Path], *, checkpoint: Union[str, Path, None] = None,
                 model_args: Optional[dict] = None, batch: int = 2,
                 input_shape: Optional[tuple[int, ...]] = None, dynamic_batch: bool = True,
                 opset: int = DEFAULT_OPSET, seed: int = 0) -> ExportReport:
    """Builds registry model ``name`` (``create_model(name, checkpoint_path=checkpoint, **model_args)``), exports
    its inference module to ``output`` and returns ``to_onnx``'s report (nodes, TensorRT operator check, ONNX
    Runtime vs PyTorch difference on a seeded random input of ``input_shape`` or the model's own size)."""
    from pyvision_fast.models import create_model

    model = create_model(name, checkpoint_path=checkpoint, **(model_args or {}))
    module = inference_module(model)
    shape = tuple(input_shape) if input_shape else example_input_shape(module, batch)
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(shape, generator=gen)
    return to_onnx(module, (example,), output, dynamic_batch=dynamic_batch, opset=opset)
