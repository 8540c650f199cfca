"""Shared test helpers: per-dtype tolerances, devices, reference comparison, gradcheck, opcheck,
torch.compile, bad-input tables and ONNX export + ONNX Runtime checks."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Optional, Sequence

import pytest
import torch

# Per-dtype tolerances for comparing an op with its float reference computed in the same dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]

# GPU tests of ops that have (or had) a candidate run twice: "current" on the implementation that was verified
# before the candidate (once the candidate is verified and preferred, the implementation it replaced, which stays
# the fallback where the preferred one does not apply: ``use_previous``), and "candidate" on the candidate while
# it is one, on the op's default once it is preferred.
DEVICES_AND_CANDIDATES = DEVICES + [pytest.param("cuda", id="cuda-candidate", marks=pytest.mark.cuda)]


def on_implementation(candidate):
    """The block of a GPU test variant: candidate None is "current" (see above), else the op name(s) whose
    candidate runs."""
    from pyvision_fast import use_candidates, use_previous

    return use_previous() if candidate is None else use_candidates(candidate)


@pytest.fixture(autouse=True)
def candidate_switch(request):
    """The "cuda" and "cuda-candidate" variants of DEVICES_AND_CANDIDATES under ``on_implementation`` (autouse
    in the modules that import it); other tests as they are."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != "cuda":
        yield
        return
    with on_implementation("all" if "cuda-candidate" in callspec.id else None):
        yield


def float_dtypes(device: str) -> list[torch.dtype]:
    base = [torch.float32, torch.float64]
    return base + ([torch.float16, torch.bfloat16] if device == "cuda" else [])


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: Optional[torch.dtype] = None, **override):
    """actual against expected (often a float64 CPU reference), compared on actual's device and dtype."""
    tol = dict(TOLERANCES[dtype or expected.dtype])
    tol.update(override)
    torch.testing.assert_close(actual, expected.to(device=actual.device, dtype=actual.dtype), **tol)


def gradcheck(fn: Callable, inputs: Sequence[torch.Tensor], **kwargs) -> None:
    """torch.autograd.gradcheck in float64 (inputs must already be float64 with requires_grad). On CUDA, backward
    kernels that scatter with atomicAdd sum in a varying order, so two backward passes may differ in the last
    bits: nondet_tol allows that much (1e-10), no more."""
    if any(isinstance(t, torch.Tensor) and t.is_cuda for t in inputs):
        kwargs.setdefault("nondet_tol", 1e-10)
    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-5, rtol=1e-4, **kwargs)


def opcheck(op, args: tuple, kwargs: Optional[dict] = None) -> None:
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch."""
    results = torch.library.opcheck(op, args, kwargs or {})
    failed = {k: v for k, v in results.items() if v != "SUCCESS"}
    assert not failed, failed


def check_compiled(fn: Callable, *args) -> None:
    """fn under torch.compile(fullgraph=True) gives the eager result (forward; and backward if it has grads)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    eager_out = fn(*args)
    comp_out = compiled(*args)
    for e, c in zip(_flat(eager_out), _flat(comp_out)):
        torch.testing.assert_close(c, e)


def _flat(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if x is None:
        return []
    return [t for item in x for t in _flat(item)]


@dataclasses.dataclass
class BadInput:
    """One row of a bad-input table: calling ``call()`` must raise ``error`` with a message matching ``match``."""

    name: str
    call: Callable[[], Any]
    error: type
    match: str

    def __str__(self):
        return self.name


def run_bad_input(case: BadInput) -> None:
    with pytest.raises(case.error, match=case.match):
        case.call()


def check_onnx(module: torch.nn.Module, inputs: tuple, tmp_path, atol: float = 1e-5, exact_outputs=()) -> Any:
    """Export through pyvision_fast.export.to_onnx: checker + TensorRT op set + ONNX Runtime agreement.
    A second, larger batch is run through ONNX Runtime to check that the batch dimension is dynamic."""
    from pyvision_fast.export import run_onnxruntime, to_onnx

    report = to_onnx(module, inputs, tmp_path / "model.onnx")
    assert report.tensorrt_compatible, report.tensorrt_unsupported
    assert report.max_abs_diff is not None and report.max_abs_diff <= atol, report
    for i in exact_outputs:
        assert report.output_diffs[i] == 0, (i, report.output_diffs)
    bigger = tuple(torch.cat([t, t.flip(0)]) if t.dim() > 0 else t for t in inputs)
    got = run_onnxruntime(report.path, bigger)
    with torch.no_grad():
        expected = _flat(module(*bigger))
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        torch.testing.assert_close(torch.from_numpy(g).to(e.dtype), e, atol=atol, rtol=1e-5)
    return report


def random_lengths(B: int, P: int, generator=None, low: int = 0) -> torch.Tensor:
    return torch.randint(low, P + 1, (B,), generator=generator, dtype=torch.int64)


def matches(pattern: str) -> str:
    return re.escape(pattern)


def ops_dispatched(fn: Callable[[], object]) -> list[str]:
    """The operators (``str(OpOverload)``, e.g. "pvf.knn_points.default") that reach torch's dispatcher while
    ``fn()`` runs under a recording dispatch mode; an eager call of our ops must still show its custom op there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen
