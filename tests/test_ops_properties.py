"""Property test across every public op (issue 18): hypothesis draws small argument sets, valid ones and ones
with one thing wrong (a size relation broken, a wrong dtype, a wrong rank, an empty size the op cannot take),
and runs them on the CPU kernels and on the plain-PyTorch reference (the fallback backend). A valid set gives
the oracle's result (the op's reference written independently of the backend, or torchvision / the op's
formula), within op_harness's tolerances; an invalid one raises ValueError or TypeError whose message names the
argument at fault, never another exception, a crash or an output.

Each op is a ``Spec``: ``draw`` makes a valid argument dict, ``run`` calls the op, ``check`` compares with the
oracle, ``mutations`` break one thing each (``names``: a regex of the argument names the message may name).
The examples are derandomized (the same on every run) and few, so the file stays under a minute on a loaded
2-core machine.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Optional

import pytest
import torch
import torch.nn.functional as F
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_harness import assert_close
from pyvision_fast import ops, use_backend
from pyvision_fast.geometry import equirect
from pyvision_fast.reference import attention as ref_attention
from pyvision_fast.reference import mesh_raster as ref_raster
from pyvision_fast.reference import mvf as ref_mvf
from pyvision_fast.reference import pointcloud as ref_pc
from pyvision_fast.reference import scale_space as ref_ss
from pyvision_fast.reference import stylegan2 as ref_sg

BACKENDS = ["cpu", "reference"]
VALID_EXAMPLES, INVALID_EXAMPLES = 20, 5
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FLOATS = [torch.float32, torch.float64]


class Draw:
    """One example's drawing: hypothesis choices, and tensors from a generator seeded by one of them."""

    def __init__(self, data):
        self.data = data
        self.g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))

    def int(self, lo: int, hi: int, label: str = "") -> int:
        return self.data.draw(st.integers(lo, hi), label=label or None)

    def pick(self, options, label: str = ""):
        return self.data.draw(st.sampled_from(options), label=label or None)

    def bool(self, label: str = "") -> bool:
        return self.data.draw(st.booleans(), label=label or None)

    def randn(self, *shape, dtype=torch.float64, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=self.g, dtype=torch.float64) * scale).to(dtype)

    def rand(self, *shape, dtype=torch.float64) -> torch.Tensor:
        return torch.rand(shape, generator=self.g, dtype=torch.float64).to(dtype)

    def randint(self, lo: int, hi: int, *shape) -> torch.Tensor:
        return torch.randint(lo, hi, shape, generator=self.g, dtype=torch.int64)


@dataclasses.dataclass
class Mutation:
    label: str
    apply: Callable[[dict, Draw], Optional[dict]]  # the broken arguments, None where it does not apply
    names: str  # regex: the argument names (or words) the error message may name


@dataclasses.dataclass
class Spec:
    name: str
    draw: Callable[[Draw], dict]
    run: Callable[[dict], Any]
    check: Callable[[dict, Any], None]
    mutations: list
    marks: tuple = ()

    def __str__(self):
        return self.name


def replaced(args: dict, **changes) -> dict:
    return {**args, **changes}


def f64(t):
    return None if t is None else t.detach().double()


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """actual against a float64 oracle, with the tolerance of actual's dtype (op_harness.TOLERANCES)."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    assert_close(actual, expected, dtype=actual.dtype)


def other_float(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float32 else torch.float32


# ------------------------------------------------------------------------------------------- deform_conv2d


def _deform_out(n, k, s, p, d):
    span = n + 2 * p - (d * (k - 1) + 1)
    return (span // s if span >= 0 else -(-span // s)) + 1  # C++ / torchvision integer division


def _deform_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    groups, og = d.pick([1, 2], "groups"), d.pick([1, 2], "offset_groups")
    C = math.lcm(groups, og) * d.int(1, 2, "C")
    Cout = groups * d.int(1, 2, "Cout")
    kh, kw, sh, sw = d.int(1, 3), d.int(1, 3), d.int(1, 2), d.int(1, 2)
    ph, pw, dh, dw = d.int(0, 1), d.int(0, 1), d.int(1, 2), d.int(1, 2)
    H, W = d.int(1, 5, "H"), d.int(1, 5, "W")
    Ho, Wo = _deform_out(H, kh, sh, ph, dh), _deform_out(W, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:  # too small an input for the kernel: make it large enough
        H, W = H + dh * (kh - 1), W + dw * (kw - 1)
        Ho, Wo = _deform_out(H, kh, sh, ph, dh), _deform_out(W, kw, sw, pw, dw)
    B = d.int(0, 2, "B")
    K = kh * kw
    return dict(input=d.randn(B, C, H, W, dtype=dtype), offset=d.randn(B, 2 * og * K, Ho, Wo, dtype=dtype, scale=2.0),
                weight=d.randn(Cout, C // groups, kh, kw, dtype=dtype),
                bias=d.randn(Cout, dtype=dtype) if d.bool("bias") else None, stride=(sh, sw), padding=(ph, pw),
                dilation=(dh, dw), mask=d.rand(B, og * K, Ho, Wo, dtype=dtype) if d.bool("mask") else None)


def _deform_run(a):
    return ops.deform_conv2d(a["input"], a["offset"], a["weight"], a["bias"], a["stride"], a["padding"],
                             a["dilation"], a["mask"])


def _deform_check(a, out):
    expected = torchvision.ops.deform_conv2d(f64(a["input"]), f64(a["offset"]), f64(a["weight"]), f64(a["bias"]),
                                             a["stride"], a["padding"], a["dilation"], f64(a["mask"]))
    close(out, expected)


def _grow_batch(t: torch.Tensor) -> torch.Tensor:
    return torch.cat([t, torch.zeros_like(t[:1]) if t.shape[0] else t.new_zeros(1, *t.shape[1:])])


def _deform_mask_like(a, d: Draw, shape_change) -> dict:
    og_k = a["offset"].shape[1] // 2
    B, _, Ho, Wo = a["offset"].shape
    shape = shape_change(B, og_k, Ho, Wo)
    return replaced(a, mask=d.rand(*shape, dtype=a["input"].dtype))


DEFORM = Spec("deform_conv2d", _deform_draw, _deform_run, _deform_check, [
    Mutation("offset batch larger", lambda a, d: replaced(a, offset=_grow_batch(a["offset"])), "offset"),
    Mutation("offset batch smaller", lambda a, d: replaced(a, offset=a["offset"][1:]) if a["offset"].shape[0]
             else None, "offset"),
    Mutation("offset channels", lambda a, d: replaced(a, offset=a["offset"][:, 1:]), "offset"),
    Mutation("offset height", lambda a, d: replaced(a, offset=torch.cat([a["offset"], a["offset"][:, :, :1]], 2)),
             "offset"),
    Mutation("offset width", lambda a, d: replaced(a, offset=torch.cat([a["offset"], a["offset"][..., :1]], 3)),
             "offset"),
    Mutation("offset groups do not divide C", lambda a, d: replaced(a, offset=d.randn(
        a["offset"].shape[0], 2 * a["weight"].shape[2] * a["weight"].shape[3] * (a["input"].shape[1] + 1),
        *a["offset"].shape[2:], dtype=a["input"].dtype)), "offset"),
    Mutation("mask channels", lambda a, d: _deform_mask_like(a, d, lambda B, n, h, w: (B, n + 1, h, w)), "mask"),
    Mutation("mask batch", lambda a, d: _deform_mask_like(a, d, lambda B, n, h, w: (B + 1, n, h, w)), "mask"),
    Mutation("mask size", lambda a, d: _deform_mask_like(a, d, lambda B, n, h, w: (B, n, h, w + 1)), "mask"),
    Mutation("bias size", lambda a, d: replaced(a, bias=d.randn(a["weight"].shape[0] + 1, dtype=a["input"].dtype)),
             "bias"),
    Mutation("weight channels do not divide C", lambda a, d: replaced(a, weight=d.randn(
        a["weight"].shape[0], a["input"].shape[1] + 1, *a["weight"].shape[2:], dtype=a["input"].dtype)), "weight"),
    Mutation("weight taps vs offset", lambda a, d: replaced(a, weight=torch.cat([a["weight"], a["weight"][..., :1]],
                                                                                  3)), "offset|weight|input"),
    Mutation("output channels vs groups", lambda a, d: replaced(a, weight=torch.cat(
        [a["weight"], a["weight"][:1]])) if a["input"].shape[1] // a["weight"].shape[1] > 1 else None,
        "output channels|groups|weight"),
    Mutation("offset dtype", lambda a, d: replaced(a, offset=a["offset"].to(other_float(a["input"].dtype))),
             "offset"),
    Mutation("integer tensors", lambda a, d: replaced(a, input=a["input"].long(), offset=a["offset"].long(),
                                                      weight=a["weight"].long(), bias=None, mask=None), "input"),
    Mutation("input rank", lambda a, d: replaced(a, input=a["input"][0] if a["input"].shape[0] else a["input"][:, 0]),
             "input"),
    Mutation("stride 0", lambda a, d: replaced(a, stride=(0, 1)), "stride"),
    Mutation("negative padding", lambda a, d: replaced(a, padding=(0, -1)), "padding"),
    Mutation("dilation 0", lambda a, d: replaced(a, dilation=(1, 0)), "dilation"),
    # an empty plane is valid where padding (or a stride past it) still gives an output (C++'s integer division)
    Mutation("empty input plane", lambda a, d: replaced(a, input=a["input"][:, :, :0]) if _deform_out(
        0, a["weight"].shape[2], a["stride"][0], a["padding"][0], a["dilation"][0]) < 1 else None, "input"),
])


# ------------------------------------------------------------------------------------ multi-view fusion


def _mvf_common(d: Draw, dtype):
    N, C = d.int(0, 2, "N"), d.int(1, 4, "C")
    T, H, W = d.int(0, 3, "T"), d.int(0, 3, "H"), d.int(0, 4, "W")
    Fc = d.int(0, C, "fused")
    x = d.randn(N, C, T, H, W, dtype=dtype)
    return x, Fc, [d.randn(Fc, 3, dtype=dtype) for _ in range(3)]


def _mvf_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    x, Fc, w = _mvf_common(d, dtype)
    epilogue = d.bool("epilogue")
    return dict(x=x, weight_t=w[0], weight_h=w[1], weight_w=w[2],
                bn_scale=d.rand(Fc, dtype=dtype) + 0.5 if epilogue else None,
                bn_shift=d.randn(Fc, dtype=dtype) if epilogue else None, hardswish=d.bool("hardswish"),
                fused_channels=Fc if Fc < x.shape[1] or d.bool("explicit F") else None)


def _mvf_run(a):
    return ops.multi_view_fusion(**a)


def _mvf_check(a, out):
    b = {k: f64(v) if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    close(out, ref_mvf.multi_view_fusion(**b))


def _fused(a) -> int:
    return a["x"].shape[1] if a["fused_channels"] is None else a["fused_channels"]


MVF_MUTATIONS = [
    Mutation("fused_channels above C", lambda a, d: replaced(a, fused_channels=a["x"].shape[1] + 1), "fused_channels"),
    Mutation("fused_channels negative", lambda a, d: replaced(a, fused_channels=-1), "fused_channels"),
    Mutation("weight_t rows", lambda a, d: replaced(a, weight_t=d.randn(_fused(a) + 1, 3, dtype=a["x"].dtype)),
             "weight_t"),
    Mutation("weight_h taps", lambda a, d: replaced(a, weight_h=a["weight_h"][:, :2]), "weight_h"),
    Mutation("weight_w dtype", lambda a, d: replaced(a, weight_w=a["weight_w"].to(other_float(a["x"].dtype))),
             "weight_w"),
    Mutation("x rank", lambda a, d: replaced(a, x=a["x"].flatten(3)), "x"),
    Mutation("integer x", lambda a, d: replaced(a, **{k: v.long() if isinstance(v, torch.Tensor) else v
                                                      for k, v in a.items()}), "x"),
]


def _mvf_pair_mutations(first: str, second: str, required: bool) -> list:
    out = [
        Mutation(f"{second} size", lambda a, d: replaced(a, **{second: d.randn(_fused(a) + 1, dtype=a["x"].dtype)}),
                 second),
        Mutation(f"{first} dtype", lambda a, d: replaced(a, **{first: d.randn(_fused(a), dtype=other_float(
            a["x"].dtype))}) if a[second] is not None else None, first),
    ]
    if not required:
        out.append(Mutation(f"{first} without {second}", lambda a, d: replaced(
            a, **{first: d.randn(_fused(a), dtype=a["x"].dtype), second: None}), f"{first}|{second}"))
    else:
        out.append(Mutation(f"no {first}", lambda a, d: replaced(a, **{first: None}), first))
    return out


MVF = Spec("multi_view_fusion", _mvf_draw, _mvf_run, _mvf_check,
           MVF_MUTATIONS + _mvf_pair_mutations("bn_scale", "bn_shift", False))


def _mvf_bn_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    x, Fc, w = _mvf_common(d, dtype)
    return dict(x=x, weight_t=w[0], weight_h=w[1], weight_w=w[2], bn_weight=d.rand(Fc, dtype=dtype) + 0.5,
                bn_bias=d.randn(Fc, dtype=dtype), eps=d.pick([1e-5, 1e-3]), hardswish=d.bool("hardswish"),
                fused_channels=Fc)


def _mvf_bn_check(a, out):
    b = {k: f64(v) if isinstance(v, torch.Tensor) else v for k, v in a.items()}
    for got, want in zip(out, ref_mvf.multi_view_fusion_batchnorm(**b)):
        close(got, want)


MVF_BN = Spec("multi_view_fusion_batchnorm", _mvf_bn_draw, lambda a: ops.multi_view_fusion_batchnorm(**a),
              _mvf_bn_check, MVF_MUTATIONS + _mvf_pair_mutations("bn_weight", "bn_bias", True) + [
                  Mutation("eps 0", lambda a, d: replaced(a, eps=0.0), "eps")])


# -------------------------------------------------------------------------------------------- scale space


def _gss_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, C, H, W = d.int(0, 2, "B"), d.int(0, 2, "C"), d.int(0, 6, "H"), d.int(0, 6, "W")
    S = d.int(1, 3, "S")
    sigma = [d.pick([0.4, 0.7, 1.0, 1.6]) for _ in range(S)]
    truncate = d.pick([1.0, 2.0, 3.0])
    mode = d.pick(["reflect", "replicate", "zeros"], "mode")
    if mode == "reflect" and B * C * H * W and max(ref_ss.radius_for(s, truncate) for s in sigma) >= min(H, W):
        mode = "replicate"
    return dict(x=d.randn(B, C, H, W, dtype=dtype), sigma=torch.tensor(sigma, dtype=dtype) if d.bool("tensor")
                else sigma, truncate=truncate, padding_mode=mode)


def _gss_check(a, out):
    x = a["x"]
    S = len(a["sigma"])
    assert out.shape == (x.shape[0], S, *x.shape[1:])
    if x.numel():
        sigma = torch.as_tensor(a["sigma"], dtype=torch.float64)
        close(out, ref_ss.gaussian_scale_space(f64(x), sigma, a["truncate"], a["padding_mode"]))


def _sigma_values(a):
    return [float(s) for s in a["sigma"]]


GSS = Spec("gaussian_scale_space", _gss_draw, lambda a: ops.gaussian_scale_space(**a), _gss_check, [
    Mutation("x rank", lambda a, d: replaced(a, x=a["x"].flatten(2)), "x"),
    Mutation("integer x", lambda a, d: replaced(a, x=a["x"].long()), "x"),
    Mutation("sigma rank", lambda a, d: replaced(a, sigma=torch.ones(2, 2, dtype=a["x"].dtype)), "sigma"),
    Mutation("sigma not positive", lambda a, d: replaced(a, sigma=_sigma_values(a) + [0.0]), "sigma"),
    Mutation("radius count", lambda a, d: replaced(a, radius=[1] * (len(a["sigma"]) + 1)), "radius"),
    Mutation("negative radius", lambda a, d: replaced(a, radius=-1), "radius"),
    Mutation("truncate", lambda a, d: replaced(a, truncate=-1.0), "truncate"),
    Mutation("padding_mode", lambda a, d: replaced(a, padding_mode="circular"), "padding_mode"),
    Mutation("reflect radius vs image", lambda a, d: replaced(a, padding_mode="reflect", radius=max(a["x"].shape[2:]))
             if a["x"].numel() else None, "radius"),
])


def _att_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, S = d.int(0, 2, "B"), d.int(1, 4, "S")
    trailing = [d.int(0, 3) for _ in range(d.int(0, 2, "trailing dims"))]
    return dict(y=d.randn(B, S, *trailing, dtype=dtype, scale=2.0), gain=d.randn(S, dtype=dtype))


def _att_check(a, out):
    y = f64(a["y"])
    flat = y.reshape(y.shape[0], y.shape[1], -1) if y.numel() else y.reshape(y.shape[0], y.shape[1], 0)
    close(out, ref_ss.scale_attention(flat, f64(a["gain"])).reshape(y.shape))


SCALE_ATTENTION = Spec("scale_attention", _att_draw, lambda a: ops.scale_attention(**a), _att_check, [
    Mutation("gain size", lambda a, d: replaced(a, gain=d.randn(a["y"].shape[1] + 1, dtype=a["y"].dtype)), "gain"),
    Mutation("gain rank", lambda a, d: replaced(a, gain=a["gain"][None]), "gain"),
    Mutation("gain dtype", lambda a, d: replaced(a, gain=a["gain"].to(other_float(a["y"].dtype))), "gain"),
    Mutation("y rank", lambda a, d: replaced(a, y=a["y"].reshape(-1)), "y"),
    Mutation("integer y", lambda a, d: replaced(a, y=a["y"].long(), gain=a["gain"].long()), "y"),
    Mutation("no scale", lambda a, d: replaced(a, y=a["y"][:, :0], gain=a["gain"][:0]), "scales|y"),
])


def _ssw_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    O, I, order, k = d.int(0, 5, "C_out"), d.int(0, 3, "C_in"), d.int(0, 2, "order"), d.pick([1, 3, 5], "k")
    S = d.int(1, max(O, 1), "S")
    nb = (order + 1) * (order + 2) // 2
    return dict(coeff=d.randn(O, I, nb, dtype=dtype), log_sigma=d.randn(S, dtype=dtype, scale=0.5), kernel_size=k,
                order=order, sigma_min=0.5, sigma_max=d.pick([0.8, 1.5, 3.0]))


def _ssw_check(a, out):
    close(out, ref_ss.scale_space_weight(f64(a["coeff"]), f64(a["log_sigma"]), a["kernel_size"], a["order"],
                                         a["sigma_min"], a["sigma_max"]))


SCALE_SPACE_WEIGHT = Spec("scale_space_weight", _ssw_draw, lambda a: ops.scale_space_weight(**a), _ssw_check, [
    Mutation("basis count vs order", lambda a, d: replaced(a, order=a["order"] + 1), "coeff"),
    Mutation("coeff rank", lambda a, d: replaced(a, coeff=a["coeff"][0]) if a["coeff"].shape[0] else None, "coeff"),
    Mutation("more scales than C_out", lambda a, d: replaced(a, log_sigma=d.randn(
        max(a["coeff"].shape[0], 1) + 1, dtype=a["coeff"].dtype)), "log_sigma"),
    Mutation("no scale", lambda a, d: replaced(a, log_sigma=a["log_sigma"][:0]), "log_sigma"),
    Mutation("log_sigma rank", lambda a, d: replaced(a, log_sigma=a["log_sigma"][None]), "log_sigma"),
    Mutation("even kernel_size", lambda a, d: replaced(a, kernel_size=a["kernel_size"] + 1), "kernel_size"),
    Mutation("negative order", lambda a, d: replaced(a, order=-1), "order"),
    Mutation("dtypes differ", lambda a, d: replaced(a, log_sigma=a["log_sigma"].to(other_float(a["coeff"].dtype))),
             "coeff|log_sigma"),
    Mutation("sigma_max below sigma_min", lambda a, d: replaced(a, sigma_min=2.0, sigma_max=1.0), "sigma_max"),
])


# ----------------------------------------------------------------------------------------------- sphere


_TABLES: dict = {}


def _table(H, k, stride, dtype):
    key = (H, k, stride, dtype)
    if key not in _TABLES:
        _TABLES[key] = equirect.sampling_table(H, 2 * H, k, stride, dtype=dtype)
    return _TABLES[key]


def _sphere_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    H, k, stride = d.pick([2, 4], "H"), d.pick([1, 3], "k"), d.pick([1, 2], "stride")
    B, C, Cout = d.int(0, 2, "B"), d.int(1, 3, "C"), d.int(0, 3, "Cout")
    return dict(input=d.randn(B, C, H, 2 * H, dtype=dtype), weight=d.randn(Cout, C, k, k, dtype=dtype),
                bias=d.randn(Cout, dtype=dtype) if d.bool("bias") else None, table=_table(H, k, stride, dtype))


def _sphere_check(a, out):
    """out[b, o, p] = sum over taps t, channels c, corners i of weight[o, c, t] x[b, c, index[p, t, i]]
    table_weight[p, t, i] (+ bias): the table's definition, in float64."""
    x, w, table = f64(a["input"]), f64(a["weight"]), a["table"]
    B, C, H, W = x.shape
    Ho, Wo = table.out_size
    sampled = x.reshape(B, C, H * W)[:, :, table.index.long()]  # (B, C, P, K, 4)
    cols = (sampled * f64(table.weight)).sum(-1)  # (B, C, P, K)
    expected = torch.einsum("bcpk,ock->bop", cols, w.reshape(w.shape[0], C, w.shape[2] * w.shape[3]))
    if a["bias"] is not None:
        expected = expected + f64(a["bias"])[None, :, None]
    close(out, expected.reshape(B, w.shape[0], Ho, Wo))


SPHERE = Spec("sphere_conv2d", _sphere_draw, lambda a: ops.sphere_conv2d(**a), _sphere_check, [
    Mutation("image size vs table", lambda a, d: replaced(a, input=a["input"][..., :-1]), "table|input"),
    Mutation("weight channels", lambda a, d: replaced(a, weight=torch.cat([a["weight"], a["weight"][:, :1]], 1)),
             "weight"),
    Mutation("weight taps vs table", lambda a, d: replaced(a, weight=torch.cat([a["weight"], a["weight"][..., :1]],
                                                                                  3)), "weight"),
    Mutation("bias size", lambda a, d: replaced(a, bias=d.randn(a["weight"].shape[0] + 1, dtype=a["input"].dtype)),
             "bias"),
    Mutation("weight dtype", lambda a, d: replaced(a, weight=a["weight"].to(other_float(a["input"].dtype))),
             "weight"),
    Mutation("table out_size vs index", lambda a, d: replaced(a, table=a["table"]._replace(
        out_size=(a["table"].out_size[0] + 1, a["table"].out_size[1]))), "table.index"),
    Mutation("table weight vs index", lambda a, d: replaced(a, table=a["table"]._replace(
        weight=a["table"].weight[:, :, :3])), "table.weight"),
    Mutation("input rank", lambda a, d: replaced(a, input=a["input"][:, 0]), "input"),
    Mutation("not a table", lambda a, d: replaced(a, table=tuple(a["table"])), "table"),
])


# ------------------------------------------------------------------------------------- vector quantize


def _vq_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    lead = [d.int(0, 3) for _ in range(d.int(0, 2, "leading dims"))]
    D, K = d.int(1, 4, "D"), d.int(1, 6, "K")
    return dict(z=d.randn(*lead, D, dtype=dtype), codebook=d.randn(K, D, dtype=dtype))


def _vq_check(a, out):
    """z_q holds exact codebook rows, and each chosen row is a nearest one (ties and rounding: within the
    dtype's tolerance of the smallest distance, computed in float64)."""
    z_q, idx = out
    z, cb = a["z"], a["codebook"]
    assert idx.dtype == torch.int64 and idx.shape == z.shape[:-1] and z_q.shape == z.shape
    assert torch.equal(z_q, cb[idx])
    d = ((f64(z)[..., None, :] - f64(cb)) ** 2).sum(-1)  # (..., K)
    chosen = d.gather(-1, idx[..., None])[..., 0]
    close(chosen.to(z.dtype), d.min(-1).values)


VQ = Spec("vector_quantize", _vq_draw, lambda a: ops.vector_quantize(**a), _vq_check, [
    Mutation("code size vs D", lambda a, d: replaced(a, codebook=torch.cat([a["codebook"], a["codebook"][:, :1]], 1)),
             "z|codebook"),
    Mutation("empty codebook", lambda a, d: replaced(a, codebook=a["codebook"][:0]), "codebook"),
    Mutation("no channel", lambda a, d: replaced(a, z=a["z"][..., :0], codebook=a["codebook"][:, :0]), "z"),
    Mutation("codebook rank", lambda a, d: replaced(a, codebook=a["codebook"][None]), "codebook"),
    Mutation("z rank 0", lambda a, d: replaced(a, z=a["z"].new_ones(())), "z"),
    Mutation("dtypes differ", lambda a, d: replaced(a, codebook=a["codebook"].to(other_float(a["z"].dtype))),
             "z|codebook"),
    Mutation("integer z", lambda a, d: replaced(a, z=a["z"].long(), codebook=a["codebook"].long()), "z"),
    Mutation("straight_through not a bool", lambda a, d: replaced(a, straight_through=1), "straight_through"),
])


# ------------------------------------------------------------------------------------------- attention


def _attn_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, H, L, S = d.int(0, 2, "B"), d.int(0, 2, "H"), d.int(0, 4, "L"), d.int(0, 4, "S")
    D, Dv = d.int(1, 4, "D"), d.int(1, 4, "Dv")
    kind = d.pick(["none", "causal", "bool", "float"], "mask")
    mask = None
    if kind in ("bool", "float"):
        shape = d.pick([(L, S), (B, 1, 1, S), (1, H, L, S), (S,)], "mask shape")
        mask = d.rand(*shape) > 0.3 if kind == "bool" else d.randn(*shape, dtype=dtype)
    return dict(q=d.randn(B, H, L, D, dtype=dtype), k=d.randn(B, H, S, D, dtype=dtype),
                v=d.randn(B, H, S, Dv, dtype=dtype), attn_mask=mask, is_causal=kind == "causal",
                scale=d.pick([None, 0.5]))


def _attn_check(a, out):
    mask = a["attn_mask"]
    mask = mask if mask is None or mask.dtype == torch.bool else f64(mask)
    close(out, ref_attention.attention(f64(a["q"]), f64(a["k"]), f64(a["v"]), mask, 0.0, a["is_causal"],
                                       a["scale"]))


ATTENTION = Spec("attention", _attn_draw, lambda a: ops.attention(**a), _attn_check, [
    Mutation("batch of k and v", lambda a, d: replaced(a, k=_grow_batch(a["k"]), v=_grow_batch(a["v"])), "mismatch"),
    Mutation("heads of k and v", lambda a, d: replaced(a, k=torch.cat([a["k"], a["k"]], 1), v=torch.cat(
        [a["v"], a["v"]], 1)) if a["k"].shape[1] else None, "mismatch"),
    Mutation("v length", lambda a, d: replaced(a, v=torch.cat([a["v"], a["v"].new_zeros(
        *a["v"].shape[:2], 1, a["v"].shape[3])], 2)), "mismatch"),
    Mutation("k head dim", lambda a, d: replaced(a, k=torch.cat([a["k"], a["k"][..., :1]], 3)), "head dim"),
    Mutation("head dim 0", lambda a, d: replaced(a, q=a["q"][..., :0], k=a["k"][..., :0]), "head dim"),
    Mutation("dtypes differ", lambda a, d: replaced(a, v=a["v"].to(other_float(a["q"].dtype))), "q, k, v"),
    Mutation("q rank", lambda a, d: replaced(a, q=a["q"].flatten(0, 1)), r"\bq\b"),
    Mutation("mask shape", lambda a, d: replaced(a, attn_mask=torch.ones(a["q"].shape[2] + 2, a["k"].shape[2] + 2,
                                                                        dtype=torch.bool), is_causal=False),
             "attn_mask"),
    Mutation("mask rank 5", lambda a, d: replaced(a, attn_mask=torch.ones(2, 1, 1, 1, a["k"].shape[2],
                                                                          dtype=torch.bool), is_causal=False),
             "attn_mask"),
    Mutation("float mask dtype", lambda a, d: replaced(a, attn_mask=torch.zeros(a["k"].shape[2], dtype=other_float(
        a["q"].dtype)), is_causal=False), "attn_mask"),
    Mutation("mask and causal", lambda a, d: replaced(a, attn_mask=torch.ones(a["k"].shape[2], dtype=torch.bool),
                                                      is_causal=True), "attn_mask"),
    Mutation("dropout_p 1", lambda a, d: replaced(a, dropout_p=1.0), "dropout_p"),
    Mutation("scale not a number", lambda a, d: replaced(a, scale="0.5"), "scale"),
])


# ------------------------------------------------------------------------------------------ point clouds
# Called as they are (another change owns them); a bug found here is an xfail(strict=True) with its reason.


def _clouds(d: Draw, dtype, with_lengths=True):
    B, P1, P2, D = d.int(0, 2, "B"), d.int(0, 5, "P1"), d.int(0, 6, "P2"), d.pick([2, 3], "D")
    p1, p2 = d.randn(B, P1, D, dtype=dtype), d.randn(B, P2, D, dtype=dtype)
    l1 = d.randint(0, P1 + 1, B) if with_lengths and d.bool("lengths") else None
    l2 = d.randint(0, P2 + 1, B) if with_lengths and l1 is not None else None
    return p1, p2, l1, l2


def _knn_draw(d: Draw) -> dict:
    p1, p2, l1, l2 = _clouds(d, d.pick(FLOATS, "dtype"))
    return dict(p1=p1, p2=p2, lengths1=l1, lengths2=l2, K=d.int(1, 4, "K"), norm=d.pick([1, 2], "norm"))


def _knn_check(a, out):
    dists, idx = ref_pc.knn_points_idx(f64(a["p1"]), f64(a["p2"]), a["lengths1"], a["lengths2"], a["K"], a["norm"])
    close(out.dists, dists)
    assert torch.equal(out.idx, idx)


def _cloud_mutations(first="p1", second="p2", lengths=("lengths1", "lengths2")) -> list:
    out = [
        Mutation("batch", lambda a, d: replaced(a, **{second: _grow_batch(a[second])}), f"{first}|{second}|batch"),
        Mutation("point dimension", lambda a, d: replaced(a, **{second: torch.cat([a[second], a[second][..., :1]], 2)}),
                 f"{first}|{second}|D"),
        Mutation("rank", lambda a, d: replaced(a, **{first: a[first].flatten(1)}), first),
        Mutation("dtypes differ", lambda a, d: replaced(a, **{second: a[second].to(other_float(a[first].dtype))}),
                 f"{first}|{second}"),
        Mutation("integer points", lambda a, d: replaced(a, **{first: a[first].long(), second: a[second].long()}),
                 f"{first}|{second}"),
    ]
    if lengths:
        out.append(Mutation("lengths size", lambda a, d: replaced(a, **{lengths[0]: torch.zeros(
            a[first].shape[0] + 1, dtype=torch.int64)}), lengths[0]))
        out.append(Mutation("float lengths", lambda a, d: replaced(a, **{lengths[1]: torch.zeros(
            a[second].shape[0])}), lengths[1]))
    return out


KNN = Spec("knn_points", _knn_draw, lambda a: ops.knn_points(**a), _knn_check, _cloud_mutations() + [
    Mutation("K 0", lambda a, d: replaced(a, K=0), "K"),
    Mutation("norm 3", lambda a, d: replaced(a, norm=3), "norm"),
])


def _ball_draw(d: Draw) -> dict:
    p1, p2, l1, l2 = _clouds(d, d.pick(FLOATS, "dtype"))
    return dict(p1=p1, p2=p2, lengths1=l1, lengths2=l2, K=d.int(1, 4, "K"), radius=d.pick([0.5, 1.0, 2.0]))


def _ball_check(a, out):
    dists, idx = ref_pc.ball_query_idx(f64(a["p1"]), f64(a["p2"]), a["lengths1"], a["lengths2"], a["K"],
                                       a["radius"])
    assert torch.equal(out.idx, idx)
    close(out.dists, dists)


BALL = Spec("ball_query", _ball_draw, lambda a: ops.ball_query(**a), _ball_check, _cloud_mutations() + [
    Mutation("K 0", lambda a, d: replaced(a, K=0), "K"),
    Mutation("negative radius", lambda a, d: replaced(a, radius=-1.0), "radius"),
])


def _sfp_draw(d: Draw) -> dict:
    p, _, l, _ = _clouds(d, d.pick(FLOATS, "dtype"))
    return dict(points=p, lengths=l, K=d.int(1, 4, "K"))


def _sfp_check(a, out):
    points, idx = out
    expected = ref_pc.sample_farthest_points_idx(f64(a["points"]), a["lengths"], None, a["K"])
    assert torch.equal(idx, expected)
    assert points.shape == (*idx.shape, a["points"].shape[2])


SFP = Spec("sample_farthest_points", _sfp_draw, lambda a: ops.sample_farthest_points(**a), _sfp_check, [
    Mutation("lengths size", lambda a, d: replaced(a, lengths=torch.zeros(a["points"].shape[0] + 1,
                                                                          dtype=torch.int64)), "lengths"),
    Mutation("rank", lambda a, d: replaced(a, points=a["points"].flatten(1)), "points"),
    Mutation("K 0", lambda a, d: replaced(a, K=0), "K"),
    Mutation("K per cloud size", lambda a, d: replaced(a, K=[1] * (a["points"].shape[0] + 1)), "K"),
    Mutation("integer points", lambda a, d: replaced(a, points=a["points"].long()), "points"),
])


def _fps_draw(d: Draw) -> dict:
    B, N = d.int(0, 2, "B"), d.int(1, 6, "N")
    return dict(xyz=d.randn(B, N, 3, dtype=d.pick(FLOATS, "dtype")), num_points=d.int(1, N, "num_points"))


def _fps_check(a, out):
    expected = ref_pc.sample_farthest_points_idx(f64(a["xyz"]), None, None, a["num_points"])
    assert torch.equal(out.long(), expected)


FPS = Spec("furthest_point_sample", _fps_draw, lambda a: ops.furthest_point_sample(**a), _fps_check, [
    Mutation("rank", lambda a, d: replaced(a, xyz=a["xyz"][0] if a["xyz"].shape[0] else a["xyz"][:, 0]), "xyz"),
    Mutation("num_points 0", lambda a, d: replaced(a, num_points=0), "num_points"),
    Mutation("integer xyz", lambda a, d: replaced(a, xyz=a["xyz"].long()), "xyz"),
])


def _features_idx(d: Draw, idx_shape_fn):
    dtype = d.pick(FLOATS, "dtype")
    B, C, N = d.int(0, 2, "B"), d.int(1, 3, "C"), d.int(1, 5, "N")
    idx = d.randint(0, N, B, *idx_shape_fn(d))
    return d.randn(B, C, N, dtype=dtype), idx.to(d.pick([torch.int32, torch.int64], "idx dtype"))


def _gather_draw(d: Draw) -> dict:
    f, idx = _features_idx(d, lambda d: (d.int(0, 4, "M"),))
    return dict(features=f, idx=idx)


def _gather_check(a, out):
    close(out, ref_pc.gather_columns(f64(a["features"]), a["idx"].long()))


def _idx_mutations(index_name="idx", features="features") -> list:
    return [
        Mutation("idx batch", lambda a, d: replaced(a, **{index_name: _grow_batch(a[index_name])}),
                 f"{index_name}|{features}|batch"),
        Mutation("float idx", lambda a, d: replaced(a, **{index_name: a[index_name].double()}), index_name),
        Mutation("features rank", lambda a, d: replaced(a, **{features: a[features].flatten(1)}), features),
        Mutation("idx out of range", lambda a, d: replaced(a, **{index_name: a[index_name] + a[features].shape[-1]})
                 if a[index_name].numel() else None, f"{index_name}|range"),
    ]


GATHER = Spec("gather_points", _gather_draw, lambda a: ops.gather_points(**a), _gather_check,
              _idx_mutations() + [Mutation("idx rank", lambda a, d: replaced(a, idx=a["idx"][..., None]), "idx")])


def _group_draw(d: Draw) -> dict:
    f, idx = _features_idx(d, lambda d: (d.int(0, 3, "npoint"), d.int(1, 3, "nsample")))
    return dict(features=f, idx=idx)


def _group_check(a, out):
    B, n, s = a["idx"].shape
    expected = ref_pc.gather_columns(f64(a["features"]), a["idx"].long().reshape(B, n * s))
    close(out, expected.reshape(B, a["features"].shape[1], n, s))


GROUP = Spec("grouping_operation", _group_draw, lambda a: ops.grouping_operation(**a), _group_check,
             _idx_mutations() + [Mutation("idx rank", lambda a, d: replaced(a, idx=a["idx"].flatten(1)), "idx")])


def _three_nn_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, n, m = d.int(0, 2, "B"), d.int(0, 4, "n"), d.int(3, 6, "m")
    return dict(unknown=d.randn(B, n, 3, dtype=dtype), known=d.randn(B, m, 3, dtype=dtype))


def _three_nn_check(a, out):
    dist, idx = out
    d2, i = ref_pc.knn_points_idx(f64(a["unknown"]), f64(a["known"]), None, None, 3)
    assert torch.equal(idx.long(), i)
    close(dist, d2.sqrt())


THREE_NN = Spec("three_nn", _three_nn_draw, lambda a: ops.three_nn(**a), _three_nn_check,
                _cloud_mutations("unknown", "known", lengths=None))


def _interp_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, C, M, N = d.int(0, 2, "B"), d.int(1, 3, "C"), d.int(1, 5, "M"), d.int(0, 4, "N")
    return dict(features=d.randn(B, C, M, dtype=dtype), idx=d.randint(0, M, B, N, 3).to(d.pick(
        [torch.int32, torch.int64])), weight=d.rand(B, N, 3, dtype=dtype))


def _interp_check(a, out):
    close(out, ref_pc.three_interpolate(f64(a["features"]), a["idx"].long(), f64(a["weight"])))


INTERP = Spec("three_interpolate", _interp_draw, lambda a: ops.three_interpolate(**a), _interp_check,
              _idx_mutations() + [
                  Mutation("weight shape", lambda a, d: replaced(a, weight=a["weight"][..., :2]), "weight"),
                  Mutation("idx neighbours", lambda a, d: replaced(a, idx=a["idx"][..., :2]), "idx"),
                  Mutation("weight dtype", lambda a, d: replaced(a, weight=a["weight"].to(other_float(
                      a["features"].dtype))), "weight|features"),
              ])


def _knn_gather_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, P1, P2, K, D = d.int(0, 2, "B"), d.int(0, 3, "P1"), d.int(1, 5, "P2"), d.int(1, 3, "K"), d.int(1, 3, "D")
    return dict(x=d.randn(B, P2, D, dtype=dtype), idx=d.randint(0, P2, B, P1, K))


def _knn_gather_check(a, out):
    x, idx = f64(a["x"]), a["idx"]
    B, P1, K = idx.shape
    expected = torch.gather(x, 1, idx.reshape(B, P1 * K, 1).expand(B, P1 * K, x.shape[2]))
    close(out, expected.reshape(B, P1, K, x.shape[2]))


KNN_GATHER = Spec("knn_gather", _knn_gather_draw, lambda a: ops.knn_gather(**a), _knn_gather_check, [
    Mutation("idx batch", lambda a, d: replaced(a, idx=_grow_batch(a["idx"])), "idx|x|batch"),
    Mutation("float idx", lambda a, d: replaced(a, idx=a["idx"].double()), "idx"),
    Mutation("x rank", lambda a, d: replaced(a, x=a["x"].flatten(1)), r"\bx\b"),
    Mutation("lengths size", lambda a, d: replaced(a, lengths=torch.zeros(a["x"].shape[0] + 1, dtype=torch.int64)),
             "lengths"),
])


def _masked_gather_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, N, M, D = d.int(0, 2, "B"), d.int(1, 5, "N"), d.int(0, 4, "M"), d.int(1, 3, "D")
    return dict(points=d.randn(B, N, D, dtype=dtype), idx=d.randint(-1, N, B, M))


def _masked_gather_check(a, out):
    p, idx = f64(a["points"]), a["idx"]
    B, M = idx.shape
    expected = torch.gather(p, 1, idx.clamp(min=0)[..., None].expand(B, M, p.shape[2]))
    close(out, expected.masked_fill((idx < 0)[..., None], 0.0))


MASKED_GATHER = Spec("masked_gather", _masked_gather_draw, lambda a: ops.masked_gather(**a), _masked_gather_check, [
    Mutation("idx batch", lambda a, d: replaced(a, idx=_grow_batch(a["idx"])), "idx|points|batch"),
    Mutation("float idx", lambda a, d: replaced(a, idx=a["idx"].double()), "idx"),
    Mutation("points rank", lambda a, d: replaced(a, points=a["points"].flatten(1)), "points"),
])


def _chamfer_draw(d: Draw) -> dict:
    p1, p2, l1, l2 = _clouds(d, d.pick(FLOATS, "dtype"))
    return dict(x=p1, y=p2, x_lengths=l1, y_lengths=l2, batch_reduction=d.pick(["mean", "sum", None]),
                point_reduction=d.pick(["mean", "sum"]), norm=d.pick([1, 2]))


def _chamfer_check(a, out):
    b = {k: f64(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in a.items()}
    close(out[0], ref_pc.chamfer_distance(**b))


CHAMFER = Spec("chamfer_distance", _chamfer_draw, lambda a: ops.chamfer_distance(**a), _chamfer_check,
               _cloud_mutations("x", "y", ("x_lengths", "y_lengths")) + [
                   Mutation("norm 3", lambda a, d: replaced(a, norm=3), "norm"),
                   Mutation("batch_reduction", lambda a, d: replaced(a, batch_reduction="median"), "batch_reduction"),
               ])


def _bq_mmcv_draw(d: Draw) -> dict:
    p1, p2, _, _ = _clouds(d, d.pick(FLOATS, "dtype"), with_lengths=False)
    return dict(min_radius=d.pick([0.0, 0.3]), max_radius=d.pick([0.8, 1.5]), sample_num=d.int(1, 4, "sample_num"),
                xyz=p2, center_xyz=p1)


def _bq_mmcv_check(a, out):
    expected = ref_pc.ball_query_mmcv_idx(a["min_radius"], a["max_radius"], a["sample_num"], f64(a["xyz"]),
                                          f64(a["center_xyz"]))
    assert torch.equal(out.long(), expected)


BALL_MMCV = Spec("ball_query_mmcv", _bq_mmcv_draw, lambda a: ops.ball_query_mmcv(**a), _bq_mmcv_check,
                 _cloud_mutations("xyz", "center_xyz", lengths=None) + [
                     Mutation("sample_num 0", lambda a, d: replaced(a, sample_num=0), "sample_num"),
                     Mutation("radii in the wrong order", lambda a, d: replaced(a, min_radius=2.0), "radius"),
                 ])


def _stacked_counts(d: Draw, low: int, high: int, B: int) -> torch.Tensor:
    return torch.tensor([d.int(low, high) for _ in range(B)], dtype=torch.int64)


def _sbq_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B = d.int(1, 3, "B")
    n, m = _stacked_counts(d, 1, 4, B), _stacked_counts(d, 0, 3, B)
    return dict(min_radius=0.0, max_radius=d.pick([0.8, 1.5]), sample_num=d.int(1, 3, "sample_num"),
                xyz=d.randn(int(n.sum()), 3, dtype=dtype), center_xyz=d.randn(int(m.sum()), 3, dtype=dtype),
                xyz_batch_cnt=n, center_xyz_batch_cnt=m)


def _sbq_check(a, out):
    b = {k: f64(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in a.items()}
    assert torch.equal(out.long(), ref_pc.stacked_ball_query_idx(**b))


STACKED_BALL = Spec("stacked_ball_query", _sbq_draw, lambda a: ops.stacked_ball_query(**a), _sbq_check, [
    Mutation("counts do not sum to xyz", lambda a, d: replaced(a, xyz=a["xyz"][1:]), "xyz"),
    Mutation("counts do not sum to centres", lambda a, d: replaced(a, center_xyz=torch.cat(
        [a["center_xyz"], a["center_xyz"].new_zeros(1, 3)])), "center_xyz"),
    Mutation("counts of different batches", lambda a, d: replaced(a, center_xyz_batch_cnt=torch.cat(
        [a["center_xyz_batch_cnt"], torch.zeros(1, dtype=torch.int64)])), "batch_cnt"),
    Mutation("float counts", lambda a, d: replaced(a, xyz_batch_cnt=a["xyz_batch_cnt"].double()), "xyz_batch_cnt"),
    Mutation("point dimension", lambda a, d: replaced(a, center_xyz=a["center_xyz"][:, :2]), "xyz"),
    Mutation("xyz rank", lambda a, d: replaced(a, xyz=a["xyz"][None]), "xyz"),
    Mutation("sample_num 0", lambda a, d: replaced(a, sample_num=0), "sample_num"),
])


def _sgroup_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, C, S = d.int(1, 3, "B"), d.int(1, 3, "C"), d.int(1, 3, "S")
    n, m = _stacked_counts(d, 1, 4, B), _stacked_counts(d, 0, 3, B)
    idx = torch.cat([d.randint(0, int(nb), int(mb), S) for nb, mb in zip(n, m)])
    return dict(features=d.randn(int(n.sum()), C, dtype=dtype), idx=idx, features_batch_cnt=n,
                indices_batch_cnt=m)


def _sgroup_check(a, out):
    close(out, ref_pc.stacked_grouping(f64(a["features"]), a["idx"], a["features_batch_cnt"],
                                       a["indices_batch_cnt"]))


STACKED_GROUP = Spec("stacked_grouping_operation", _sgroup_draw, lambda a: ops.stacked_grouping_operation(**a),
                     _sgroup_check, [
    Mutation("counts do not sum to features", lambda a, d: replaced(a, features=a["features"][1:]), "features"),
    Mutation("counts do not sum to idx", lambda a, d: replaced(a, idx=torch.cat(
        [a["idx"], a["idx"].new_zeros(1, a["idx"].shape[1])])), r"\bidx|indices"),
    Mutation("index past its cloud", lambda a, d: replaced(a, idx=a["idx"] + int(a["features_batch_cnt"].max()))
             if a["idx"].numel() else None, r"\bidx|range"),
    Mutation("float idx", lambda a, d: replaced(a, idx=a["idx"].double()), r"\bidx"),
    Mutation("features rank", lambda a, d: replaced(a, features=a["features"].flatten()), "features"),
    Mutation("counts of different batches", lambda a, d: replaced(a, features_batch_cnt=torch.cat(
        [a["features_batch_cnt"], torch.zeros(1, dtype=torch.int64)])), "batch_cnt"),
])


def _fps_dist_draw(d: Draw) -> dict:
    B, N = d.int(0, 2, "B"), d.int(1, 5, "N")
    p = d.randn(B, N, 3)
    return dict(points_dist=ref_pc.pairwise_sq_dists(p, p).to(d.pick(FLOATS, "dtype")),
                num_points=d.int(1, N + 1, "num_points"))


FPS_DIST = Spec("furthest_point_sample_with_dist", _fps_dist_draw, lambda a: ops.furthest_point_sample_with_dist(**a),
                lambda a, out: _same_idx(out, ref_pc.furthest_point_sample_with_dist_idx(f64(a["points_dist"]),
                                                                                         a["num_points"])), [
    Mutation("not square", lambda a, d: replaced(a, points_dist=a["points_dist"][:, :, 1:]), "points_dist"),
    Mutation("rank", lambda a, d: replaced(a, points_dist=a["points_dist"].flatten(1)), "points_dist"),
    Mutation("num_points 0", lambda a, d: replaced(a, num_points=0), "num_points"),
    Mutation("NaN distance", lambda a, d: replaced(a, points_dist=torch.full_like(a["points_dist"], float("nan")))
             if a["points_dist"].numel() else None, "points_dist|NaN"),
])


def _same_idx(out, expected):
    assert torch.equal(out.long(), expected)


def _upfirdn_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    N, C, H, W = d.int(0, 2, "N"), d.int(1, 2, "C"), d.int(1, 5, "H"), d.int(1, 5, "W")
    kind = d.pick(["none", "1d", "2d"], "filter")
    f = None if kind == "none" else d.rand(d.int(1, 4, "fh"), dtype=torch.float64) if kind == "1d" else \
        d.rand(d.int(1, 3, "fh"), d.int(1, 3, "fw"), dtype=torch.float64)
    up, down = (d.int(1, 2), d.int(1, 2)), (d.int(1, 2), d.int(1, 2))
    pad = [d.int(-1, 2) for _ in range(4)]
    fw, fh = (1, 1) if f is None else (f.shape[-1], f.shape[0])
    for axis, (n, size) in enumerate(((W, fw), (H, fh))):  # an output of at least one sample along each axis
        while (n * up[axis] + pad[2 * axis] + pad[2 * axis + 1] - size + down[axis]) // down[axis] < 1 or \
                n * up[axis] + min(pad[2 * axis], 0) + min(pad[2 * axis + 1], 0) < 1:
            pad[2 * axis if pad[2 * axis] < 0 else 2 * axis + 1] += 1
    return dict(x=d.randn(N, C, H, W, dtype=dtype), f=f, up=up, down=down, padding=tuple(pad),
                flip_filter=d.bool("flip"), gain=d.pick([1.0, 2.0]))


def _upfirdn_check(a, out):
    f = torch.ones(1, 1, dtype=torch.float64) if a["f"] is None else a["f"]
    close(out, ref_sg.upfirdn2d(f64(a["x"]), f, a["up"], a["down"], a["padding"], a["flip_filter"], a["gain"]))


UPFIRDN = Spec("upfirdn2d", _upfirdn_draw, lambda a: ops.upfirdn2d(**a), _upfirdn_check, [
    Mutation("x rank", lambda a, d: replaced(a, x=a["x"].flatten(2)), r"\bx\b"),
    Mutation("filter rank", lambda a, d: replaced(a, f=torch.ones(1, 1, 1)), r"\bf\b|filter"),
    Mutation("up 0", lambda a, d: replaced(a, up=0), r"\bup\b"),
    Mutation("down 0", lambda a, d: replaced(a, down=(1, 0)), "down"),
    Mutation("padding of 3", lambda a, d: replaced(a, padding=(0, 0, 0)), "padding"),
    Mutation("padding crops everything", lambda a, d: replaced(a, padding=-max(a["x"].shape[2:]) - 2), "padding|output"),
    Mutation("integer x", lambda a, d: replaced(a, x=a["x"].long()), r"\bx\b"),
])


def _bias_act_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    shape = [d.int(0, 3) for _ in range(d.int(1, 4, "rank"))]
    dim = d.int(-len(shape), len(shape) - 1, "dim")
    return dict(x=d.randn(*shape, dtype=dtype), b=d.randn(shape[dim], dtype=dtype) if d.bool("bias") else None,
                dim=dim, act=d.pick(sorted(ref_sg.ACTIVATIONS), "act"), alpha=d.pick([None, 0.1]),
                gain=d.pick([None, 0.5]), clamp=d.pick([None, 0.7]))


def _bias_act_check(a, out):
    _, alpha, gain = ref_sg.ACTIVATIONS[a["act"]]
    alpha = alpha if a["alpha"] is None else a["alpha"]
    gain = gain if a["gain"] is None else a["gain"]
    close(out, ref_sg.bias_act(f64(a["x"]), f64(a["b"]), a["dim"] % a["x"].dim(), a["act"], alpha, gain, a["clamp"]))


def _bias_of(a, n):
    return a["x"].new_zeros(n)


BIAS_ACT = Spec("bias_act", _bias_act_draw, lambda a: ops.bias_act(**a), _bias_act_check, [
    Mutation("bias size", lambda a, d: replaced(a, b=_bias_of(a, a["x"].shape[a["dim"]] + 1)), r"\bb\b"),
    Mutation("bias rank", lambda a, d: replaced(a, b=_bias_of(a, a["x"].shape[a["dim"]])[None]), r"\bb\b"),
    Mutation("bias dtype", lambda a, d: replaced(a, b=a["x"].new_zeros(a["x"].shape[a["dim"]], dtype=other_float(
        a["x"].dtype))), r"\bb\b"),
    Mutation("dim out of range", lambda a, d: replaced(a, dim=a["x"].dim(), b=_bias_of(a, 1)), "dim"),
    Mutation("unknown act", lambda a, d: replaced(a, act="gelu"), "act"),
    Mutation("negative clamp", lambda a, d: replaced(a, clamp=-1.0), "clamp"),
    Mutation("integer x", lambda a, d: replaced(a, x=a["x"].long(), b=None), r"\bx\b"),
])


def _raster_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, V, F = d.int(0, 2, "B"), d.int(1, 6, "V"), d.int(0, 5, "F")
    xyz = d.rand(B, V, 3) * 2 - 1
    w = d.rand(B, V) + 0.5
    verts = torch.cat([xyz * w[..., None], w[..., None]], -1).to(dtype)
    faces = d.randint(0, V, F, 3).to(d.pick([torch.int32, torch.int64], "faces dtype"))
    return dict(verts_clip=verts, faces=faces, image_size=(d.int(1, 6, "H"), d.int(1, 6, "W")),
                cull_backfaces=d.bool("cull"))


def _raster_check(a, out):
    close(out, ref_raster.rasterize_triangles(f64(a["verts_clip"]).to(a["verts_clip"].dtype), a["faces"],
                                              a["image_size"], a["cull_backfaces"]).double())


RASTER = Spec("rasterize_triangles", _raster_draw, lambda a: ops.rasterize_triangles(**a), _raster_check, [
    Mutation("verts components", lambda a, d: replaced(a, verts_clip=a["verts_clip"][..., :3]), "verts_clip"),
    Mutation("verts rank", lambda a, d: replaced(a, verts_clip=a["verts_clip"].flatten(0, 1)), "verts_clip"),
    Mutation("faces of 4", lambda a, d: replaced(a, faces=torch.cat([a["faces"], a["faces"][:, :1]], 1)), "faces"),
    Mutation("face index past V", lambda a, d: replaced(a, faces=a["faces"] + a["verts_clip"].shape[1])
             if a["faces"].numel() else None, "faces"),
    Mutation("float faces", lambda a, d: replaced(a, faces=a["faces"].double()), "faces"),
    Mutation("integer verts", lambda a, d: replaced(a, verts_clip=a["verts_clip"].long()), "verts_clip"),
    Mutation("image_size 0", lambda a, d: replaced(a, image_size=(0, a["image_size"][1])), "image_size"),
    Mutation("image_size of 3", lambda a, d: replaced(a, image_size=(*a["image_size"], 1)), "image_size"),
])


def _interp_attr_draw(d: Draw) -> dict:
    mesh = _raster_draw(d)
    rast = ops.rasterize_triangles(**mesh)
    return dict(attr=d.randn(mesh["verts_clip"].shape[0], mesh["verts_clip"].shape[1], d.int(1, 3, "C"),
                             dtype=rast.dtype), rast=rast, faces=mesh["faces"])


def _interp_attr_check(a, out):
    attr, rast, faces = f64(a["attr"]), f64(a["rast"]), a["faces"]
    if faces.shape[0] == 0:  # no triangle, every pixel empty (the reference function indexes the empty faces)
        close(out, attr.new_zeros(*rast.shape[:3], attr.shape[2]))
    else:
        close(out, ref_raster.interpolate_attributes(attr, rast, faces))


INTERP_ATTR = Spec("interpolate_attributes", _interp_attr_draw, lambda a: ops.interpolate_attributes(**a),
                   _interp_attr_check, [
    Mutation("attr batch", lambda a, d: replaced(a, attr=_grow_batch(a["attr"])), "attr|rast"),
    Mutation("attr rank", lambda a, d: replaced(a, attr=a["attr"].flatten(1)), "attr"),
    Mutation("rast channels", lambda a, d: replaced(a, rast=a["rast"][..., :3]), "rast"),
    Mutation("rast dtype", lambda a, d: replaced(a, rast=a["rast"].to(other_float(a["attr"].dtype))), "rast|attr"),
    Mutation("faces of 2", lambda a, d: replaced(a, faces=a["faces"][:, :2]), "faces"),
    Mutation("float faces", lambda a, d: replaced(a, faces=a["faces"].double()), "faces"),
])


def _texture_draw(d: Draw) -> dict:
    dtype = d.pick(FLOATS, "dtype")
    B, C, Ht, Wt, H, W = (d.int(0, 2, "B"), d.int(1, 3, "C"), d.int(1, 4, "Ht"), d.int(1, 4, "Wt"), d.int(0, 3, "H"),
                          d.int(0, 3, "W"))
    return dict(tex=d.randn(B, C, Ht, Wt, dtype=dtype), uv=d.rand(B, H, W, 2, dtype=dtype) * 1.4 - 0.2,
                padding_mode=d.pick(["border", "zeros", "reflection"], "padding_mode"))


def _texture_check(a, out):
    """grid_sample with align_corners=False on 2 uv - 1 (the documented convention), in float64."""
    tex, uv = f64(a["tex"]), f64(a["uv"])
    if uv.numel() == 0 or tex.shape[0] == 0:
        assert out.shape == (*uv.shape[:3], tex.shape[1])
        return
    expected = F.grid_sample(tex, 2 * uv - 1, mode="bilinear", padding_mode=a["padding_mode"], align_corners=False)
    close(out, expected.permute(0, 2, 3, 1))


TEXTURE = Spec("texture_sample", _texture_draw, lambda a: ops.texture_sample(**a), _texture_check, [
    Mutation("uv batch", lambda a, d: replaced(a, uv=_grow_batch(a["uv"])), "uv|tex"),
    Mutation("uv components", lambda a, d: replaced(a, uv=torch.cat([a["uv"], a["uv"][..., :1]], -1)), "uv"),
    Mutation("tex rank", lambda a, d: replaced(a, tex=a["tex"].flatten(2)), "tex"),
    Mutation("uv dtype", lambda a, d: replaced(a, uv=a["uv"].to(other_float(a["tex"].dtype))), "uv|tex"),
    Mutation("padding_mode", lambda a, d: replaced(a, padding_mode="circular"), "padding_mode"),
])


SPECS = [DEFORM, MVF, MVF_BN, GSS, SCALE_ATTENTION, SCALE_SPACE_WEIGHT, SPHERE, VQ, ATTENTION, KNN, BALL, SFP, FPS,
         GATHER, GROUP, THREE_NN, INTERP, KNN_GATHER, MASKED_GATHER, CHAMFER, BALL_MMCV, STACKED_BALL, STACKED_GROUP,
         FPS_DIST, UPFIRDN, BIAS_ACT, RASTER, INTERP_ATTR, TEXTURE]

# Every public op has a spec (KNN is the result type, not an op).
COVERED = {spec.name for spec in SPECS}


def test_every_public_op_has_a_spec():
    missing = sorted(set(ops.__all__) - COVERED - {"KNN"})
    assert not missing, f"ops without a property spec: {missing}"


def _invalid_cases() -> list:
    return [pytest.param(spec, i, id=f"{spec.name}-{m.label}", marks=XFAIL.get((spec.name, m.label), ()))
            for spec in SPECS for i, m in enumerate(spec.mutations)]


# (op, mutation label) -> the xfail(strict=True) of a bug this test found in code another change owns
XFAIL: dict = {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", SPECS, ids=str)
@settings(max_examples=VALID_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_valid_arguments_give_the_reference(spec, backend, data):
    d = Draw(data)
    args = spec.draw(d)
    with use_backend(backend):
        out = spec.run(args)
    spec.check(args, out)


def _names(message: str, names: str) -> bool:
    return re.search(names, message) is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec, mutation", _invalid_cases())
@settings(max_examples=INVALID_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_invalid_arguments_raise_an_error_naming_them(spec, mutation, backend, data):
    from hypothesis import assume

    d = Draw(data)
    m = spec.mutations[mutation]
    args = m.apply(spec.draw(d), d)
    assume(args is not None)
    with use_backend(backend):
        try:
            out = spec.run(args)
        except (ValueError, TypeError) as exc:
            assert _names(str(exc), m.names), f"{type(exc).__name__} does not name {m.names!r}: {exc}"
            return
    pytest.fail(f"{spec.name} accepted {m.label!r} and returned {type(out).__name__}")
