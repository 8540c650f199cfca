"""No op synchronises the host with the GPU in its steady state.

Two checks per op call (the tiny-shape calls of benchmarks/overhead.py, forward and backward):
- torch's sync debug mode set to "error" (catches .item(), .cpu(), nonzero and other syncs through torch);
- a gate: the call is made while the GPU is busy with a 200 ms sleep kernel queued before it, and must return
  before that kernel ends. This also catches synchronising CUDA calls made inside our compiled modules, which
  torch cannot see.
Both with and without the unverified GPU candidates (pyvision_fast.use_candidates).
"""
import pytest
import torch

import pyvision_fast

pytestmark = pytest.mark.cuda


def _ours():
    from benchmarks import overhead

    return [(case, fn) for case, impls in overhead.calls("cuda").items() for _, kind, fn in impls if kind == "ours"]


@pytest.fixture(scope="module")
def calls():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return dict(_ours())


@pytest.mark.parametrize("candidates", [False, True], ids=["current", "candidates"])
@pytest.mark.parametrize("case", ["attention fwd", "attention fwd+bwd", "deform_conv2d fwd+bwd",
                                  "SphereConv2d fwd+bwd", "MVF fwd+bwd", "gaussian_scale_space fwd+bwd",
                                  "ScaleSpaceConv2d fwd+bwd", "scale_attention fwd+bwd", "knn_points",
                                  "sample_farthest_points", "ball_query", "grouping_operation fwd+bwd",
                                  "chamfer_distance fwd+bwd"])
def test_steady_state_call_does_not_sync(calls, case, candidates):
    fn = calls[case]
    with pyvision_fast.use_candidates("all" if candidates else None):
        for _ in range(3):  # first calls may build caches, autotune or compile
            fn()
        torch.cuda.synchronize()
        sleep_end = torch.cuda.Event()
        cycles = 200 * 1_000_000 * 2  # ~200 ms at 2 GHz (less on a faster clock: still far above one tiny call)
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            torch.cuda._sleep(cycles)
            sleep_end.record()
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        returned_early = not sleep_end.query()
        torch.cuda.synchronize()
    assert returned_early, f"{case}: the call waited for the GPU (a host synchronisation)"
