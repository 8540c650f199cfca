"""CIB fine-tuning of LXMERT for robust VQA (Jiang et al., "Correlation Information Bottleneck: Towards
Adapting Pretrained Multimodal Models for Robust Visual Question Answering"; shared/papers.md section 8,
official code jingjing12110/CIB-VQA ``vqa_model.py: CIBVQAModelV2``).

The network is LXMERT (transformers' ``LxmertModel``: 9 language, 5 relational (object) and 5 cross-modality
layers, hidden 768) with the VQA answer head ``logit_fc`` = Linear(768, 1536)-GeLU-LayerNorm(eps 1e-12)-
Linear(1536, num_answers), initialised as BERT (normal std 0.02, zero biases). During training it also returns
the CIB regulariser of ``losses.mutual_info.cib_terms``: a parameter-free CLUB between the input-layer and
last-layer tokens of each modality (the learned CLUB as an option), and the MVMI lower bound (InfoNCE by
default) and symmetrised KL between cosine-matched last-layer language/visual token pairs.

"Input layer" follows the official code: for language the embedding output (word + position + type embeddings,
LayerNorm, dropout), for vision the visual feature encoder's output ((LN(fc(feat)) + LN(fc(box))) / 2,
dropout). transformers' ``output_hidden_states`` starts at the first layer's output, so
:meth:`CIBLxmert.encode` prepends those two tensors (captured by forward hooks on ``embeddings`` and
``encoder.visn_fc``).

state_dict keys are the official ``CIBVQAModelV2``'s: ``lxrt_encoder.{embeddings,encoder,pooler}.*``
(transformers' LxmertModel has LXMERT's own module names: ``encoder.visn_fc``, ``encoder.layer``,
``encoder.r_layers``, ``encoder.x_layers.N.{visual_attention,lang_self_att,visn_self_att,lang_inter,
lang_output,visn_inter,visn_output}``), ``logit_fc.{0,2,3}.*``,
``mi_lb_estimator.mi_estimator.F_func.{0,2}.*``. Pre-trained weights:
LXMERT's ``snap/pretrained/model_LXRT.pth`` (keys ``module.bert.*`` plus the pre-training heads
``module.cls.*``, ``module.obj_predict_head.*``, ``module.answer_head.*``; ``bert.`` becomes
``lxrt_encoder.``, the heads are dropped, as the official ``load`` does), or a Hugging Face
``unc-nlp/lxmert-base-uncased`` folder (``lxmert.*`` keys), through :func:`load_lxmert_pretrained`; nothing is
downloaded.

Inputs: input_ids (B, L) int64 (BERT word pieces, [CLS] ... [SEP], zero-padded; the official L is 20),
attention_mask (B, L) {0, 1}, visual_feats (B, 36, 2048) float32 Faster R-CNN region features, visual_pos
(B, 36, 4) float32 boxes (x1, y1, x2, y2) normalised to [0, 1]. Output: logits (B, num_answers) float32.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..losses.mutual_info import CLUB, LOWER_BOUNDS, MVMIEstimator, cib_terms
from ._registry import register_model

__all__ = ["CIBLxmert", "cib_lxmert", "convert_lxmert_state_dict", "lxmert_config", "load_lxmert_pretrained",
           "lxmert_parameter_count"]

PRETRAINED_FILE = ("LXMERT's pre-trained snap/pretrained/model_LXRT.pth (github.com/airsplay/lxmert, "
                   "'Pre-trained models') or a Hugging Face unc-nlp/lxmert-base-uncased folder")
_HEAD_PREFIXES = ("cls.", "obj_predict_head.", "answer_head.")


def _transformers():
    """transformers (optional: ``pip install 'pyvision_fast[vqa]'``), or an ImportError saying so."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError("CIB-LXMERT is built on transformers' LxmertModel: pip install "
                          f"'pyvision_fast[vqa]' ({exc})") from exc
    return transformers


def lxmert_config(**overrides):
    """transformers' ``LxmertConfig`` with LXMERT base's values (hidden 768, 12 heads, FFN 3072, 9/5/5 layers,
    BERT's uncased vocabulary of 30522, 2048-d region features with 4-d boxes), ``overrides`` replacing
    any."""
    LxmertConfig = _transformers().LxmertConfig
    base = dict(vocab_size=30522, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02, l_layers=9,
                x_layers=5, r_layers=5, visual_feat_dim=2048, visual_pos_dim=4)
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise TypeError(f"lxmert_config: unknown option(s) {unknown}; accepted: {sorted(base)}")
    base.update(overrides)
    if base["hidden_size"] % base["num_attention_heads"]:
        raise ValueError(f"hidden_size {base['hidden_size']} is not a multiple of num_attention_heads "
                         f"{base['num_attention_heads']}")
    return LxmertConfig(**base)


def _keep_output(module: nn.Module, args, output) -> None:
    # a plain function writing onto the module that ran, so deep copies (EMA) keep their own outputs
    module._pvf_output = output


def _take_output(module: nn.Module) -> Tensor:
    out = module.__dict__.pop("_pvf_output")
    return out


class CIBLxmert(nn.Module):
    """LXMERT + the VQA answer head, with the CIB estimators when ``cib`` (``mi_lb``: InfoNCE | NWJ | MINE |
    JSD; ``club``: 'free' (official) | 'learned'). See the module docstring for inputs, outputs and keys."""

    head_keys = ("logit_fc.3.",)

    def __init__(self, config=None, num_answers: int = 3129, cib: bool = True, mi_lb: str = "InfoNCE",
                 club: str = "free"):
        super().__init__()
        LxmertModel = _transformers().LxmertModel
        if num_answers < 1:
            raise ValueError(f"num_answers must be >= 1, got {num_answers}")
        if club not in ("free", "learned"):
            raise ValueError(f"club must be 'free' (the official parameter-free CLUB) or 'learned', got "
                             f"{club!r}")
        if mi_lb not in LOWER_BOUNDS:
            raise ValueError(f"mi_lb must be one of {sorted(LOWER_BOUNDS)}, got {mi_lb!r}")
        config = config if config is not None else lxmert_config()
        self.config, self.num_answers, self.cib = config, num_answers, bool(cib)
        h = config.hidden_size
        self.lxrt_encoder = LxmertModel(config)
        self.logit_fc = nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.LayerNorm(2 * h, eps=1e-12),
                                      nn.Linear(2 * h, num_answers))
        for m in self.logit_fc:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=config.initializer_range)
                nn.init.zeros_(m.bias)
        if self.cib:
            self.mi_ub_estimator = CLUB(h, h, h, learned=club == "learned")
            self.mi_lb_estimator = MVMIEstimator(h, mi_lb)
        self.lxrt_encoder.embeddings.register_forward_hook(_keep_output)
        self.lxrt_encoder.encoder.visn_fc.register_forward_hook(_keep_output)

    def estimator_parameters(self) -> list[nn.Parameter]:
        """The MI estimators' parameters (the official code trains them at 100x the model's lr)."""
        if not self.cib:
            return []
        return [*self.mi_ub_estimator.parameters(), *self.mi_lb_estimator.parameters()]

    def _check(self, input_ids, attention_mask, visual_feats, visual_pos) -> None:
        c = self.config
        if input_ids.ndim != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be (B, L) int64, got {tuple(input_ids.shape)} "
                             f"{input_ids.dtype}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be {tuple(input_ids.shape)}, got "
                             f"{tuple(attention_mask.shape)}")
        B = input_ids.shape[0]
        if visual_feats.ndim != 3 or visual_feats.shape[0] != B or visual_feats.shape[2] != c.visual_feat_dim:
            raise ValueError(f"visual_feats must be ({B}, N, {c.visual_feat_dim}), got "
                             f"{tuple(visual_feats.shape)}")
        if visual_pos.shape != (*visual_feats.shape[:2], c.visual_pos_dim):
            raise ValueError(f"visual_pos must be {(*visual_feats.shape[:2], c.visual_pos_dim)}, got "
                             f"{tuple(visual_pos.shape)}")
        if input_ids.shape[1] > c.max_position_embeddings:
            raise ValueError(f"questions of {input_ids.shape[1]} tokens exceed max_position_embeddings "
                             f"{c.max_position_embeddings}")
        if B and (int(input_ids.min()) < 0 or int(input_ids.max()) >= c.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {c.vocab_size}), got [{int(input_ids.min())}, "
                             f"{int(input_ids.max())}]")

    def encode(self, input_ids: Tensor, attention_mask: Tensor, visual_feats: Tensor, visual_pos: Tensor,
               token_type_ids: Optional[Tensor] = None, output_hidden_states: bool = True) -> dict:
        """LXMERT's outputs: ``pooled_output`` (B, H); ``language_hidden_states`` ((B, L, H) per layer: the
        embedding output, then each of the l_layers and x_layers outputs) and ``vision_hidden_states`` ((B, N,
        H): the visual feature encoder's output, then each r_layer and x_layer output) when
        ``output_hidden_states``; otherwise ``language_hidden_states`` / ``vision_hidden_states`` hold only
        the input-layer and last-layer tensors (all the CIB needs)."""
        self._check(input_ids, attention_mask, visual_feats, visual_pos)
        out = self.lxrt_encoder(input_ids=input_ids, attention_mask=attention_mask, visual_feats=visual_feats,
                                visual_pos=visual_pos, token_type_ids=token_type_ids,
                                output_hidden_states=output_hidden_states, return_dict=True)
        lang0 = _take_output(self.lxrt_encoder.embeddings)
        vis0 = _take_output(self.lxrt_encoder.encoder.visn_fc)
        if output_hidden_states:
            lang = (lang0, *out.language_hidden_states)
            vis = (vis0, *out.vision_hidden_states)
        else:
            lang, vis = (lang0, out.language_output), (vis0, out.vision_output)
        return {"pooled_output": out.pooled_output, "language_hidden_states": lang,
                "vision_hidden_states": vis}

    def forward(self, input_ids: Tensor, attention_mask: Tensor, visual_feats: Tensor, visual_pos: Tensor,
                token_type_ids: Optional[Tensor] = None, compute_cib: bool = False):
        """Logits (B, num_answers); with ``compute_cib`` a dict of ``logit`` and the CIB terms of
        ``losses.mutual_info.cib_terms`` (``cib``, ``upper_bound_l``, ``upper_bound_v``, ``lower_bound_lv``,
        ``skl``) plus ``club_loss`` (the learned CLUB's q fit, 0 for the parameter-free one)."""
        if compute_cib and not self.cib:
            raise ValueError("compute_cib=True needs a model built with cib=True")
        enc = self.encode(input_ids, attention_mask, visual_feats, visual_pos, token_type_ids,
                          output_hidden_states=False)
        logit = self.logit_fc(enc["pooled_output"])
        if not compute_cib:
            return logit
        (l0, l1), (v0, v1) = enc["language_hidden_states"], enc["vision_hidden_states"]
        terms = cib_terms(l0, l1, v0, v1, attention_mask, self.mi_ub_estimator, self.mi_lb_estimator)
        valid = attention_mask > 0
        club_loss = (self.mi_ub_estimator.learning_loss(l0[valid], l1[valid])
                     + self.mi_ub_estimator.learning_loss(v0.flatten(0, 1), v1.flatten(0, 1)))
        return {"logit": logit, **terms, "club_loss": club_loss}

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``models.load_weights`` hook (``--pretrained``): LXMERT/HF/LXMERT-VQA key layouts become this
        model's (``convert_lxmert_state_dict``), the pre-training heads are dropped, and a pre-training
        checkpoint (an encoder only) keeps this model's answer head and estimators as initialised."""
        converted = convert_lxmert_state_dict(state)[0]
        pretraining = any(k.removeprefix("module.").split(".", 1)[0] in ("bert", "lxmert") for k in state)
        if pretraining:
            own = self.state_dict()
            for key in own.keys() - converted.keys():
                if not key.startswith("lxrt_encoder."):
                    converted[key] = own[key]
        return converted


def convert_lxmert_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Maps the key layouts LXMERT weights come in onto ``CIBLxmert``'s; returns (converted, dropped keys).

    * LXMERT pre-training (``model_LXRT.pth``): ``[module.]bert.X`` -> ``lxrt_encoder.X``; ``cls.*``,
      ``obj_predict_head.*``, ``answer_head.*`` dropped.
    * Hugging Face ``LxmertForPreTraining`` / ``LxmertForQuestionAnswering``: ``lxmert.X`` ->
      ``lxrt_encoder.X``; the same heads dropped.
    * LXMERT's VQA fine-tuning (``snap/vqa/*.pth``): ``lxrt_encoder.model.bert.X`` -> ``lxrt_encoder.X``;
      ``logit_fc.*`` kept.
    * Official CIB (``CIBVQAModelV2``) and this model: unchanged.
    """
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        for prefix in ("lxrt_encoder.model.bert.", "bert.", "lxmert."):
            if k.startswith(prefix):
                k = "lxrt_encoder." + k[len(prefix):]
                break
        if k.startswith(_HEAD_PREFIXES):
            dropped.append(key)
            continue
        out[k] = value
    return out, dropped


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        for name in ("model_LXRT.pth", "model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{str(path)!r} holds none of model_LXRT.pth, model.safetensors, "
                                f"pytorch_model.bin; CIB starts from {PRETRAINED_FILE}")
    raise FileNotFoundError(f"LXMERT weights {str(path)!r} do not exist; CIB starts from {PRETRAINED_FILE} "
                            f"(nothing is downloaded)")


def load_lxmert_pretrained(model: CIBLxmert, path: Union[str, os.PathLike]) -> list[str]:
    """Loads pre-trained LXMERT weights into ``model.lxrt_encoder`` (every encoder tensor must be in the file
    with its shape); the answer head and the MI estimators keep their initialisation. ``path``:
    ``model_LXRT.pth`` (read with ``torch.load(weights_only=True)``), a ``.safetensors`` file, or a folder
    holding one of ``model_LXRT.pth`` / ``model.safetensors`` / ``pytorch_model.bin``. Returns the file's keys
    that were not used (the pre-training heads)."""
    from .weights import read_state_dict

    file = _weights_file(Path(os.fspath(path)))
    converted, dropped = convert_lxmert_state_dict(read_state_dict(file))
    own = model.lxrt_encoder.state_dict()
    encoder = {k[len("lxrt_encoder."):]: v for k, v in converted.items() if k.startswith("lxrt_encoder.")}
    missing = sorted(set(own) - set(encoder))
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in encoder.items()
           if k in own and own[k].shape != v.shape]
    if missing or bad:
        raise ValueError(f"{file} does not fit the LXMERT encoder ({model.config.l_layers}/"
                         f"{model.config.r_layers}/{model.config.x_layers} layers, hidden "
                         f"{model.config.hidden_size}): missing {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}"
                         f"{'; shape mismatch ' + '; '.join(bad[:4]) if bad else ''}")
    unused = sorted(set(encoder) - set(own))
    model.lxrt_encoder.load_state_dict({k: v for k, v in encoder.items() if k in own}, strict=True)
    return dropped + [f"lxrt_encoder.{k}" for k in unused] + sorted(k for k in converted
                                                                     if not k.startswith("lxrt_encoder."))


def lxmert_parameter_count(config, num_answers: int) -> int:
    """Parameters of LXMERT + the answer head counted from the config by hand (no module built)."""
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size

    def linear(i, o):
        return i * o + o

    ln = 2 * h
    embeddings = (v + config.max_position_embeddings + config.type_vocab_size) * h + ln
    visual = linear(config.visual_feat_dim, h) + ln + linear(config.visual_pos_dim, h) + ln
    attention = 4 * linear(h, h) + ln                    # q, k, v, output dense + LayerNorm
    ffn = linear(h, f) + linear(f, h) + ln
    bert_layer = attention + ffn
    x_layer = attention + 2 * attention + 2 * ffn        # shared cross-attention, 2 self-attentions, 2 FFNs
    encoder = visual + (config.l_layers + config.r_layers) * bert_layer + config.x_layers * x_layer
    pooler = linear(h, h)
    head = linear(h, 2 * h) + 2 * (2 * h) + linear(2 * h, num_answers)
    return embeddings + encoder + pooler + head


@register_model(pretrained_file=PRETRAINED_FILE)
def cib_lxmert(num_classes: int = 3129, cib: bool = True, mi_lb: str = "InfoNCE", club: str = "free",
               lxmert_weights: Optional[str] = None, **config) -> CIBLxmert:
    """CIB-LXMERT for VQA v2's 3129 answers; ``config`` overrides ``lxmert_config`` (hidden_size, l_layers,
    x_layers, r_layers, num_attention_heads, intermediate_size, vocab_size, visual_feat_dim, dropouts, ...).
    ``lxmert_weights``: pre-trained LXMERT to start from (``load_lxmert_pretrained``)."""
    model = CIBLxmert(lxmert_config(**config), num_answers=num_classes, cib=cib, mi_lb=mi_lb, club=club)
    if lxmert_weights:
        load_lxmert_pretrained(model, lxmert_weights)
    return model
