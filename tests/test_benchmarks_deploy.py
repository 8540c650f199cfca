"""The deployment family at its quick sizes: every registry model of ``benchmarks.deploy.MODELS`` runs in each
runtime (eager, torch.compile, ONNX Runtime float32 and INT8) and the float32 ONNX Runtime output equals eager's."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from benchmarks import deploy  # noqa: E402


@pytest.fixture(scope="module")
def quick_cases(tmp_path_factory):
    deploy._WORK = tmp_path_factory.mktemp("deploy")  # the exports of this run, not a shared temporary folder
    return deploy.cases("cpu", quick=True)


def _outputs(output) -> list:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def test_every_model_and_batch_is_a_case(quick_cases):
    names = [case.name for case in quick_cases]
    assert len(quick_cases) == sum(len(m[5]) for m in deploy.MODELS)
    for _, label, *_ in deploy.MODELS:
        assert any(name.startswith(label) for name in names), (label, names)
    for case in quick_cases:
        assert [impl.name for impl in case.impls] == ["PyTorch eager", "torch.compile", "ORT fp32 (pvf export)",
                                                       "ORT int8 Q/DQ (--int8)"]


@pytest.mark.parametrize("index", [0, 2, 4])  # batch 1 of each model
def test_runtimes_agree_with_eager(quick_cases, index):
    case = quick_cases[index]
    eager, compiled, ort32, ort8 = (impl.fn for impl in case.impls)
    want = _outputs(eager())
    got, int8 = _outputs(ort32()), _outputs(ort8())
    assert len(got) == len(want) == len(int8)
    for g, q, w in zip(got, int8, want):
        torch.testing.assert_close(torch.from_numpy(np.asarray(g)), w.float(), rtol=1e-3, atol=1e-3)
        assert np.asarray(q).shape == tuple(w.shape) and np.isfinite(np.asarray(q)).all()
