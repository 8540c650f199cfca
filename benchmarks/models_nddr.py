"""NDDR-CNN cases (``nn.nddr``, ``models.nddr``).

* The NDDR layer (2 tasks) at the conv3 and conv4 stage shapes of a 321x321 input, batch 10 ((10, 256, 41, 41)
  and (10, 512, 41, 41) per task): ours (accumulated batched matmuls, no concatenation) beside the official
  formulation (``torch.cat`` + one 1x1 conv per task, ``NDDRConcat``) and the other concat-free form (the sum
  of
  per-input 1x1 convolutions); forward (eval mode) and a training step (forward, backward of a fixed upstream
  gradient, SGD step).
* ``nddr_vgg16``: a training step (forward at 1/8 resolution, CE + 20 x cosine loss, backward, SGD step) and
  inference (upsampled outputs) with our NDDR layers beside the same network with ``NDDRConcat`` layers (the
  same weights). 321x321; batch 10 on GPU, 2 on CPU (a batch-10 step is ~4 TFLOP).

Samples/s and peak memory are reported; quick mode uses tiny shapes (widths / 8, 65x65 input, batch 2).

CPU run (2 cores, load average ~1.5, float32): NDDR conv3 forward 46.4 vs 54.6 ms official (1.18x), train
step 105 vs 135 ms (1.29x), peak 97 vs 148 MB; conv4 forward 160 vs 170 ms (1.06x), train step 323 vs 368 ms
(1.14x), peak 193 vs 295 MB. nddr_vgg16 at 321, batch 2: train step 6.56 vs 6.15 s with NDDRConcat (0.94x,
within the run-to-run spread: direct timings gave 5.6-7.5 s for both), inference 2.12 vs 2.14 s; peak 760 MB
training, 164 MB inference for both."""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyvision_fast.models import create_model
from pyvision_fast.nn.nddr import NDDR, NDDRConcat

from .harness import Case, Impl


class ConvSumNDDR(nn.Module):
    """The concat-free alternative: task t's output is sum_s conv1x1(x_s, W_ts), then BN and ReLU."""

    def __init__(self, layer: NDDR):
        super().__init__()
        self.layer = layer

    def forward(self, *xs: Tensor) -> tuple[Tensor, ...]:
        c, t = self.layer.channels, self.layer.num_tasks
        outs = []
        for task in range(t):
            w = self.layer.weight[task][:, :, None, None]
            y = F.conv2d(xs[0], w[:, :c])
            for s in range(1, t):
                y = y + F.conv2d(xs[s], w[:, s * c:(s + 1) * c])
            outs.append(F.relu(self.layer.norms[task](y)))
        return tuple(outs)


def _layer_forward(layer: nn.Module, xs: list[Tensor]) -> Callable[[], object]:
    layer.eval()

    def run():
        with torch.no_grad():
            return layer(*xs)
    return run


def _layer_train_step(layer: nn.Module, xs: list[Tensor], grads: list[Tensor]) -> Callable[[], None]:
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(layer(*xs), grads)
        opt.step()
    return step


def _swap_to_concat(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose NDDR layers are ``NDDRConcat`` with the same weights and statistics."""
    ref = copy.deepcopy(model)
    for i, layer in enumerate(ref.nddr):
        concat = NDDRConcat(layer.num_tasks, layer.channels).to(layer.weight.device)
        concat.load_state_dict(layer.concat_state_dict())
        ref.nddr[i] = concat
    return ref


def _model_train_step(model: nn.Module, x: Tensor, label: Tensor, normal: Tensor) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x, upsample=False)
        cos = (F.normalize(out["normal"], dim=1) * normal).sum(1)
        loss = F.cross_entropy(out["seg"], label) + 20 * (1 - cos).mean()
        loss.backward()
        opt.step()
    return step


def _model_inference(model: nn.Module, x: Tensor) -> Callable[[], object]:
    model.eval()

    def run():
        with torch.no_grad():
            return model(x)
    return run


def cases(device: str, quick: bool) -> list[Case]:
    gpu = device == "cuda"
    torch.manual_seed(0)
    out = []
    shapes = [("conv3", 2, 32, 11)] if quick else [("conv3", 10, 256, 41), ("conv4", 10, 512, 41)]
    for stage, b, c, hw in shapes:
        layer = NDDR(2, c).to(device)
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight) * 0.01)
        concat = NDDRConcat(2, c).to(device)
        concat.load_state_dict(layer.concat_state_dict())
        convsum = ConvSumNDDR(copy.deepcopy(layer))
        xs = [torch.randn(b, c, hw, hw, device=device) for _ in range(2)]
        grads = [torch.randn(b, c, hw, hw, device=device) for _ in range(2)]
        macs = 2 * b * c * 2 * c * hw * hw
        params = {"batch": b, "channels": c, "hw": hw, "tasks": 2}
        out.append(Case("models", f"NDDR layer {stage} forward", params, [
            Impl("pvf NDDR (batched matmuls, no concat)", _layer_forward(layer, xs), "ours"),
            Impl("official concat + 1x1 convs", _layer_forward(concat, xs), "reference"),
            Impl("sum of per-input 1x1 convs", _layer_forward(convsum, xs), "peer")],
            flops=2 * macs, samples=b, measure_memory=True))
        out.append(Case("models", f"NDDR layer {stage} train step", params, [
            Impl("pvf NDDR (batched matmuls, no concat)", _layer_train_step(copy.deepcopy(layer), xs, grads),
                 "ours"),
            Impl("official concat + 1x1 convs", _layer_train_step(copy.deepcopy(concat), xs, grads),
                 "reference"),
            Impl("sum of per-input 1x1 convs", _layer_train_step(copy.deepcopy(convsum), xs, grads), "peer")],
            flops=6 * macs, samples=b, measure_memory=True,
            note="forward + backward of a fixed upstream gradient + SGD step"))

    kwargs, img = (dict(width=0.125), 65) if quick else ({}, 321)
    batch = 2 if (quick or not gpu) else 10
    model = create_model("nddr_vgg16", **kwargs).to(device)
    ref = _swap_to_concat(model)
    x = torch.randn(batch, 3, img, img, device=device)
    side = (img - 1) // 8 + 1
    label = torch.randint(0, 40, (batch, side, side), device=device)
    normal = F.normalize(torch.randn(batch, 3, side, side, device=device), dim=1)
    params = {"batch": batch, "img": img, "width": kwargs.get("width", 1.0)}
    out.append(Case("models", f"nddr_vgg16 {img} train step", params, [
        Impl("pvf nddr_vgg16 (NDDR)", _model_train_step(model, x, label, normal), "ours"),
        Impl("nddr_vgg16 with NDDRConcat", _model_train_step(ref, x, label, normal), "reference")],
        samples=batch, measure_memory=True,
        note="forward at 1/8 resolution + CE + 20 x cosine loss + backward + SGD step"))
    out.append(Case("models", f"nddr_vgg16 {img} inference", params, [
        Impl("pvf nddr_vgg16 (NDDR)", _model_inference(model, x), "ours"),
        Impl("nddr_vgg16 with NDDRConcat", _model_inference(ref, x), "reference")],
        samples=batch, measure_memory=True))
    return out
