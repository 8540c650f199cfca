"""Per-call overhead: every public op at a tiny shape, where its kernels take microseconds and the cost of the
call is Python, dispatch, allocation and launches. Ours beside the call a user would otherwise make (SDPA,
torchvision, torch.gather, cdist + topk, a plain convolution).

On a GPU the report's "host ms" column is the overhead per call and "median ms" the device time; on a CPU the
median is the whole call. ``tools/launch_counts.py`` counts the torch operators and GPU kernels of the same calls.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pyvision_fast import nn as pnn
from pyvision_fast import ops

from .harness import Case, Impl, peer

# no tuned-process or neighbour rows (benchmarks/tuned.py, neighbour.py): tiny shapes, where the time is the cost of a call
PROCESS_ROWS = False

# op -> [(peer, reason)] of the peers the last calls() could not use (listed under their case)
SKIPPED: dict[str, list] = {}


def _backward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    return run


def _no_grad(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return fn()
    return run


def calls(device: str) -> dict[str, list[tuple[str, str, Callable[[], object]]]]:
    """op -> [(implementation name, kind, call)] at tiny shapes; "fwd+bwd" entries include the backward."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, grad=False, dtype=torch.float32):
        return torch.rand(*shape, generator=g).to(device, dtype).requires_grad_(grad)

    out: dict[str, list] = {}
    SKIPPED.clear()
    # attention (bf16 on GPU, the dtype of the attention benchmarks)
    adt = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v = (rand(1, 1, 16, 64, grad=True, dtype=adt) for _ in range(3))
    out["attention fwd"] = [("pvf.attention", "ours", _no_grad(lambda: ops.attention(q, k, v))),
                            ("F.scaled_dot_product_attention", "peer",
                             _no_grad(lambda: F.scaled_dot_product_attention(q, k, v)))]
    out["attention fwd+bwd"] = [("pvf.attention", "ours", _backward(lambda: ops.attention(q, k, v))),
                                ("F.scaled_dot_product_attention", "peer",
                                 _backward(lambda: F.scaled_dot_product_attention(q, k, v)))]
    # deformable convolution
    x = rand(1, 8, 8, 8, grad=True)
    w = rand(8, 8, 3, 3, grad=True)
    off = rand(1, 18, 8, 8, grad=True)
    deform = [("pvf.ops.deform_conv2d", "ours", lambda: ops.deform_conv2d(x, off, w, padding=1))]
    deform += [(i.name, i.kind, i.fn) for i in peer(
        SKIPPED.setdefault("deform_conv2d fwd+bwd", []), "torchvision deform_conv2d", "torchvision.ops",
        lambda tvops: Impl("torchvision deform_conv2d", lambda: tvops.deform_conv2d(x, off, w, padding=1)),
        install="pip install torchvision")]
    deform.append(("F.conv2d", "peer", lambda: F.conv2d(x, w, padding=1)))
    out["deform_conv2d fwd+bwd"] = [(n, kind, _backward(f)) for n, kind, f in deform]
    # sphere convolution
    sconv = pnn.SphereConv2d(8, 8, 3).to(device)
    xs = rand(1, 8, 8, 16, grad=True)
    out["SphereConv2d fwd+bwd"] = [("pvf.nn.SphereConv2d", "ours", _backward(lambda: sconv(xs))),
                                   ("F.conv2d", "peer", _backward(lambda: F.conv2d(xs, sconv.weight, padding=1)))]
    # multi-view fusion (training step: views + BatchNorm batch statistics + HardSwish)
    mvf = pnn.MVF(torch.nn.Identity(), n_segment=2, in_channels=16, alpha=0.25).to(device).train()
    xm = rand(4, 16, 4, 4, grad=True)
    out["MVF fwd+bwd"] = [("pvf.nn.MVF", "ours", _backward(lambda: mvf(xm))),
                          ("F.conv2d (depthwise 3x3)", "peer",
                           _backward(lambda: F.conv2d(xm, torch.ones(16, 1, 3, 3, device=device), padding=1,
                                                      groups=16)))]
    # scale space
    xg = rand(1, 4, 16, 16, grad=True)
    sigma = torch.tensor([1.0, 2.0], device=device, requires_grad=True)
    out["gaussian_scale_space fwd+bwd"] = [
        ("pvf.ops.gaussian_scale_space", "ours", _backward(lambda: ops.gaussian_scale_space(xg, sigma))),
        ("F.conv2d (5x5)", "peer", _backward(lambda: F.conv2d(xg, torch.ones(4, 1, 5, 5, device=device), padding=2,
                                                              groups=4)))]
    ssc = pnn.ScaleSpaceConv2d(4, 8, 3, num_scales=2, padding=1).to(device)
    plain = torch.nn.Conv2d(4, 8, 3, padding=1).to(device)
    out["ScaleSpaceConv2d fwd+bwd"] = [("pvf.nn.ScaleSpaceConv2d", "ours", _backward(lambda: ssc(xg))),
                                       ("nn.Conv2d", "peer", _backward(lambda: plain(xg)))]
    ya = rand(1, 2, 4, 8, 8, grad=True)
    gain = torch.ones(2, device=device, requires_grad=True)
    out["scale_attention fwd+bwd"] = [("pvf.ops.scale_attention", "ours",
                                       _backward(lambda: ops.scale_attention(ya, gain))),
                                      ("softmax", "peer", _backward(lambda: (ya.abs() * gain.view(1, 2, 1, 1, 1))
                                                                   .softmax(1) * ya))]
    # point clouds
    p1, p2 = rand(1, 64, 3), rand(1, 64, 3)
    out["knn_points"] = [("pvf.knn_points", "ours", lambda: ops.knn_points(p1, p2, K=4)),
                         ("torch.cdist + topk", "peer", lambda: torch.cdist(p1, p2).topk(4, dim=2, largest=False))]
    out["sample_farthest_points"] = [("pvf.sample_farthest_points", "ours",
                                      lambda: ops.sample_farthest_points(p1, K=16))]
    out["ball_query"] = [("pvf.ball_query", "ours", lambda: ops.ball_query(p1, p2, K=8, radius=0.3))]
    feats = rand(1, 8, 64, grad=True)
    idx = torch.randint(0, 64, (1, 16, 4), generator=g).to(device)
    flat = idx.view(1, 1, -1).expand(1, 8, -1)
    out["grouping_operation fwd+bwd"] = [
        ("pvf.grouping_operation", "ours", _backward(lambda: ops.grouping_operation(feats, idx.int()))),
        ("torch.gather", "peer", _backward(lambda: feats.gather(2, flat)))]
    pc1, pc2 = rand(1, 64, 3, grad=True), rand(1, 64, 3)
    out["chamfer_distance fwd+bwd"] = [("pvf.chamfer_distance", "ours",
                                        _backward(lambda: ops.chamfer_distance(pc1, pc2)[0]))]
    return out


def cases(device: str, quick: bool) -> list[Case]:
    return [Case("overhead", name, {"shape": "tiny"}, [Impl(n, f, kind) for n, kind, f in impls], bound="none",
                 note="Tiny shapes: the time is the cost of a call, not of its arithmetic.",
                 skipped=list(SKIPPED.get(name, [])))
            for name, impls in calls(device).items()]
