"""CIB-LXMERT (``models.cib``): a tiny LXMERT forward with the per-layer hidden states the CIB needs, the CIB
terms and their gradients, the official state_dict names, the LXMERT ``model_LXRT.pth`` / Hugging Face key
conversion on a tiny config, and the full-size parameter count against a hand count."""
from __future__ import annotations

import copy

import pytest
import torch

from pyvision_fast.models import create_model
from pyvision_fast.models.cib import (CIBLxmert, cib_lxmert, convert_lxmert_state_dict,
                                      load_lxmert_pretrained, lxmert_config, lxmert_parameter_count)

TINY = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, l_layers=2, x_layers=1, r_layers=1,
            vocab_size=40, visual_feat_dim=16, max_position_embeddings=24)


def tiny_model(**kw) -> CIBLxmert:
    torch.manual_seed(0)
    return cib_lxmert(num_classes=kw.pop("num_classes", 7), **{**TINY, **kw})


def tiny_batch(B=3, L=6, N=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (B, L), generator=gen)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids[mask == 0] = 0
    feats = torch.rand(B, N, 16, generator=gen)
    xy = torch.rand(B, N, 2, generator=gen) * 0.5
    boxes = torch.cat([xy, xy + 0.4], dim=-1)
    return ids, mask, feats, boxes


def test_forward_and_hidden_states():
    model = tiny_model().eval()
    ids, mask, feats, boxes = tiny_batch()
    with torch.no_grad():
        logits = model(ids, mask, feats, boxes)
        enc = model.encode(ids, mask, feats, boxes)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    lang, vis = enc["language_hidden_states"], enc["vision_hidden_states"]
    assert len(lang) == 1 + 2 + 1 and len(vis) == 1 + 1 + 1         # input layer + l/r layers + x layers
    assert all(t.shape == (3, 6, 32) for t in lang) and all(t.shape == (3, 5, 32) for t in vis)
    with torch.no_grad():
        emb = model.lxrt_encoder.embeddings(ids, torch.zeros_like(ids))
        v0 = model.lxrt_encoder.encoder.visn_fc(feats, boxes)
        out = model.lxrt_encoder(input_ids=ids, attention_mask=mask, visual_feats=feats, visual_pos=boxes)
    torch.testing.assert_close(lang[0], emb)
    torch.testing.assert_close(vis[0], v0)
    torch.testing.assert_close(lang[-1], out.language_output)
    torch.testing.assert_close(vis[-1], out.vision_output)
    # the answer head on the pooled [CLS] output: Linear-GELU-LayerNorm-Linear
    head = model.logit_fc
    x = head[0](out.pooled_output)
    x = torch.nn.functional.gelu(x)
    x = torch.nn.functional.layer_norm(x, (64,), head[2].weight, head[2].bias, 1e-12)
    torch.testing.assert_close(logits, head[3](x))
    # deep copies (the engine's EMA) run on their own
    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(ids, mask, feats, boxes), logits)


def test_cib_terms_and_gradients():
    model = tiny_model().train()
    ids, mask, feats, boxes = tiny_batch()
    out = model(ids, mask, feats, boxes, compute_cib=True)
    for key in ("logit", "cib", "upper_bound_l", "upper_bound_v", "lower_bound_lv", "skl", "club_loss"):
        assert key in out and torch.isfinite(out[key]).all(), key
    torch.testing.assert_close(out["cib"], out["upper_bound_l"] + out["upper_bound_v"] - out["lower_bound_lv"]
                               + out["skl"])
    assert float(out["club_loss"]) == 0.0                    # the parameter-free CLUB has nothing to fit
    loss = out["logit"].sum() * 0 + out["cib"]
    loss.backward()
    assert model.lxrt_encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert model.lxrt_encoder.encoder.visn_fc.visn_fc.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.mi_lb_estimator.parameters())
    assert len(model.estimator_parameters()) == 4
    learned = tiny_model(club="learned", mi_lb="JSD").train()
    out = learned(ids, mask, feats, boxes, compute_cib=True)
    assert float(out["club_loss"].detach()) != 0.0 and len(learned.estimator_parameters()) == 8 + 6
    plain = tiny_model(cib=False)
    assert plain.estimator_parameters() == []
    with pytest.raises(ValueError, match="cib=True"):
        plain(ids, mask, feats, boxes, compute_cib=True)


def test_bad_inputs_are_named():
    model = tiny_model()
    ids, mask, feats, boxes = tiny_batch()
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(ids, mask[:, :3], feats, boxes)
    with pytest.raises(ValueError, match=r"visual_feats must be \(3, N, 16\)"):
        model(ids, mask, feats[..., :8], boxes)
    with pytest.raises(ValueError, match="visual_pos must be"):
        model(ids, mask, feats, boxes[..., :2])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 40\)"):
        model(ids + 100, mask, feats, boxes)
    with pytest.raises(ValueError, match="club must be"):
        tiny_model(club="vub")
    with pytest.raises(ValueError, match="mi_lb must be one of"):
        tiny_model(mi_lb="CPC")
    with pytest.raises(TypeError, match="unknown option"):
        tiny_model(n_layers=3)


def test_state_dict_keys_are_the_official_cib_model_keys():
    keys = set(tiny_model().state_dict())
    # names of CIB-VQA's CIBVQAModelV2 (lxrt/modeling.py: LXMERTModelCIBv2 as lxrt_encoder, logit_fc, InfoNCE)
    for k in ("lxrt_encoder.embeddings.word_embeddings.weight", "lxrt_encoder.embeddings.LayerNorm.bias",
              "lxrt_encoder.encoder.visn_fc.visn_fc.weight",
              "lxrt_encoder.encoder.visn_fc.box_layer_norm.bias",
              "lxrt_encoder.encoder.layer.1.attention.self.query.weight",
              "lxrt_encoder.encoder.layer.0.attention.output.LayerNorm.weight",
              "lxrt_encoder.encoder.r_layers.0.intermediate.dense.weight",
              "lxrt_encoder.encoder.x_layers.0.visual_attention.att.key.bias",
              "lxrt_encoder.encoder.x_layers.0.lang_self_att.self.value.weight",
              "lxrt_encoder.encoder.x_layers.0.visn_output.LayerNorm.weight",
              "lxrt_encoder.pooler.dense.weight", "logit_fc.0.weight", "logit_fc.2.weight", "logit_fc.3.bias",
              "mi_lb_estimator.mi_estimator.F_func.0.weight", "mi_lb_estimator.mi_estimator.F_func.2.bias"):
        assert k in keys, k
    assert not any(k.startswith("mi_ub_estimator.") for k in keys)     # the parameter-free CLUB


def _lxrt_file_state(model: CIBLxmert) -> dict[str, torch.Tensor]:
    """A state_dict in model_LXRT.pth's layout (LXRTPretraining saved from DataParallel): module.bert.* plus
    the pre-training heads."""
    state = {f"module.bert.{k}": v.clone() + 1.0 for k, v in model.lxrt_encoder.state_dict().items()}
    state["module.cls.predictions.bias"] = torch.zeros(40)
    state["module.obj_predict_head.decoder_dict.obj.weight"] = torch.zeros(1600, 32)
    state["module.answer_head.logit_fc.3.weight"] = torch.zeros(9500, 64)
    return state


def test_lxrt_checkpoint_key_conversion_and_loading(tmp_path):
    src = tiny_model()
    state = _lxrt_file_state(src)
    converted, dropped = convert_lxmert_state_dict(state)
    assert converted["lxrt_encoder.encoder.x_layers.0.visual_attention.att.query.weight"] is \
        state["module.bert.encoder.x_layers.0.visual_attention.att.query.weight"]
    assert sorted(dropped) == ["module.answer_head.logit_fc.3.weight", "module.cls.predictions.bias",
                               "module.obj_predict_head.decoder_dict.obj.weight"]
    torch.save(state, tmp_path / "model_LXRT.pth")
    model = tiny_model()
    head_before = {k: v.clone() for k, v in model.logit_fc.state_dict().items()}
    unused = load_lxmert_pretrained(model, tmp_path / "model_LXRT.pth")
    for k, v in src.lxrt_encoder.state_dict().items():
        torch.testing.assert_close(model.lxrt_encoder.state_dict()[k], v + 1.0)
    for k, v in model.logit_fc.state_dict().items():
        assert torch.equal(v, head_before[k])
    assert "cls.predictions.bias" in unused          # models.read_state_dict removed DataParallel's module.
    # the engine's --pretrained (models.load_weights) takes the same file: encoder loaded, head kept
    from pyvision_fast.models import load_weights

    model5 = tiny_model(num_classes=9)
    head5 = model5.logit_fc[3].weight.clone()
    load_weights(model5, tmp_path / "model_LXRT.pth")
    torch.testing.assert_close(model5.lxrt_encoder.pooler.dense.bias, src.lxrt_encoder.pooler.dense.bias + 1)
    assert torch.equal(model5.logit_fc[3].weight, head5)
    # a folder holding the file, and the factory argument
    model2 = tiny_model(lxmert_weights=str(tmp_path))
    torch.testing.assert_close(model2.lxrt_encoder.pooler.dense.weight,
                               src.lxrt_encoder.pooler.dense.weight + 1)
    # Hugging Face layout (LxmertForPreTraining: lxmert.*) in model.safetensors
    from safetensors.torch import save_file

    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({f"lxmert.{k}": v.contiguous() for k, v in src.lxrt_encoder.state_dict().items()},
              str(hf / "model.safetensors"))
    model3 = tiny_model()
    load_lxmert_pretrained(model3, hf)
    torch.testing.assert_close(model3.lxrt_encoder.embeddings.word_embeddings.weight,
                               src.lxrt_encoder.embeddings.word_embeddings.weight)
    # LXMERT's own VQA fine-tuning layout loads through models.load_weights (adapt_state_dict)
    from pyvision_fast.models import load_weights

    vqa = {f"lxrt_encoder.model.bert.{k}": v for k, v in src.lxrt_encoder.state_dict().items()}
    vqa.update({f"logit_fc.{k}": v for k, v in src.logit_fc.state_dict().items()})
    vqa.update({f"mi_lb_estimator.{k}": v for k, v in src.mi_lb_estimator.state_dict().items()})
    torch.save(vqa, tmp_path / "BEST.pth")
    model4 = load_weights(tiny_model(), tmp_path / "BEST.pth")
    torch.testing.assert_close(model4.logit_fc[3].weight, src.logit_fc[3].weight)


def test_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_LXRT.pth"):
        load_lxmert_pretrained(tiny_model(), tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="model_LXRT.pth"):
        load_lxmert_pretrained(tiny_model(), tmp_path)
    with pytest.raises(FileNotFoundError, match="model_LXRT.pth"):
        create_model("cib_lxmert", pretrained=True, **TINY)
    state = _lxrt_file_state(tiny_model())
    torch.save(state, tmp_path / "model_LXRT.pth")
    with pytest.raises(ValueError, match=r"does not fit the LXMERT encoder \(2/1/2 layers"):
        load_lxmert_pretrained(tiny_model(x_layers=2), tmp_path / "model_LXRT.pth")


def test_full_size_parameter_count_by_hand():
    with torch.device("meta"):
        model = create_model("cib_lxmert")
    total = sum(p.numel() for p in model.parameters())
    estimators = sum(p.numel() for p in model.estimator_parameters())
    # by hand: hidden 768, FFN 3072, vocabulary 30522, 512 positions, 2 types, 9/5/5 layers, 2048 + 4 inputs
    h, f = 768, 3072
    ln = 2 * h
    embeddings = (30522 + 512 + 2) * h + ln                                       # 23,837,184
    visual = (2048 * h + h) + ln + (4 * h + h) + ln                              # 1,579,776
    attention = 4 * (h * h + h) + ln                                             # 2,363,904
    ffn = (h * f + f) + (f * h + h) + ln                                         # 4,723,968
    layers = 14 * (attention + ffn) + 5 * (3 * attention + 2 * ffn)              # 9 lang + 5 rel, 5 cross
    pooler = h * h + h
    head = (h * 2 * h + 2 * h) + 2 * 2 * h + (2 * h * 3129 + 3129)               # 5,991,513
    infonce = (768 * 384 + 384) + (384 + 1)                                      # critic on the 384-d halves
    assert embeddings + visual + layers + pooler + head == 213_930_297
    assert total - estimators == 213_930_297 == lxmert_parameter_count(lxmert_config(), 3129)
    assert estimators == infonce == 295_681
    assert model.logit_fc[3].out_features == 3129 and model.config.l_layers == 9
