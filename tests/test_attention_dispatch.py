"""The attention layers' per-shape choice between our Triton kernels and SDPA (nn.attention_dispatch): measured
once per key and cached, forced by PVF_ATTENTION_DISPATCH, bypassed by a forced backend; on a GPU, steady-state
calls never synchronise."""
import pytest
import torch
import torch.nn.functional as F

from pyvision_fast import use_backend
from pyvision_fast.nn import FusedAttention, attention_dispatch
from pyvision_fast.nn.attention_dispatch import AttentionDispatcher


def _recording(times):
    """A dispatcher with a fake timer (given milliseconds per implementation) and recording implementations."""
    calls, timed = [], []

    def impl(name):
        def run(q, k, v, mask, p, causal, scale):
            calls.append(name)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal, scale=scale)
        return run

    def timer(name, fn):
        timed.append(name)
        fn()
        return times[name]

    return AttentionDispatcher(timer=timer, impls={"triton": impl("triton"), "sdpa": impl("sdpa")}), calls, timed


def _qkv(L=7, requires_grad=False):
    return [torch.randn(2, 3, L, 8, requires_grad=requires_grad) for _ in range(3)]


@pytest.mark.parametrize("faster", ["triton", "sdpa"])
def test_first_call_measures_and_later_calls_reuse_the_choice(faster, monkeypatch):
    monkeypatch.delenv("PVF_ATTENTION_DISPATCH", raising=False)
    d, calls, timed = _recording({"triton": 1.0 if faster == "triton" else 3.0, "sdpa": 2.0})
    q, k, v = _qkv()
    out = d(q, k, v)
    assert set(timed) == {"triton", "sdpa"} and calls[-1] == faster
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    n_timed = len(timed)
    for _ in range(3):
        d(q, k, v)
    assert len(timed) == n_timed and calls[-3:] == [faster] * 3  # cached: no more timing
    assert len(d.cache) == 1
    d(*_qkv(L=9))  # another shape: measured again
    assert len(timed) > n_timed and len(d.cache) == 2
    d(q, k, v, attn_mask=torch.ones(7, 7, dtype=torch.bool))  # a mask is another key too
    assert len(d.cache) == 3


def test_training_key_times_forward_and_backward_on_copies(monkeypatch):
    monkeypatch.delenv("PVF_ATTENTION_DISPATCH", raising=False)
    d, calls, timed = _recording({"triton": 1.0, "sdpa": 2.0})
    q, k, v = _qkv(requires_grad=True)
    with torch.no_grad():
        d(q, k, v)
    out = d(q, k, v)  # gradients needed: a key of its own
    assert len(d.cache) == 2
    assert q.grad is None  # the timing's backward ran on detached copies
    out.sum().backward()
    torch.testing.assert_close(q.grad, torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), q)[0])


def test_timing_leaves_the_random_stream_alone(monkeypatch):
    monkeypatch.delenv("PVF_ATTENTION_DISPATCH", raising=False)
    d, _, _ = _recording({"triton": 1.0, "sdpa": 2.0})
    q, k, v = _qkv()
    torch.manual_seed(0)
    first = d(q, k, v, dropout_p=0.5)  # measures, then runs
    after_first = torch.rand(3)
    torch.manual_seed(0)
    second = d(q, k, v, dropout_p=0.5)  # cached
    assert torch.equal(first, second) and torch.equal(torch.rand(3), after_first)


@pytest.mark.parametrize("forced", ["triton", "sdpa"])
def test_environment_forces_either_side(forced, monkeypatch):
    monkeypatch.setenv("PVF_ATTENTION_DISPATCH", forced)
    d, calls, timed = _recording({"triton": 1.0, "sdpa": 2.0})
    d(*_qkv())
    assert timed == [] and calls == [forced] and d.cache == {}


def test_bad_environment_value(monkeypatch):
    monkeypatch.setenv("PVF_ATTENTION_DISPATCH", "fastest")
    d, _, _ = _recording({"triton": 1.0, "sdpa": 2.0})
    with pytest.raises(ValueError, match="PVF_ATTENTION_DISPATCH"):
        d(*_qkv())


def test_forced_backend_bypasses_the_dispatch(monkeypatch):
    monkeypatch.delenv("PVF_ATTENTION_DISPATCH", raising=False)
    d, calls, timed = _recording({"triton": 1.0, "sdpa": 2.0})
    q, k, v = _qkv()
    with use_backend("reference"):
        out = d(q, k, v)
    assert calls == [] and timed == []
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_fused_attention_runs_through_the_dispatcher(monkeypatch):
    monkeypatch.delenv("PVF_ATTENTION_DISPATCH", raising=False)
    d, calls, _ = _recording({"triton": 2.0, "sdpa": 1.0})
    monkeypatch.setattr(attention_dispatch, "DISPATCHER", d)
    layer = FusedAttention(24, num_heads=3).eval()
    layer(torch.randn(2, 5, 24))
    assert calls[-1] == "sdpa" and len(d.cache) == 1


def test_cpu_layers_without_a_timer_use_ops_attention():
    q, k, v = _qkv()
    d = AttentionDispatcher()
    torch.testing.assert_close(d(q, k, v), F.scaled_dot_product_attention(q, k, v))
    assert d.cache == {}


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["previous", "flash"])
@pytest.mark.parametrize("N,training", [(197, False), (197, True), (5, False), (5, True)])
def test_fused_attention_on_gpu_matches_timm_and_never_syncs_after_the_first_call(family, N, training):
    from pyvision_fast.ops.attention import kernel_family

    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    theirs = timm.models.vision_transformer.Attention(384, num_heads=6, qkv_bias=True).cuda().train(training)
    ours = FusedAttention(384, num_heads=6).cuda().train(training)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(8, N, 384, device="cuda", requires_grad=training)
    with kernel_family(family):
        out = ours(x)  # first call of the key: measures both sides
        torch.testing.assert_close(out, theirs(x), atol=2e-3, rtol=2e-3)
        if training:
            out.sum().backward()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = ours(x)
            if training:
                out.sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert any(key[2][2] == N for key in attention_dispatch.DISPATCHER.cache)


@pytest.mark.cuda
def test_fused_attention_compiles_fullgraph_on_gpu():
    torch.manual_seed(0)
    layer = FusedAttention(256, num_heads=4).cuda().eval()
    x = torch.randn(4, 65, 256, device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), atol=2e-3, rtol=2e-3)
