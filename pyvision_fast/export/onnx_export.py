"""Export to ONNX with the library's translations, then check the graph and compare ONNX Runtime with PyTorch."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import trt_support

DEFAULT_OPSET = 18


def translation_table() -> dict:
    """The ONNX translation of every pvf:: op, gathered from the op families."""
    import pyvision_fast  # noqa: F401  (registers torch.ops.pvf.*)

    from . import deform_conv, mvf, pointcloud, scale_space, sphere, stylegan2, vector_quantize

    table = {}
    for family in (pointcloud, mvf, scale_space, deform_conv, sphere, vector_quantize, stylegan2):
        table.update(family.translations())
    return table


@dataclasses.dataclass
class ExportReport:
    """What ``to_onnx`` produced and measured."""

    path: Path
    num_nodes: int
    op_types: list[str]
    tensorrt_unsupported: list[str]
    max_abs_diff: Optional[float]
    output_diffs: list[float]
    precision: str = "fp32"
    opset: Optional[int] = None
    # what a reduced-precision export measured beside the graph: the fp32 graph's diff, accuracies, latencies
    measurements: dict = dataclasses.field(default_factory=dict)

    @property
    def tensorrt_compatible(self) -> bool:
        return not self.tensorrt_unsupported

    def __str__(self) -> str:
        opset = f"opset {self.opset}, " if self.opset else ""
        lines = [f"ONNX model: {self.path} ({opset}{self.num_nodes} nodes: {', '.join(self.op_types)})"]
        lines.append("TensorRT operator check: " + (
            "all nodes supported" if self.tensorrt_compatible else "unsupported: " + "; ".join(self.tensorrt_unsupported)))
        if self.max_abs_diff is not None:
            lines.append(f"ONNX Runtime vs PyTorch: max |diff| = {self.max_abs_diff:.3g} over {len(self.output_diffs)} output(s)")
        if self.precision != "fp32":
            lines.append(f"precision: {self.precision}")
        lines += [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in self.measurements.items()]
        return "\n".join(lines)


def _default_opset(model) -> Optional[int]:
    """The version of the default ("ai.onnx") operator set a model imports."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    if out is None:
        return []
    raise TypeError(f"unsupported output type {type(out).__name__}")


def run_onnxruntime(path: Union[str, Path], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run the model at ``path`` with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def to_onnx(module: torch.nn.Module, example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
            path: Union[str, Path], dynamic_batch: bool = True, opset: int = DEFAULT_OPSET, check: bool = True,
            optimize: bool = False, verbose: bool = False) -> ExportReport:
    """Export ``module`` to ONNX at ``path`` and check the result.

    Uses ``torch.onnx.export(dynamo=True)`` with the library's translation table (standard ONNX operators
    only). With ``dynamic_batch`` the first dimension of every input is symbolic (give an example batch >= 2).
    With ``check``: runs ``onnx.checker`` (full check), lists the nodes TensorRT would need a plugin for, runs
    ONNX Runtime on ``example_inputs`` and records the largest absolute difference from PyTorch per output.
    Returns an ``ExportReport`` (``print`` it for a summary).

    ``optimize`` runs the exporter's ONNX optimizer. It is off by default: with onnxscript 0.7 that optimizer
    deletes ``Add`` nodes whose constant is as small as 1e-8 (``1 / (d + 1e-8)`` becomes ``1 / d``, turning the
    inverse-distance weights of coincident points into NaN). ONNX Runtime and TensorRT fold constants
    themselves when they load the model.
    """
    import onnx

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} if isinstance(t, torch.Tensor) and t.dim() > 0 else None
                               for t in example_inputs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")  # lengths share the batch dim
        program = torch.onnx.export(module, example_inputs, dynamo=True, opset_version=opset,
                                    custom_translation_table=translation_table(), dynamic_shapes=dynamic_shapes,
                                    optimize=optimize, verbose=verbose, report=False)
    program.save(str(path))
    model = onnx.load(str(path))
    op_types = sorted({n.op_type for n in model.graph.node})
    report = ExportReport(path=path, num_nodes=len(model.graph.node), op_types=op_types,
                          tensorrt_unsupported=trt_support.unsupported_nodes(model), max_abs_diff=None,
                          output_diffs=[], opset=_default_opset(model))
    if check:
        onnx.checker.check_model(model, full_check=True)
        report.output_diffs = onnxruntime_diffs(path, module, example_inputs)
        report.max_abs_diff = max(report.output_diffs) if report.output_diffs else 0.0
    return report


def onnxruntime_diffs(path: Union[str, Path], module: torch.nn.Module,
                      example_inputs: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute difference, per output, between ONNX Runtime running ``path`` and ``module`` (PyTorch)
    on ``example_inputs``."""
    with torch.no_grad():
        expected = _flatten(module(*example_inputs))
    got = run_onnxruntime(path, example_inputs)
    if len(got) != len(expected):
        raise RuntimeError(f"ONNX model has {len(got)} outputs, PyTorch module {len(expected)}")
    diffs = []
    for g, e in zip(got, expected):
        e = e.detach().cpu().numpy()
        if g.shape != e.shape:
            raise RuntimeError(f"ONNX output shape {g.shape} differs from PyTorch {e.shape}")
        diffs.append(float(np.abs(g.astype(np.float64) - e.astype(np.float64)).max()) if e.size else 0.0)
    return diffs
