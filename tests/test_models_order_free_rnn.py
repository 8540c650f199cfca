"""Order-Free RNN (``models.order_free_rnn``): the parameter count against a hand count (ResNet-101 backbone
from torchvision), state_dict keys, the candidate pool (no label twice), the order-free target, greedy = beam
1, batched = one-by-one beam search, beam search against an exhaustive search of every path, weights loading
and bad input."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from pyvision_fast.models import create_model, list_models, load_weights, save_safetensors
from pyvision_fast.models.order_free_rnn import OrderFreeRNN, order_free_targets

TINY = dict(backbone="timm/test_resnet", grid=3, attention_dim=16, hidden_dim=24, fc_dim=20, dropout=0.0)


def tiny(num_classes=5, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(TINY)
    args.update(kw)
    return create_model("order_free_rnn", num_classes=num_classes, **args).eval()


def encoded(model, n=6, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.encode(torch.randn(n, 3, 40, 40))


def _decoder_count(F, C, A, H, D, end=True):
    """Hand count of the layers beside the backbone (module docstring's formula)."""
    V = C + int(end)
    return ((F * A + A) + (H * A + A) + (A + 1) + (H * F + F) + 2 * (F * H + H)
            + (4 * H * (2 * C + F + H) + 8 * H) + (H * D + D) + (D * V + V))


def test_parameter_count_and_keys_resnet101():
    assert {"order_free_rnn", "order_free_rnn_resnet101"} <= set(list_models("order_free_rnn*"))
    model = create_model("order_free_rnn_resnet101", num_classes=80)
    tv = torchvision.models.resnet101(weights=None)
    tv_count = sum(p.numel() for p in tv.parameters())
    assert tv_count == 44_549_160                        # torchvision's ResNet-101 (1000-class fc)
    trunk = tv_count - (2048 * 1000 + 1000)
    assert trunk == 42_500_160
    expected = trunk + (2048 * 80 + 80) + _decoder_count(2048, 80, 512, 512, 512)
    assert _decoder_count(2048, 80, 512, 512, 512) == (1_049_088 + 262_656 + 513 + 1_050_624 + 2 * 1_049_088
                                                       + 5_574_656 + 262_656 + 41_553)
    assert sum(p.numel() for p in model.parameters()) == expected == 53_004_002
    keys = model.state_dict()
    # torchvision's keys under backbone.*, the classifier resized to 80 labels
    assert {f"backbone.{k}" for k in tv.state_dict()} == {k for k in keys if k.startswith("backbone.")}
    assert keys["backbone.fc.weight"].shape == (80, 2048)
    for k, shape in {"attention.encoder_att.weight": (512, 2048), "attention.decoder_att.weight": (512, 512),
                     "attention.full_att.weight": (1, 512), "f_beta.weight": (2048, 512),
                     "init_h.weight": (512, 2048), "init_c.weight": (512, 2048),
                     "decode_step.weight_ih": (2048, 2 * 80 + 2048), "decode_step.weight_hh": (2048, 512),
                     "fc1.weight": (512, 512), "fc2.weight": (81, 512)}.items():
        assert keys[k].shape == shape, k
    assert model.grid == 14 and model.num_outputs == 81


def test_grid_and_shapes():
    model = tiny(num_classes=5)
    x = torch.randn(2, 3, 40, 40)
    v, logits = model.encode(x)
    assert v.shape == (2, 9, model.feature_dim) and logits.shape == (2, 5)
    # the grid is the average of the backbone's map over each cell; for a 2x2 map pooled to 3x3, cell (0, 0)
    # is map pixel (0, 0)
    fmap = model.backbone.forward_features(x)
    assert fmap.shape[-2:] == (2, 2)
    torch.testing.assert_close(v[:, 0], fmap[:, :, 0, 0])
    torch.testing.assert_close(logits, model.backbone.forward_head(fmap))
    out = model(x, torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 0, 1]]), decode=True, beam_size=2)
    assert out["rnn_nll"].ndim == 0 and int(out["rnn_terms"]) == 3 + 2   # labels + one end per image
    assert out["labels"].shape == (2, 5) and out["labels"].dtype == torch.bool
    assert out["scores"].shape == (2, 5) and out["path_logp"].shape == (2,)


def test_order_free_target_is_the_most_probable_remaining_label():
    logp = torch.log(torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05], [0.3, 0.3, 0.1, 0.2, 0.1],
                                   [0.2, 0.2, 0.2, 0.2, 0.2]]))
    remaining = torch.tensor([[True, False, True, True], [False, False, True, True], [False] * 4])
    idx, has = order_free_targets(logp, remaining)
    # row 0: label 1 (0.5) is not a ground-truth label still to emit; among 0, 2, 3 the best is 2 (0.2)
    assert idx[:2].tolist() == [2, 3] and has.tolist() == [True, True, False]


@torch.no_grad()
def test_order_free_loss_against_a_step_by_step_computation():
    model = tiny(num_classes=4, end_token=True)
    v, logits = encoded(model, n=2)
    targets = torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]])
    loss, terms = model.order_free_loss(v, logits, targets)
    # by hand, one image at a time: pick the most probable remaining label, feed it back, end after the last
    total, count = 0.0, 0
    for i in range(2):
        h, c, att = model.init_state(v[i:i + 1])
        prev = torch.sigmoid(logits[i:i + 1]).unsqueeze(1)
        emitted = torch.zeros(1, 1, 4, dtype=torch.bool)
        todo = set(targets[i].nonzero().flatten().tolist())
        while True:
            h, c, lp = model.step(v[i:i + 1], att, h, c, prev, emitted)
            lp = lp[0, 0]
            if not todo:
                total -= float(lp[4])
                count += 1
                break
            j = max(todo, key=lambda k: float(lp[k]))
            total -= float(lp[j])
            count += 1
            todo.remove(j)
            emitted[0, 0, j] = True
            prev = lp[:4].exp().view(1, 1, 4)
    assert int(terms) == count == 6
    assert float(loss) == pytest.approx(total / count, rel=1e-5)


def _check_sequences(out, num_classes):
    for seq, labels in zip(out["sequence"], out["labels"]):
        emitted = [int(j) for j in seq if j >= 0]
        assert len(emitted) == len(set(emitted)), emitted           # never twice
        assert sorted(emitted) == labels.nonzero().flatten().tolist()
        assert all(0 <= j < num_classes for j in emitted)
        n = len(emitted)
        assert (seq[n:] == -1).all()


@pytest.mark.parametrize("end_token", [True, False])
def test_candidate_pool_never_emits_a_label_twice(end_token):
    model = tiny(num_classes=5, end_token=end_token)
    with torch.no_grad():
        model.fc2.bias[1] += 30.0   # label 1 dominates every step: without the pool it would repeat
    v, logits = encoded(model)
    for out in (model.greedy_decode(v, logits, threshold=0.0),
                model.beam_search(v, logits, 3, threshold=0.0)):
        _check_sequences(out, 5)
        assert out["labels"][:, 1].all() and (out["sequence"][:, 0] == 1).all()
    # no end signal and no threshold: every path runs through all labels, each once
    if not end_token:
        out = model.beam_search(v, logits, 2, threshold=0.0)
        assert out["labels"].all()
        assert sorted(out["sequence"][0].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("end_token,threshold", [(True, 1e-3), (True, 0.05), (False, 0.02), (False, 0.0)])
def test_beam_one_equals_greedy(end_token, threshold):
    model = tiny(num_classes=6, end_token=end_token, seed=3)
    v, logits = encoded(model, n=8)
    g = model.greedy_decode(v, logits, threshold=threshold)
    b = model.beam_search(v, logits, 1, threshold=threshold)
    assert torch.equal(g["sequence"], b["sequence"]) and torch.equal(g["labels"], b["labels"])
    torch.testing.assert_close(g["path_logp"], b["path_logp"])
    torch.testing.assert_close(g["scores"], b["scores"])
    lengths = (g["sequence"] >= 0).sum(1)
    assert lengths.max() > 0
    if not end_token:  # only the threshold stops a path: at 0 every path takes all 6 labels
        assert (lengths == 6).all() if threshold == 0 else (lengths < 6).all()
        if threshold > 0:
            assert (g["path_logp"] >= math.log(threshold)).all()


@pytest.mark.parametrize("k", [2, 4])
def test_batched_beam_search_equals_one_image_at_a_time(k):
    model = tiny(num_classes=6, seed=5)
    v, logits = encoded(model, n=5)
    batched = model.beam_search(v, logits, k)
    for i in range(5):
        one = model.beam_search(v[i:i + 1], logits[i:i + 1], k)
        assert torch.equal(one["sequence"][0], batched["sequence"][i]), i
        torch.testing.assert_close(one["path_logp"][0], batched["path_logp"][i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(one["scores"][0], batched["scores"][i], rtol=1e-5, atol=1e-6)
    _check_sequences(batched, 6)


def _all_paths(model, v, logits, threshold):
    """Every path a decoder can take for one image (v (1, P, F)), scored step by step: lists of labels that
    end with the end signal (the model has one here), each label allowed while the path probability stays
    >= threshold. Returns {tuple(labels): log path probability including the end signal}."""
    C = logits.shape[1]
    out = {}

    def walk(prefix, state, logp_sum):
        h, c, prev, emitted = state
        h, c, lp = model.step(v, att, h, c, prev, emitted)
        lp = lp[0, 0].double()
        out[tuple(prefix)] = logp_sum + float(lp[C])
        for j in range(C):
            if j in prefix or logp_sum + float(lp[j]) < math.log(threshold):
                continue
            e = emitted.clone()
            e[0, 0, j] = True
            walk(prefix + [j], (h, c, lp[:C].exp().float().view(1, 1, C), e), logp_sum + float(lp[j]))

    h, c, att = model.init_state(v)
    walk([], (h, c, torch.sigmoid(logits).unsqueeze(1), torch.zeros(1, 1, C, dtype=torch.bool)), 0.0)
    return out


@torch.no_grad()
def test_wide_beam_finds_the_most_probable_path():
    model = tiny(num_classes=3, seed=7)
    v, logits = encoded(model, n=3)
    for i in range(3):
        paths = _all_paths(model, v[i:i + 1], logits[i:i + 1], 1e-3)
        assert len(paths) == 16  # 1 + 3 + 6 + 6 ordered label sets, each closed by the end signal
        best = max(paths, key=paths.get)
        out = model.beam_search(v[i:i + 1], logits[i:i + 1], 16, threshold=1e-3)
        got = tuple(int(j) for j in out["sequence"][0] if j >= 0)
        assert got == best
        assert float(out["path_logp"][0]) == pytest.approx(paths[best], abs=1e-5)
        # greedy follows the locally best step: its path is one of them, never more probable
        g = model.greedy_decode(v[i:i + 1], logits[i:i + 1], threshold=1e-3)
        gp = tuple(int(j) for j in g["sequence"][0] if j >= 0)
        assert float(g["path_logp"][0]) == pytest.approx(paths[gp], abs=1e-5) and paths[gp] <= paths[best]


def test_torchvision_backbone_weights_load(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    save_safetensors(tv.state_dict(), tmp_path / "r18.safetensors")
    model = create_model("order_free_rnn", backbone="resnet18", num_classes=7, grid=2, attention_dim=8,
                         hidden_dim=8, fc_dim=8)
    fc_before = model.backbone.fc.weight.detach().clone()
    att_before = model.attention.encoder_att.weight.detach().clone()
    load_weights(model, tmp_path / "r18.safetensors")
    torch.testing.assert_close(model.backbone.conv1.weight, tv.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(model.backbone.fc.weight, fc_before)            # 1000 -> 7 classes: left at init
    assert torch.equal(model.attention.encoder_att.weight, att_before)
    # torchvision's own forward of the trunk gives the model's preliminary logits
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tv.fc = model.backbone.fc
        torch.testing.assert_close(model.encode(x)[1], tv.eval()(x))


def test_bad_input():
    with pytest.raises(ValueError, match="backbone must be one of"):
        OrderFreeRNN(5, backbone="vgg16")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        OrderFreeRNN(0, **TINY)
    model = tiny(num_classes=5)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"targets must be \(B, C\)"):
        model(torch.randn(2, 3, 32, 32), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"targets must be multi-hot \(0/1"):
        model(torch.randn(2, 3, 32, 32), torch.full((2, 5), 2.0))
    with pytest.raises(ValueError, match="stage must be"):
        model(torch.randn(2, 3, 32, 32), torch.zeros(2, 5), stage="rnn")
    v, logits = encoded(model, n=2)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        model.beam_search(v, logits, 0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        model.beam_search(v, logits, 2, threshold=1.5)


def test_cnn_stage_touches_every_decoder_parameter():
    model = tiny(num_classes=5).train()
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 0, 0]]), stage="cnn")
    assert float(out["rnn_nll"].detach()) == 0.0 and int(out["rnn_terms"]) == 0
    (out["rnn_nll"] + out["cnn_logits"].sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if not name.startswith("backbone."):
            assert float(p.grad.abs().sum()) == 0.0, name
