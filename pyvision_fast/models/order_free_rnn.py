"""Order-Free RNN with visual attention for multi-label classification (Chen, Chen, Yeh, Wang, AAAI 2018,
arXiv 1707.05495; shared/papers.md section 11). No official code exists; this follows the paper's figure and
text, with Show-Attend-Tell's attention (and its layer names where a layer is the same).

* **M_map** (``backbone``): a CNN, by default torchvision's ResNet-101 (keys ``backbone.*`` are torchvision's,
  so an ImageNet or a fine-tuned torchvision state_dict loads under the prefix). Its last feature map is
  average pooled to a ``grid`` x ``grid`` map (14 x 14, ``nn.AdaptiveAvgPool2d`` as Show-Attend-Tell's
  encoder), giving ``v_feat`` (B, grid^2, F); its own classifier on the global average (torchvision's ``fc``,
  resized to ``num_classes``) gives the preliminary logits, ``v_prob = sigmoid(logits)``.
  ``backbone="timm/<name>"`` takes any timm CNN instead (``forward_features`` / ``forward_head``).
* **M_att** (Show-Attend-Tell soft attention): ``e = full_att(ReLU(encoder_att(v) + decoder_att(h)))``,
  ``alpha = softmax(e)`` over the grid, ``z = sigmoid(f_beta(h)) * sum alpha v``.
* **LSTM** (``decode_step``, an ``nn.LSTMCell``): input ``[p_{t-1}, z_t, yhat_{t-1}]``: the previous step's
  label probabilities (``v_prob`` at t = 1), the attended feature, the multi-hot of the labels emitted so far;
  ``h0 = init_h(mean v)``, ``c0 = init_c(mean v)``.
* **M_pred**: ``fc2(dropout(ReLU(fc1(h_t))))`` gives logits over the ``num_classes`` labels and, with
  ``end_token=True``, one more output: the end signal (index ``num_classes``). The **candidate pool** masks
  the labels already emitted (logit -inf), so ``p_t = softmax`` over the labels not yet emitted (and end): no
  label can be emitted twice.

Training (``order_free_loss``): at step t the target is the ground-truth label not yet emitted to which the
model gives the highest probability ``p_t`` (the paper's order-free target; no fixed label order), and that
label is fed back as emitted; once every ground-truth label is emitted the target is the end signal (with
``end_token``). The loss is the mean over (image, step) of ``-log p_t[target]``.

Inference (``greedy_decode``, ``beam_search``): a path emits labels while its path probability (the product of
the probabilities of its emitted labels) stays >= ``threshold`` and until it emits the end signal, runs out of
labels or reaches ``max_steps``. ``beam_search`` keeps the ``beam_size`` most probable paths per image and
advances all images and beams in one set of tensor operations per step (attention broadcasts the (B, k) beams
against each image's features without copying them); finished paths compete with the growing ones by path
probability (the end signal's probability included). ``beam_size=1`` is greedy decoding.

Parameters beyond the backbone (F features, C labels, V = C + end, A attention, H hidden, D fc1 width):
``encoder_att`` F A + A, ``decoder_att`` H A + A, ``full_att`` A + 1, ``f_beta`` H F + F, ``init_h`` and
``init_c`` F H + H each, ``decode_step`` 4H (2C + F + H) + 8H, ``fc1`` H D + D, ``fc2`` D V + V; the
backbone's classifier is F C + C (torchvision's ResNet-101 without ``fc``: 42,500,160).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["OrderFreeRNN", "order_free_rnn", "order_free_rnn_resnet101", "order_free_targets",
           "TORCHVISION_RESNETS"]

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
NEG_INF = float("-inf")


def order_free_targets(logp: Tensor, remaining: Tensor) -> tuple[Tensor, Tensor]:
    """The order-free target of one step: for each row, the index of the ground-truth label still to emit that
    has the highest (log-)probability. ``logp`` (B, V) float, ``remaining`` (B, C) bool (C <= V). Returns
    (index (B,) int64, has_label (B,) bool); rows without a remaining label get index 0 and False."""
    C = remaining.shape[1]
    scores = logp[:, :C].detach().masked_fill(~remaining, NEG_INF)
    return scores.argmax(dim=1), remaining.any(dim=1)


class SoftAttention(nn.Module):
    """Show-Attend-Tell's soft attention: ``e = full_att(ReLU(encoder_att(v) + decoder_att(h)))``.
    ``forward(att_v (B, P, A) = encoder_att(v), v (B, P, F), h (B, K, H))`` -> (context (B, K, F), alpha
    (B, K, P)); the K beams of an image share its features without copies."""

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_att = nn.Linear(feature_dim, attention_dim)
        self.decoder_att = nn.Linear(hidden_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, att_v: Tensor, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        e = self.full_att(F.relu(att_v.unsqueeze(1) + self.decoder_att(h).unsqueeze(2))).squeeze(-1)
        alpha = e.softmax(dim=-1)
        return torch.bmm(alpha, v), alpha


class OrderFreeRNN(nn.Module):
    """See the module docstring. ``forward(images (B, 3, H, W) float, targets (B, C) multi-hot or None, *,
    stage="joint"|"cnn", decode=False, beam_size=1, threshold=None)`` returns a dict:

    * ``cnn_logits`` (B, C): the preliminary classifier's logits (``v_prob`` = their sigmoid);
    * with ``targets``: ``rnn_nll`` (scalar, the order-free loss; with ``stage="cnn"`` a zero that still
      touches every decoder parameter, so DDP sees them used) and ``rnn_terms`` (number of (image, step)
      terms);
    * with ``decode``: ``labels`` (B, C) bool (what the decoder emitted), ``scores`` (B, C) float (each
      label's highest step probability along the chosen path), ``path_logp`` (B,) and ``sequence`` (B, T),
      from ``beam_search``."""

    def __init__(self, num_classes: int = 80, backbone: str = "resnet101", grid: int = 14,
                 attention_dim: int = 512, hidden_dim: int = 512, fc_dim: int = 512, dropout: float = 0.5,
                 end_token: bool = True, threshold: float = 1e-3, max_steps: Optional[int] = None,
                 backbone_args: Optional[dict] = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"OrderFreeRNN: num_classes must be >= 1, got {num_classes}")
        if grid < 1:
            raise ValueError(f"OrderFreeRNN: grid must be >= 1, got {grid}")
        self.num_classes, self.grid, self.end_token = num_classes, grid, bool(end_token)
        self.threshold = float(threshold)
        self.max_steps = max_steps
        self.backbone_name = backbone
        args = dict(backbone_args or {})
        if backbone in TORCHVISION_RESNETS:
            import torchvision

            self.backbone = getattr(torchvision.models, backbone)(weights=None, num_classes=num_classes,
                                                                   **args)
            self.feature_dim = self.backbone.fc.in_features
            self._timm = False
        elif backbone.startswith("timm/"):
            import timm

            self.backbone = timm.create_model(backbone[5:], pretrained=False, num_classes=num_classes, **args)
            self.feature_dim = self.backbone.num_features
            self._timm = True
        else:
            raise ValueError(f"OrderFreeRNN: backbone must be one of {TORCHVISION_RESNETS} (torchvision) or "
                             f"'timm/<model name>', got {backbone!r}")
        Fd, H, A, D = self.feature_dim, hidden_dim, attention_dim, fc_dim
        C = num_classes
        self.num_outputs = C + int(self.end_token)
        self.pool = nn.AdaptiveAvgPool2d((grid, grid))
        self.attention = SoftAttention(Fd, H, A)
        self.f_beta = nn.Linear(H, Fd)
        self.init_h = nn.Linear(Fd, H)
        self.init_c = nn.Linear(Fd, H)
        self.decode_step = nn.LSTMCell(2 * C + Fd, H)
        self.fc1 = nn.Linear(H, D)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(D, self.num_outputs)

    @property
    def head_keys(self) -> tuple[str, ...]:
        """The backbone classifier's key prefix: ``load_weights`` leaves it at its initialisation when a
        checkpoint's class count differs (ImageNet's 1000)."""
        name = self.backbone.pretrained_cfg.get("classifier", "fc") if self._timm else "fc"
        return (f"backbone.{name}.",)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A backbone-only state_dict (torchvision's or timm's keys, no ``backbone.`` prefix) becomes this
        model's: the keys go under ``backbone.``, the decoder keeps its current values. A full state_dict of
        this model passes unchanged."""
        if any(k.startswith("backbone.") for k in state):
            return dict(state)
        out = {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        out.update({f"backbone.{k}": v for k, v in state.items()})
        return out

    # --- M_map ----------------------------------------------------------------------------------------------
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) float -> (v_feat (B, grid^2, F), preliminary logits (B, C))."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"OrderFreeRNN: images must be (B, 3, H, W), got {tuple(images.shape)}")
        b = self.backbone
        if self._timm:
            fmap = b.forward_features(images)
            logits = b.forward_head(fmap)
        else:
            x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
            fmap = b.layer4(b.layer3(b.layer2(b.layer1(x))))
            logits = b.fc(torch.flatten(b.avgpool(fmap), 1))
        v = self.pool(fmap).flatten(2).transpose(1, 2)
        return v, logits

    # --- one decoder step for (B, K) paths ------------------------------------------------------------------
    def init_state(self, v: Tensor, k: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """(h0, c0) (B, k, H) from the mean feature, and ``encoder_att(v)`` (B, P, A), computed once."""
        mean = v.mean(dim=1)
        h = self.init_h(mean).unsqueeze(1).expand(-1, k, -1)
        c = self.init_c(mean).unsqueeze(1).expand(-1, k, -1)
        return h, c, self.attention.encoder_att(v)

    def step(self, v: Tensor, att_v: Tensor, h: Tensor, c: Tensor, prev_p: Tensor,
             emitted: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One LSTM step for K paths per image. v (B, P, F), att_v (B, P, A), h, c (B, K, H), prev_p (B, K, C)
        float, emitted (B, K, C) bool. Returns (h, c, log p_t (B, K, V)) with the emitted labels at -inf (the
        candidate pool); the end signal (index C) is never masked."""
        B, K, _ = h.shape
        ctx, _ = self.attention(att_v, v, h)
        z = torch.sigmoid(self.f_beta(h)) * ctx
        x = torch.cat([prev_p, z, emitted.to(z.dtype)], dim=-1)
        h2, c2 = self.decode_step(x.reshape(B * K, -1), (h.reshape(B * K, -1), c.reshape(B * K, -1)))
        h2, c2 = h2.view(B, K, -1), c2.view(B, K, -1)
        logits = self.fc2(self.dropout(F.relu(self.fc1(h2))))
        if self.end_token:
            emitted = F.pad(emitted, (0, 1), value=False)
        return h2, c2, logits.masked_fill(emitted, NEG_INF).log_softmax(dim=-1)

    def _max_steps(self, max_steps: Optional[int]) -> int:
        steps = max_steps if max_steps is not None else self.max_steps
        limit = self.num_classes + int(self.end_token)
        return limit if steps is None else max(0, min(int(steps), limit))

    # --- training -----------------------------------------------------------------------------------------
    def order_free_loss(self, v: Tensor, cnn_logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The order-free loss of a batch: v (B, P, F), cnn_logits (B, C), targets (B, C) multi-hot (0/1, any
        dtype). Returns (mean -log p_t[target] over the (image, step) terms, number of terms)."""
        B, C = cnn_logits.shape
        if targets.shape != (B, C):
            raise ValueError(f"OrderFreeRNN: targets must be (B, C) = {(B, C)}, got {tuple(targets.shape)}")
        if bool(((targets != 0) & (targets != 1)).any()):
            raise ValueError("OrderFreeRNN: targets must be multi-hot (0/1 per label)")
        gt = targets > 0.5
        steps = int(gt.sum(dim=1).max()) + int(self.end_token) if B else 0
        steps = min(steps, self._max_steps(None))
        h, c, att_v = self.init_state(v)
        prev_p = torch.sigmoid(cnn_logits).unsqueeze(1)
        emitted = torch.zeros(B, 1, C, dtype=torch.bool, device=v.device)
        total = torch.zeros((), dtype=torch.float32, device=v.device)
        terms = torch.zeros((), dtype=torch.long, device=v.device)
        rows = torch.arange(B, device=v.device)
        ended = torch.zeros(B, dtype=torch.bool, device=v.device)
        for _ in range(steps):
            h, c, logp = self.step(v, att_v, h, c, prev_p, emitted)
            logp = logp[:, 0]
            remaining = gt & ~emitted[:, 0]
            target, has_label = order_free_targets(logp, remaining)
            if self.end_token:  # one end term per image, after its last label
                valid = has_label | ~ended
                ended = ended | ~has_label
                target = torch.where(has_label, target, torch.full_like(target, C))
            else:
                valid = has_label
            total = total - (logp[rows, target] * valid).sum()
            terms = terms + valid.sum()
            step_emit = F.one_hot(target.clamp(max=C - 1), C).bool() & has_label[:, None]
            emitted = emitted | step_emit[:, None]
            prev_p = logp[:, :C].exp().unsqueeze(1)
        return total / terms.clamp_min(1), terms

    def forward(self, images: Tensor, targets: Optional[Tensor] = None, *, stage: str = "joint",
                decode: bool = False, beam_size: int = 1, threshold: Optional[float] = None,
                max_steps: Optional[int] = None) -> dict[str, Tensor]:
        if stage not in ("joint", "cnn"):
            raise ValueError(f"OrderFreeRNN: stage must be 'joint' or 'cnn', got {stage!r}")
        v, cnn_logits = self.encode(images)
        out = {"cnn_logits": cnn_logits}
        if targets is not None:
            if stage == "cnn":
                out["rnn_nll"] = sum(p.sum() for n, p in self.named_parameters()
                                     if not n.startswith("backbone.")) * 0.0
                out["rnn_terms"] = torch.zeros((), dtype=torch.long, device=images.device)
            else:
                out["rnn_nll"], out["rnn_terms"] = self.order_free_loss(v, cnn_logits, targets)
        if decode:
            out.update(self.beam_search(v, cnn_logits, beam_size, threshold, max_steps))
        return out

    # --- inference ------------------------------------------------------------------------------------------
    def _log_threshold(self, threshold: Optional[float]) -> float:
        t = self.threshold if threshold is None else float(threshold)
        if not 0 <= t <= 1:
            raise ValueError(f"OrderFreeRNN: threshold must be in [0, 1], got {t}")
        return float(torch.tensor(t, dtype=torch.float64).log())

    @torch.no_grad()
    def greedy_decode(self, v: Tensor, cnn_logits: Tensor, threshold: Optional[float] = None,
                      max_steps: Optional[int] = None) -> dict[str, Tensor]:
        """One path per image: at each step the most probable candidate; a label is emitted only while the
        path probability stays >= threshold, otherwise the path ends (with the end signal's probability when
        the model has one, as beam search's single path does). Same outputs as ``beam_search``."""
        B, C = cnn_logits.shape
        log_t = self._log_threshold(threshold)
        h, c, att_v = self.init_state(v)
        prev_p = torch.sigmoid(cnn_logits).unsqueeze(1)
        emitted = torch.zeros(B, 1, C, dtype=torch.bool, device=v.device)
        scores = torch.zeros(B, C, device=v.device)
        path = torch.zeros(B, dtype=torch.float64, device=v.device)
        done = torch.zeros(B, dtype=torch.bool, device=v.device)
        T = self._max_steps(max_steps)
        seq = torch.full((B, T), -1, dtype=torch.long, device=v.device)
        for t in range(T):
            if bool(done.all()):
                break
            h, c, logp = self.step(v, att_v, h, c, prev_p, emitted)
            logp = logp[:, 0]
            for i in range(B):
                if done[i]:
                    continue
                lab = logp[i, :C]
                best = int(lab.argmax())
                best_ok = bool(torch.isfinite(lab[best])) and float(path[i] + lab[best]) >= log_t
                if self.end_token and (not best_ok or float(logp[i, C]) > float(lab[best])):
                    path[i] += logp[i, C]
                    done[i] = True
                elif not best_ok:
                    done[i] = True
                else:
                    path[i] += lab[best]
                    emitted[i, 0, best] = True
                    seq[i, t] = best
                    scores[i] = torch.maximum(scores[i], lab.exp())
            prev_p = logp[:, :C].exp().unsqueeze(1)
        return {"labels": emitted[:, 0], "scores": scores, "path_logp": path, "sequence": seq}

    @torch.no_grad()
    def beam_search(self, v: Tensor, cnn_logits: Tensor, beam_size: int = 1,
                    threshold: Optional[float] = None, max_steps: Optional[int] = None) -> dict[str, Tensor]:
        """Batched beam search over all images at once. v (B, P, F), cnn_logits (B, C). Returns ``labels``
        (B, C) bool (the best finished path's labels), ``scores`` (B, C) float (each label's highest step
        probability along that path; 0 for labels never offered), ``path_logp`` (B,) float64 and ``sequence``
        (B, T) int64, the emitted labels in order, -1 after the last (T = the step limit)."""
        if beam_size < 1:
            raise ValueError(f"OrderFreeRNN: beam_size must be >= 1, got {beam_size}")
        B, C = cnn_logits.shape
        K, V, dev = int(beam_size), self.num_outputs, v.device
        log_t = self._log_threshold(threshold)
        h, c, att_v = self.init_state(v, K)
        prev_p = torch.sigmoid(cnn_logits).unsqueeze(1).expand(B, K, C)
        emitted = torch.zeros(B, K, C, dtype=torch.bool, device=dev)
        best_p = torch.zeros(B, K, C, device=dev)
        # all beams start as one path: the others are dead (-inf) until the first step spreads them
        score = torch.full((B, K), NEG_INF, dtype=torch.float64, device=dev)
        score[:, 0] = 0.0
        finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
        finished[:, 1:] = True
        rows = torch.arange(B, device=dev)[:, None]
        T = self._max_steps(max_steps)
        seq = torch.full((B, K, T), -1, dtype=torch.long, device=dev)
        for t in range(T):
            if bool(finished.all()):
                break
            h, c, logp = self.step(v, att_v, h, c, prev_p, emitted)
            active = ~finished
            cand = score.unsqueeze(-1) + logp.to(torch.float64)                      # (B, K, V)
            label_ok = active.unsqueeze(-1) & (cand[..., :C] >= log_t) & torch.isfinite(cand[..., :C])
            cand_lab = cand[..., :C].masked_fill(~label_ok, NEG_INF)
            parts = [cand_lab]
            if self.end_token:
                parts.append(cand[..., C:].masked_fill(~active.unsqueeze(-1), NEG_INF))
                can_go = active
            else:
                can_go = label_ok.any(-1)
            # "stay": a finished path (or an active one that can go nowhere) keeps its score
            parts.append(score.masked_fill(can_go, NEG_INF).unsqueeze(-1))
            flat = torch.cat(parts, dim=-1).view(B, -1)                               # (B, K (V + 1))
            top, idx = flat.topk(K, dim=1)
            src, tok = idx // (V + 1), idx % (V + 1)
            is_label = (tok < C) & torch.isfinite(top)  # fewer than K live candidates: the rest are dead
            h, c = h[rows, src], c[rows, src]
            new_p = logp[rows, src][..., :C].exp()
            new_label = F.one_hot(tok.clamp(max=C - 1), C).bool() & is_label.unsqueeze(-1)
            emitted = emitted[rows, src] | new_label
            best_p = best_p[rows, src]
            best_p = torch.where(is_label.unsqueeze(-1), torch.maximum(best_p, new_p), best_p)
            seq = seq[rows, src]
            seq[..., t] = torch.where(is_label, tok, -1)
            prev_p = new_p
            finished = ~is_label
            score = top
        pick = score.argmax(dim=1)
        r = torch.arange(B, device=dev)
        return {"labels": emitted[r, pick], "scores": best_p[r, pick], "path_logp": score[r, pick],
                "sequence": seq[r, pick]}

    @torch.no_grad()
    def predict(self, images: Tensor, beam_size: int = 1, threshold: Optional[float] = None,
                max_steps: Optional[int] = None) -> dict[str, Tensor]:
        """Eval-mode prediction of images (B, 3, H, W): ``beam_search`` outputs plus ``cnn_probs`` (B, C)."""
        v, cnn_logits = self.encode(images)
        out = self.beam_search(v, cnn_logits, beam_size, threshold, max_steps)
        out["cnn_probs"] = torch.sigmoid(cnn_logits)
        return out


def data_config(backbone: str = "resnet101", backbone_args: Optional[dict] = None) -> dict:
    """The input normalisation of a backbone: ImageNet mean/std for torchvision's ResNets (their weights'
    transforms), timm's pretrained config for ``timm/<name>``."""
    if backbone.startswith("timm/"):
        import timm

        cfg = timm.get_pretrained_cfg(backbone[5:])
        cfg = cfg.to_dict() if cfg is not None else {}
        return {"mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                "std": tuple(cfg.get("std", (0.229, 0.224, 0.225)))}
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {"mean": tuple(IMAGENET_MEAN), "std": tuple(IMAGENET_STD)}


@register_model
def order_free_rnn(num_classes: int = 80, backbone: str = "resnet101", **kwargs) -> OrderFreeRNN:
    """Order-Free RNN on any backbone (torchvision ResNet name or ``timm/<name>``)."""
    return OrderFreeRNN(num_classes=num_classes, backbone=backbone, **kwargs)


@register_model
def order_free_rnn_resnet101(num_classes: int = 80, **kwargs) -> OrderFreeRNN:
    """Order-Free RNN on torchvision's ResNet-101, 14 x 14 attention grid, 512-wide attention/LSTM/fc1."""
    kwargs.setdefault("backbone", "resnet101")
    return OrderFreeRNN(num_classes=num_classes, **kwargs)
