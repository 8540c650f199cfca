"""The expression / latent editor (``models.expression_editor``): intensity 0 is exactly the identity, the
edit is continuous and its size grows with the intensity, shapes and dtypes of every input form (names,
indices, emotion weights, per-frame intensities, W and W+ latents), a learning test (recover per-emotion
offsets), temporal smoothing (constant unchanged, window 1 identity, edges, against a loop), bad inputs, and
ONNX export of the renderer-free editor with ONNX Runtime equal to eager."""
from __future__ import annotations

import pytest
import torch

from pyvision_fast.models import create_model, list_models
from pyvision_fast.models.expression_editor import (MEAD_EMOTIONS, ExpressionEditor, emotion_index,
                                                    temporal_smooth)

SMALL = dict(hidden=32, depth=2, latent_dim=16, latent_hidden=32, latent_depth=2, embed_dim=8)


def randomised(seed=0, **kw):
    """A small editor with every parameter random (a fresh one is the identity: its last layers are zero)."""
    torch.manual_seed(seed)
    m = create_model("expression_editor", **{**SMALL, **kw})
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return m.eval()


def test_registered_and_untrained_is_identity():
    assert "expression_editor" in list_models()
    m = create_model("expression_editor")
    assert m.emotions == MEAD_EMOTIONS and m.exp_dim == 64 and m.latent_dim == 512
    x = torch.randn(3, 64)
    assert torch.equal(m(x, "happy", 1.0), x)             # zero-initialised last layer
    assert sum(p.numel() for p in create_model("expression_editor", latent_dim=0).parameters()) == (
        8 * 32 + (96 * 256 + 256) + (256 * 256 + 256) + (256 * 64 + 64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_intensity_zero_is_exactly_the_input(dtype):
    m = randomised(intensity_input=True).to(dtype)
    x = torch.randn(4, 7, 64, dtype=dtype) * 3
    w = torch.randn(4, 5, 16, dtype=dtype)
    for emotion in ("angry", 4, torch.arange(4), torch.softmax(torch.randn(4, 8, dtype=dtype), -1)):
        assert torch.equal(m(x, emotion, 0.0), x)
        assert torch.equal(m.edit_latent(w, emotion, torch.zeros(4, dtype=dtype)), w)
    # per-frame intensities: frames at 0 untouched, the others edited
    a = torch.rand(4, 7, dtype=dtype)
    a[:, ::2] = 0
    y = m(x, "sad", a)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y[:, ::2], x[:, ::2]) and (y[:, 1::2] != x[:, 1::2]).any()


def test_continuous_and_growing_with_intensity():
    m = randomised()
    x = torch.randn(5, 64)
    a = torch.linspace(0, 1, 21)
    with torch.no_grad():
        edits = torch.stack([m(x, "happy", float(t)) for t in a])
    size = (edits - x).norm(dim=-1)                        # (21, 5)
    assert (size.diff(dim=0) > 0).all()                     # a stronger control edits more
    # linear in the intensity (intensity_input=False): edit(t) - x = t * (edit(1) - x)
    assert torch.allclose(edits - x, a[:, None, None] * (edits[-1] - x), atol=1e-5)
    assert (edits.diff(dim=0).abs().max() < 0.2 * size[-1].max())   # small steps: continuous
    # the emotions give different edits, weights that are one-hot equal the index
    y_idx = m(x, torch.full((5,), 3), 0.7)
    y_w = m(x, torch.nn.functional.one_hot(torch.full((5,), 3), 8).float(), 0.7)
    assert torch.allclose(y_idx, y_w, atol=1e-6)
    assert not torch.allclose(m(x, "happy", 0.7), m(x, "angry", 0.7))


def test_input_forms_and_latents():
    m = randomised()
    x = torch.randn(2, 64)
    assert torch.equal(m(x, "Happy", 0.5), m(x, MEAD_EMOTIONS.index("happy"), torch.tensor(0.5)))
    assert torch.equal(m(x, ["happy", "sad"], torch.tensor([0.5, 0.5])), m(x, torch.tensor([4, 6]), 0.5))
    seq = torch.randn(2, 6, 64)
    # a sequence edits each frame as one frame alone
    assert torch.allclose(m(seq, "fear", 0.4)[:, 3], m(seq[:, 3], "fear", 0.4), atol=1e-6)
    w = torch.randn(2, 16)
    wp = w[:, None].expand(2, 3, 16)
    one = m.edit_latent(w, "sad", 0.5)
    assert torch.allclose(m.edit_latent(wp, "sad", 0.5), one[:, None].expand(2, 3, 16))
    assert emotion_index("SURPRISED") == 7 and emotion_index(0) == 0


def test_per_layer_latent_editing():
    """``latent_layers``: W+ rows get their own embedding (equal rows are edited differently), frames of W+
    latents (B, T, L, D) edit each frame as one (B, L, D), intensity 0 is the input, per-frame intensities
    broadcast over the rows, and the state_dict of ``latent_layers=0`` is unchanged (old checkpoints load)."""
    m = randomised(latent_layers=3)
    assert m.layer_embed.weight.shape == (3, 16)
    w = torch.randn(2, 16)
    wp = w[:, None].expand(2, 3, 16).contiguous()
    out = m.edit_latent(wp, "sad", 0.5)
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3
    frames = torch.randn(2, 4, 3, 16)
    full = m.edit_latent(frames, "happy", torch.tensor([[0.0, 0.3, 0.6, 1.0]] * 2))
    assert torch.equal(full[:, 0], frames[:, 0])
    assert torch.allclose(full[:, 2], m.edit_latent(frames[:, 2], "happy", 0.6), atol=1e-6)
    with pytest.raises(ValueError, match="3 W\\+ rows"):
        m.edit_latent(torch.randn(2, 4, 16), "happy", 0.5)
    with pytest.raises(ValueError, match="shape"):
        m.edit_latent(w, "happy", 0.5)
    plain = create_model("expression_editor", **SMALL)
    assert set(plain.state_dict()) == set(create_model("expression_editor", **SMALL, latent_layers=3)
                                          .state_dict()) - {"layer_embed.weight"}
    assert create_model("expression_editor", latent_dim=0, latent_layers=3).latent_layers == 0
    assert plain.edit_latent(torch.randn(2, 5, 3, 16), "sad", 0.5).shape == (2, 5, 3, 16)


def test_learns_per_emotion_offsets():
    """Targets exp + level/3 * D[emotion] (fixed random offsets): the editor recovers them."""
    torch.manual_seed(0)
    D = torch.randn(8, 64) * 0.5
    m = create_model("expression_editor", latent_dim=0, hidden=64, depth=2)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for step in range(400):
        x = torch.randn(64, 64)
        e = torch.randint(0, 8, (64,))
        a = torch.randint(1, 4, (64,)).float() / 3
        loss = (m(x, e, a) - (x + a[:, None] * D[e])).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(256, 64)
    e = torch.randint(0, 8, (256,))
    with torch.no_grad():
        err = (m(x, e, 1.0) - (x + D[e])).abs().mean()
    assert err < 0.1 * D.abs().mean(), err                 # from 0.4 (the identity) to < 0.04


def test_bad_inputs():
    m = randomised()
    x = torch.randn(2, 64)
    cases = [
        ((torch.randn(2, 63), "happy", 0.5), ValueError, "exp"),
        ((torch.randn(64), "happy", 0.5), ValueError, "exp"),
        ((torch.randint(0, 3, (2, 64)), "happy", 0.5), TypeError, "exp"),
        (([0.0] * 64, "happy", 0.5), TypeError, "exp"),
        ((x, "joyful", 0.5), ValueError, "emotion"),
        ((x, 8, 0.5), ValueError, "emotion"),
        ((x, torch.tensor([0, 9]), 0.5), ValueError, "emotion"),
        ((x, torch.tensor([0, 1, 2]), 0.5), ValueError, "emotion"),
        ((x, torch.rand(2, 7), 0.5), ValueError, "emotion"),
        ((x, 1.5, 0.5), TypeError, "emotion"),
        ((x, "happy", 1.5), ValueError, "intensity"),
        ((x, "happy", -0.1), ValueError, "intensity"),
        ((x, "happy", torch.rand(3)), ValueError, "intensity"),
        ((x, "happy", torch.tensor([1, 0])), TypeError, "intensity"),
        ((x, "happy", "strong"), TypeError, "intensity"),
    ]
    for args, error, word in cases:
        with pytest.raises(error, match=word):
            m(*args)
    with pytest.raises(ValueError, match="w"):
        m.edit_latent(torch.randn(2, 15), "happy", 0.5)
    with pytest.raises(ValueError, match="latent_dim=0"):
        create_model("expression_editor", latent_dim=0).edit_latent(torch.randn(2, 512), "happy", 0.5)
    with pytest.raises(ValueError, match="hidden"):
        ExpressionEditor(hidden=0)
    with pytest.raises(ValueError, match="emotion names"):
        ExpressionEditor(num_emotions=3, emotions=("a", "b"))


def test_temporal_smooth():
    torch.manual_seed(0)
    const = torch.full((9, 4), 0.3).double() + torch.arange(4.0).double()
    for window in (1, 3, 5, 21):
        assert torch.allclose(temporal_smooth(const, window), const, atol=1e-15, rtol=0)
    x = torch.randn(2, 10, 3)
    assert temporal_smooth(x, 1, dim=1) is x                   # window 1: the input itself
    got = temporal_smooth(x, 5, dim=1)
    ref = torch.stack([x[:, max(0, t - 2):min(10, t + 3)].mean(1) for t in range(10)], 1)
    assert got.shape == x.shape and torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(got[:, 0], x[:, :3].mean(1), atol=1e-6)   # edge: the window shrinks to 3 frames
    assert torch.allclose(temporal_smooth(x.transpose(0, 1), 5, dim=0).transpose(0, 1), got, atol=1e-6)
    assert torch.allclose(temporal_smooth(x, 99, dim=-2), x.mean(1, keepdim=True).expand_as(x), atol=1e-6)
    # a linear ramp stays linear inside (averaging a line), and the smoothing removes alternating noise
    ramp = torch.arange(12.0)[:, None]
    assert torch.allclose(temporal_smooth(ramp, 3)[1:-1], ramp[1:-1])
    zigzag = torch.tensor([1.0, -1.0] * 6)[:, None]
    assert temporal_smooth(zigzag, 3)[1:-1].abs().max() <= 1 / 3 + 1e-6
    for bad in ({"window": 2}, {"window": 0}, {"window": 3.0}, {"window": 3, "dim": 3}):
        with pytest.raises(ValueError):
            temporal_smooth(x, **bad)
    with pytest.raises(TypeError, match="x"):
        temporal_smooth(torch.arange(5), 3)


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import to_onnx
    from pyvision_fast.export.models import export_model

    m = randomised()
    x, e, a = torch.randn(3, 64), torch.tensor([0, 4, 7]), torch.tensor([0.0, 0.5, 1.0])
    report = to_onnx(m, (x, e, a), tmp_path / "editor.onnx")
    assert report.max_abs_diff < 1e-5 and report.tensorrt_compatible, report
    # the packed one-input form (pvf export expression_editor)
    report = export_model("expression_editor", tmp_path / "packed.onnx", model_args=SMALL)
    assert report.max_abs_diff < 1e-5, report
    from pyvision_fast.export import run_onnxruntime
    packed = m.export_module()
    inp = torch.cat([x, torch.nn.functional.one_hot(e, 8).float(), a[:, None]], 1)
    to_onnx(packed, (inp,), tmp_path / "packed2.onnx", check=False)
    got = run_onnxruntime(tmp_path / "packed2.onnx", (inp,))[0]
    assert torch.allclose(torch.from_numpy(got), m(x, e, a), atol=1e-5)
    assert torch.equal(torch.from_numpy(got)[0], x[0])     # intensity 0 stays the identity in ONNX Runtime


def test_latent_editor_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from pyvision_fast.export import run_onnxruntime, to_onnx

    m = randomised(latent_layers=3)
    w = torch.randn(4, 3, 16)
    e = torch.nn.functional.one_hot(torch.tensor([0, 4, 7, 6]), 8).float()
    a = torch.tensor([0.0, 0.3, 0.6, 1.0])
    module = m.export_module("latent")
    report = to_onnx(module, (w, e, a), tmp_path / "latent.onnx")
    assert report.max_abs_diff < 1e-5 and report.tensorrt_compatible, report
    got = torch.from_numpy(run_onnxruntime(tmp_path / "latent.onnx", (w, e, a))[0])
    assert torch.allclose(got, m.edit_latent(w, e, a), atol=1e-5)
    assert torch.equal(got[0], w[0])                       # intensity 0 stays the identity in ONNX Runtime
    with pytest.raises(ValueError, match="part"):
        m.export_module("texture")
    with pytest.raises(ValueError, match="no latent editor"):
        create_model("expression_editor", latent_dim=0).export_module("latent")
