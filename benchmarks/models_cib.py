"""CIB-LXMERT cases (``models.cib``, ``losses.mutual_info``): one fine-tuning step (forward, BCE * answers +
beta * CIB, backward, AdamW step) with the CIB terms beside the same step without them (BCE only: plain LXMERT
VQA fine-tuning), whose ratio is the CIB's training overhead; and the InfoNCE critic's all-pairs scores
(forward + backward of the InfoNCE bound on the matched token pairs) computed in row chunks (ours, O(N^2)
memory) beside the broadcast graph that keeps the (N, N, H) activations (what an autograd graph of the
official ``repeat`` + ``cat`` tiling keeps, minus its (N, N, 2D) input copies).

Shapes: the official batch has 64 questions of at most 20 word pieces (~10 valid) and 36 regions, so the CIB
matches ~64 x (10 + 36) ~ 3000 token pairs of 768-d (384-d Gaussian halves, critic hidden 384). Quick: a
hidden-64 LXMERT with one layer per stack at batch 2; full on CPU: LXMERT base at batch 4 and 768 pairs; on
GPU: batch 64 and 3000 pairs.

Measured on the 2-core development CPU (2026-12-05, shared, load average 4-7): LXMERT base, batch 4, process
CPU time on one thread, medians of 5 interleaved steps: with CIB 3.26 s, BCE only 2.93 s (+11 %: the CIB terms
on ~180 token pairs, the InfoNCE critic and its AdamW state). The harness's wall-clock medians under that load
(9.1 s vs 1.7 s) were noise (thread contention); the quick model: 33.6 vs 21.2 ms on one thread. InfoNCE
critic at 768 pairs of 384-d halves, hidden 384: peak memory 212 MB chunked vs 2594 MB broadcast, 4.39 s vs
2.91 s (the chunked backward recomputes the activations). No GPU numbers yet (no GPU was lent to this task):
at the official batch (~3000 pairs) the broadcast graph keeps ~2 x 14 GB of activations.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_fast.losses.mutual_info import ConcatCritic, InfoNCE
from pyvision_fast.models import create_model

from .harness import Case, Impl

TINY = dict(hidden_size=64, num_attention_heads=2, intermediate_size=128, l_layers=1, x_layers=1, r_layers=1,
            vocab_size=100, visual_feat_dim=32, num_classes=50)


def _batch(B: int, L: int, N: int, feat_dim: int, vocab: int, answers: int, device: str):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 1000 else 1, vocab, (B, L), generator=gen)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, L // 2:] = 0                                        # ~half the 20 positions are padding
    ids[mask == 0] = 0
    feats = torch.rand(B, N, feat_dim, generator=gen)
    xy = torch.rand(B, N, 2, generator=gen) * 0.5
    boxes = torch.cat([xy, xy + 0.4], dim=-1)
    target = (torch.rand(B, answers, generator=gen) > 0.999).float()
    return [t.to(device) for t in (ids, mask, feats, boxes, target)]


def _train_step(model: nn.Module, batch, cib: bool, beta: float = 5e-5) -> Callable[[], None]:
    est = set(map(id, model.estimator_parameters()))
    groups = [{"params": [p for p in model.parameters() if id(p) not in est]},
              {"params": model.estimator_parameters(), "lr": 2e-3}]
    opt = torch.optim.AdamW(groups, lr=2e-5, weight_decay=0.0)
    ids, mask, feats, boxes, target = batch

    def step():
        opt.zero_grad(set_to_none=True)
        if cib:
            out = model(ids, mask, feats, boxes, compute_cib=True)
            bce = F.binary_cross_entropy_with_logits(out["logit"], target) * target.shape[1]
            loss = bce + beta * out["cib"]
        else:
            logit = model(ids, mask, feats, boxes)
            loss = F.binary_cross_entropy_with_logits(logit, target) * target.shape[1]
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    return step


def _broadcast_pairwise(critic: ConcatCritic, x: Tensor, y: Tensor) -> Tensor:
    first = critic[0]
    a = x @ first.weight[:, :critic.x_dim].T
    b = y @ first.weight[:, critic.x_dim:].T + first.bias
    h = b.unsqueeze(1) + a.unsqueeze(0)
    for layer in list(critic)[1:]:
        h = layer(h)
    return h.squeeze(-1)


def _infonce_step(est: InfoNCE, x: Tensor, y: Tensor, chunked: bool) -> Callable[[], None]:
    import math

    critic = est.F_func

    def step():
        critic.zero_grad(set_to_none=True)
        scores = critic.pairwise(x, y) if chunked else _broadcast_pairwise(critic, x, y)
        lb = critic(x, y).mean() - (torch.logsumexp(scores, dim=1).mean() - math.log(x.shape[0]))
        (-lb).backward()
    return step


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device == "cuda"
    torch.manual_seed(0)
    if quick:
        kwargs, B, pairs, dim = dict(TINY), 2, 64, 64
    else:
        kwargs, B, pairs, dim = {}, (64 if gpu else 4), (3000 if gpu else 768), 768
    answers = kwargs.get("num_classes", 3129)
    model = create_model("cib_lxmert", **kwargs).to(device).train()
    plain = create_model("cib_lxmert", **{**kwargs, "cib": False}).to(device).train()
    plain.load_state_dict(model.state_dict(), strict=False)
    cfg = model.config
    batch = _batch(B, 20, 36, cfg.visual_feat_dim, cfg.vocab_size, answers, device)
    out = [Case("models", f"CIB-LXMERT {'tiny' if quick else 'base'} train step", {"batch": B},
                [Impl("LXMERT + CIB (BCE*A + beta*CIB)", _train_step(model, batch, True), "ours"),
                 Impl("LXMERT, BCE only", _train_step(plain, batch, False), "reference")],
                samples=B, measure_memory=True,
                note="the ratio to 'BCE only' is the CIB terms' training overhead (estimators included)")]

    half = dim // 2
    est = InfoNCE(half, half, half).to(device)
    x = torch.randn(pairs, half, device=device)
    y = (0.8 * x + 0.6 * torch.randn(pairs, half, device=device))
    limit = ConcatCritic.dense_limit
    chunked_step = _infonce_step(est, x, y, True)

    def chunked():                                    # the chunked path whatever the size
        ConcatCritic.dense_limit = 0
        try:
            chunked_step()
        finally:
            ConcatCritic.dense_limit = limit

    out.append(Case("models", f"InfoNCE all-pairs critic {pairs} pairs", {"pairs": pairs, "dim": half,
                                                                         "hidden": half},
                    [Impl("row chunks, recomputed backward", chunked, "ours"),
                     Impl("broadcast (N, N, H) graph", _infonce_step(est, x, y, False), "reference")],
                    flops=3 * 2 * pairs * pairs * half * 2, measure_memory=True,
                    note="memory O(N^2) vs O(N^2 H): the point of the chunked path; CPU time ~1.5x"))
    return out
