"""Order-Free RNN cases (``models.order_free_rnn``): batched beam search (every image and beam of the batch
advanced by one set of tensor operations per step) beside the same beam search run one image at a time (a loop
over the batch, the usual captioning-style implementation), same model, same beam width k, same features. The
CNN is left out (it is the same batched forward either way): each call decodes precomputed 14 x 14 x 2048
ResNet-101 features (random, as are the weights), ``STEPS`` = 4 decoding steps. Full: COCO's 80 labels, the
paper-size decoder (attention, LSTM and fc1 512 wide), k = 3, batch 32 on CPU / 256 on GPU; quick: a small
decoder, batch 4, k = 2 (shapes only).

Measured on the 2-core development CPU (2026-12-05, shared, load average 7-14, so wall times are noisy), full
size, batch 32, k = 3, 4 steps, both giving the same label sequences: harness medians 1814 ms batched (17.6
images/s) vs 8938 ms one image at a time (3.6 images/s), 4.9x; peak memory 86 MB vs 3 MB (the (B, k, 196, 512)
attention energies of the whole batch). Process CPU time on one thread, medians of 3 interleaved runs: 339 vs
432 ms (1.27x): on one CPU thread most of the work is the (B, 196, 2048) x (2048, 512) attention projection of
the features (13 GFLOP at batch 32), the same either way; batching saves the per-step overhead of 32 small
decoders. Quick: 115 vs 202 ms (1.8x). No GPU was available for this run."""
from __future__ import annotations

from typing import Callable

import torch

from pyvision_fast.models import create_model

from .harness import Case, Impl


# Decoding steps per image: COCO images have 2.9 labels on average, and the end signal is one more step. With
# random weights a path would end after one label under the default threshold (80 labels share the
# probability), so the threshold is off and the step count fixed.
STEPS = 4


def _batched(model, v, logits, k) -> Callable[[], dict]:
    def run():
        return model.beam_search(v, logits, k, threshold=0.0, max_steps=STEPS)
    return run


def _one_by_one(model, v, logits, k) -> Callable[[], list]:
    def run():
        return [model.beam_search(v[i:i + 1], logits[i:i + 1], k, threshold=0.0, max_steps=STEPS)
                for i in range(v.shape[0])]
    return run


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device == "cuda"
    if quick:
        C, grid, dims, batch, k = 10, 4, dict(attention_dim=32, hidden_dim=32, fc_dim=32), 4, 2
        backbone = dict(backbone="timm/test_resnet")
    else:
        C, grid, dims, batch, k = 80, 14, {}, (256 if gpu else 32), 3
        backbone = dict(backbone="resnet101")
    torch.manual_seed(0)
    model = create_model("order_free_rnn", num_classes=C, grid=grid, **backbone, **dims).to(device).eval()
    F = model.feature_dim
    v = torch.randn(batch, grid * grid, F, device=device).relu()
    logits = torch.randn(batch, C, device=device)
    impls = [Impl(f"batched beam search (k={k})", _batched(model, v, logits, k), "ours"),
             Impl(f"one image at a time (k={k})", _one_by_one(model, v, logits, k), "reference")]
    return [Case("models", f"Order-Free RNN beam search {grid}x{grid}x{F}, {C} labels",
                 {"batch": batch, "k": k, "labels": C}, impls, samples=batch, measure_memory=True,
                 goal=(impls[1].name, 1.0),
                 note="decoder only (precomputed CNN features); both return the same label sets")]
