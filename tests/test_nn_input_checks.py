"""Every layer of pyvision_fast.nn checks its input's rank and the sizes it fixes (channels, frames, task count,
coordinates) in forward and raises a ValueError that names the layer, the argument and the expected size, before
any op runs; inputs of the right shape pass."""
from __future__ import annotations

import re
from typing import Callable, NamedTuple

import pytest
import torch
from torch import nn

from pyvision_fast.nn import (MVF, NDDR, Blur, DeformConv2d, DeformConv2dPack, Downsample2d, FusedAttention,
                              FusedBiasAct, ModulatedConv2d, ModulatedDeformConv2dPack, MultiheadAttention,
                              NDDRConcat, PatchEmbed, PointNetFeaturePropagation, PointNetSetAbstraction,
                              PointNetSetAbstractionMsg, ScaleAttention, ScaleSpaceConv2d, SphereConv2d,
                              SpherePatchEmbed, Upsample2d)

r = torch.randn


class Case(NamedTuple):
    id: str
    make: Callable[[], nn.Module]
    call: Callable[[nn.Module], object]
    words: tuple[str, ...]  # each must appear in the message (the layer, the argument, the expected size)


def _msa(**kw) -> MultiheadAttention:
    return MultiheadAttention(16, 2, **kw)


def _sa(in_channels: int = 4, group_all: bool = False, layout: str = "sequential") -> PointNetSetAbstraction:
    return PointNetSetAbstraction(4, 0.5, 4, in_channels, [8], group_all=group_all, layout=layout)


def _msg(in_channels: int = 4) -> PointNetSetAbstractionMsg:
    return PointNetSetAbstractionMsg(4, [0.3, 0.6], [4, 4], in_channels, [[8], [8]])


def _fp() -> PointNetFeaturePropagation:
    return PointNetFeaturePropagation(12, [8])  # C1 + C2 = 12


def _mvf(alpha: float = 0.25) -> MVF:
    return MVF(nn.Conv2d(8, 8, 1), n_segment=4, in_channels=8, alpha=alpha)


GOOD = [
    Case("FusedAttention", lambda: FusedAttention(64, 4), lambda m: m(r(2, 5, 64)), ()),
    Case("MultiheadAttention", _msa, lambda m: m(r(5, 2, 16), r(6, 2, 16), r(6, 2, 16), need_weights=False), ()),
    Case("MultiheadAttention unbatched", _msa, lambda m: m(r(5, 16), r(6, 16), r(6, 16)), ()),
    Case("MultiheadAttention kdim", lambda: MultiheadAttention(16, 2, kdim=6, vdim=10, batch_first=True),
         lambda m: m(r(2, 5, 16), r(2, 6, 6), r(2, 6, 10)), ()),
    Case("DeformConv2d", lambda: DeformConv2d(4, 6, 3), lambda m: m(r(2, 4, 6, 6), torch.zeros(2, 18, 4, 4)), ()),
    Case("DeformConv2dPack", lambda: DeformConv2dPack(4, 6, 3, padding=1), lambda m: m(r(2, 4, 6, 6)), ()),
    Case("ModulatedDeformConv2dPack", lambda: ModulatedDeformConv2dPack(4, 6, 3), lambda m: m(r(2, 4, 6, 6)), ()),
    Case("MVF", _mvf, lambda m: m(r(8, 8, 3, 3)), ()),
    Case("MVF alpha 0", lambda: _mvf(0.0), lambda m: m(r(8, 8, 3, 3)), ()),
    Case("NDDR", lambda: NDDR(2, 4), lambda m: m(r(2, 4, 3, 3), r(2, 4, 3, 3)), ()),
    Case("NDDRConcat", lambda: NDDRConcat(2, 4), lambda m: m(r(2, 4, 3, 3), r(2, 4, 3, 3)), ()),
    Case("PatchEmbed", lambda: PatchEmbed(16, 8, 3, 12), lambda m: m(r(2, 3, 16, 16)), ()),
    Case("SetAbstraction", _sa, lambda m: m(r(2, 16, 3), r(2, 4, 16)), ()),
    Case("SetAbstraction official", lambda: _sa(layout="official"), lambda m: m(r(2, 16, 3), r(2, 4, 16)), ()),
    Case("SetAbstraction xyz only", lambda: _sa(0), lambda m: m(r(2, 16, 3)), ()),
    Case("SetAbstraction group_all", lambda: _sa(group_all=True), lambda m: m(r(2, 16, 3), r(2, 4, 16)), ()),
    Case("SetAbstractionMsg", _msg, lambda m: m(r(2, 16, 3), r(2, 4, 16)), ()),
    Case("FeaturePropagation", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), r(2, 5, 16), r(2, 7, 4)), ()),
    Case("FeaturePropagation no features1", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), None, r(2, 12, 4)), ()),
    Case("ScaleSpaceConv2d", lambda: ScaleSpaceConv2d(3, 8, 3, num_scales=2), lambda m: m(r(2, 3, 7, 7)), ()),
    Case("ScaleAttention", lambda: ScaleAttention(2), lambda m: m(r(2, 6, 3, 3)), ()),
    Case("SphereConv2d", lambda: SphereConv2d(3, 4, 3), lambda m: m(r(1, 3, 8, 16)), ()),
    Case("SpherePatchEmbed", lambda: SpherePatchEmbed((16, 32), 8, 3, 8), lambda m: m(r(1, 3, 16, 32)), ()),
    Case("Upsample2d", Upsample2d, lambda m: m(r(2, 3, 4, 4)), ()),
    Case("Downsample2d", Downsample2d, lambda m: m(r(2, 3, 4, 4)), ()),
    Case("Blur", Blur, lambda m: m(r(2, 3, 4, 4)), ()),
    Case("FusedBiasAct", lambda: FusedBiasAct(5), lambda m: m(r(2, 5, 3)), ()),
    Case("FusedBiasAct last dim", lambda: FusedBiasAct(5, dim=-1), lambda m: m(r(2, 3, 5)), ()),
    Case("ModulatedConv2d", lambda: ModulatedConv2d(3, 4, 3, 8), lambda m: m(r(2, 3, 5, 5), r(2, 8)), ()),
]

BAD = [
    # the example
    Case("FusedAttention channels", lambda: FusedAttention(64, 4), lambda m: m(r(2, 5, 32)),
         ("FusedAttention", "x", "64", "32")),
    Case("FusedAttention rank", lambda: FusedAttention(64, 4), lambda m: m(r(5, 64)), ("FusedAttention", "64")),
    Case("MultiheadAttention query channels", _msa, lambda m: m(r(5, 2, 8), r(6, 2, 16), r(6, 2, 16)),
         ("MultiheadAttention", "query", "16", "(5, 2, 8)")),
    Case("MultiheadAttention key channels", _msa, lambda m: m(r(5, 2, 16), r(6, 2, 8), r(6, 2, 16)),
         ("MultiheadAttention", "key", "16")),
    Case("MultiheadAttention value channels torch path", _msa,
         lambda m: m(r(5, 2, 16), r(6, 2, 16), r(6, 2, 9), need_weights=True), ("MultiheadAttention", "value", "16")),
    Case("MultiheadAttention kdim", lambda: MultiheadAttention(16, 2, kdim=6, vdim=10),
         lambda m: m(r(5, 2, 16), r(6, 2, 16), r(6, 2, 10)), ("MultiheadAttention", "key", "6")),
    Case("MultiheadAttention rank", _msa, lambda m: m(r(1, 5, 2, 16), r(6, 2, 16), r(6, 2, 16)),
         ("MultiheadAttention", "query", "16")),
    Case("MultiheadAttention key rank", _msa, lambda m: m(r(5, 2, 16), r(6, 16), r(6, 2, 16)),
         ("MultiheadAttention", "key", "3 dimensions")),
    Case("DeformConv2d channels", lambda: DeformConv2d(4, 6, 3),
         lambda m: m(r(2, 3, 6, 6), torch.zeros(2, 18, 4, 4)), ("DeformConv2d", "input", "4", "got 3")),
    Case("DeformConv2d rank", lambda: DeformConv2d(4, 6, 3), lambda m: m(r(4, 6, 6), torch.zeros(2, 18, 4, 4)),
         ("DeformConv2d", "input", "4 dimensions")),
    Case("DeformConv2dPack channels", lambda: DeformConv2dPack(4, 6, 3), lambda m: m(r(2, 5, 6, 6)),
         ("DeformConv2dPack", "x", "4")),
    Case("ModulatedDeformConv2dPack channels", lambda: ModulatedDeformConv2dPack(4, 6, 3),
         lambda m: m(r(2, 8, 6, 6)), ("ModulatedDeformConv2dPack", "x", "4", "got 8")),
    Case("MVF channels", _mvf, lambda m: m(r(8, 6, 3, 3)), ("MVF", "x", "8", "got 6")),
    Case("MVF rank", _mvf, lambda m: m(r(2, 4, 8, 3, 3)), ("MVF", "x", "4 dimensions")),
    Case("MVF frames", _mvf, lambda m: m(r(6, 8, 3, 3)), ("MVF", "x", "6 frames", "n_segment=4")),
    Case("MVF alpha 0 channels", lambda: _mvf(0.0), lambda m: m(r(8, 6, 3, 3)), ("MVF", "x", "8")),
    Case("NDDR tasks", lambda: NDDR(2, 4), lambda m: m(r(2, 4, 3, 3)), ("NDDR", "expected 2 task features")),
    Case("NDDR channels", lambda: NDDR(2, 4), lambda m: m(r(2, 4, 3, 3), r(2, 5, 3, 3)),
         ("NDDR", "feature 1", "5 channels", "expects 4")),
    Case("NDDR rank", lambda: NDDR(2, 4), lambda m: m(r(2, 4, 3), r(2, 4, 3)), ("NDDR", "feature 0", "C=4")),
    Case("NDDRConcat channels", lambda: NDDRConcat(2, 4), lambda m: m(r(2, 3, 3, 3), r(2, 4, 3, 3)),
         ("NDDRConcat", "feature 0", "expects 4")),
    Case("PatchEmbed channels", lambda: PatchEmbed(16, 8, 3, 12), lambda m: m(r(2, 1, 16, 16)),
         ("PatchEmbed", "(B, 3, H, W)")),
    Case("SetAbstraction features channels", _sa, lambda m: m(r(2, 16, 3), r(2, 5, 16)),
         ("PointNetSetAbstraction", "features", "4", "got 5")),
    Case("SetAbstraction xyz last dim", _sa, lambda m: m(r(2, 16, 2), r(2, 4, 16)),
         ("PointNetSetAbstraction", "xyz", "3", "got 2")),
    Case("SetAbstraction xyz rank", _sa, lambda m: m(r(16, 3), r(2, 4, 16)), ("PointNetSetAbstraction", "xyz")),
    Case("SetAbstraction points", _sa, lambda m: m(r(2, 16, 3), r(2, 4, 15)),
         ("PointNetSetAbstraction", "features", "16", "number of points")),
    Case("SetAbstraction batch", _sa, lambda m: m(r(2, 16, 3), r(3, 4, 16)),
         ("PointNetSetAbstraction", "features", "batch", "2")),
    Case("SetAbstraction features missing", _sa, lambda m: m(r(2, 16, 3)),
         ("PointNetSetAbstraction", "features", "in_channels=4", "None")),
    Case("SetAbstraction group_all channels", lambda: _sa(group_all=True), lambda m: m(r(2, 16, 3), r(2, 3, 16)),
         ("PointNetSetAbstraction", "features", "4")),
    Case("SetAbstraction official channels", lambda: _sa(layout="official"), lambda m: m(r(2, 16, 3), r(2, 6, 16)),
         ("PointNetSetAbstraction", "features", "4")),
    Case("SetAbstraction xyz-only given features", lambda: _sa(0), lambda m: m(r(2, 16, 3), r(2, 3, 16)),
         ("PointNetSetAbstraction", "features", "(B, 0, N)")),
    Case("SetAbstractionMsg channels", _msg, lambda m: m(r(2, 16, 3), r(2, 2, 16)),
         ("PointNetSetAbstractionMsg", "features", "4", "got 2")),
    Case("SetAbstractionMsg xyz", _msg, lambda m: m(r(2, 16, 4), r(2, 4, 16)), ("PointNetSetAbstractionMsg", "xyz", "3")),
    Case("FeaturePropagation features2 channels", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), r(2, 5, 16), r(2, 6, 4)),
         ("PointNetFeaturePropagation", "features2", "7", "got 6")),
    Case("FeaturePropagation no features1", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), None, r(2, 7, 4)),
         ("PointNetFeaturePropagation", "features2", "12")),
    Case("FeaturePropagation features1 too wide", _fp,
         lambda m: m(r(2, 16, 3), r(2, 4, 3), r(2, 12, 16), r(2, 1, 4)),
         ("PointNetFeaturePropagation", "features1", "in_channels=12")),
    Case("FeaturePropagation xyz2", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 2), r(2, 5, 16), r(2, 7, 4)),
         ("PointNetFeaturePropagation", "xyz2", "3")),
    Case("FeaturePropagation points", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), r(2, 5, 16), r(2, 7, 5)),
         ("PointNetFeaturePropagation", "features2", "4", "number of points")),
    Case("FeaturePropagation features1 points", _fp, lambda m: m(r(2, 16, 3), r(2, 4, 3), r(2, 5, 10), r(2, 7, 4)),
         ("PointNetFeaturePropagation", "features1", "16")),
    Case("ScaleSpaceConv2d channels", lambda: ScaleSpaceConv2d(3, 8, 3, num_scales=2), lambda m: m(r(2, 4, 7, 7)),
         ("ScaleSpaceConv2d", "x", "3", "got 4")),
    Case("ScaleSpaceConv2d rank", lambda: ScaleSpaceConv2d(3, 8, 3, num_scales=2), lambda m: m(r(3, 7, 7)),
         ("ScaleSpaceConv2d", "x", "4 dimensions")),
    Case("ScaleAttention groups", lambda: ScaleAttention(4), lambda m: m(r(2, 6, 3, 3)),
         ("ScaleAttention", "y", "num_scales=4")),
    Case("SphereConv2d channels", lambda: SphereConv2d(3, 4, 3), lambda m: m(r(1, 2, 8, 16)),
         ("SphereConv2d", "x", "3", "got 2")),
    Case("SphereConv2d rank", lambda: SphereConv2d(3, 4, 3), lambda m: m(r(3, 8, 16)),
         ("SphereConv2d", "x", "4 dimensions")),
    Case("SpherePatchEmbed channels", lambda: SpherePatchEmbed((16, 32), 8, 3, 8), lambda m: m(r(1, 1, 16, 32)),
         ("SpherePatchEmbed", "x", "(B, 3, 16, 32)", "got 1")),
    Case("SpherePatchEmbed size", lambda: SpherePatchEmbed((16, 32), 8, 3, 8), lambda m: m(r(1, 3, 16, 16)),
         ("SpherePatchEmbed", "x", "(B, 3, 16, 32)")),
    Case("Upsample2d rank", Upsample2d, lambda m: m(r(3, 4, 4)), ("Upsample2d", "x", "4 dimensions")),
    Case("Downsample2d rank", Downsample2d, lambda m: m(r(1, 2, 3, 4, 4)), ("Downsample2d", "x", "4 dimensions")),
    Case("Blur rank", Blur, lambda m: m(r(4, 4)), ("Blur", "x", "4 dimensions")),
    Case("FusedBiasAct channels", lambda: FusedBiasAct(5), lambda m: m(r(2, 4, 3)),
         ("FusedBiasAct", "x", "5 channels in dimension 1", "(2, 4, 3)")),
    Case("FusedBiasAct dim out of range", lambda: FusedBiasAct(5, dim=2), lambda m: m(r(2, 5)),
         ("FusedBiasAct", "x", "5 channels in dimension 2")),
    Case("ModulatedConv2d channels", lambda: ModulatedConv2d(3, 4, 3, 8), lambda m: m(r(2, 6, 5, 5), r(2, 8)),
         ("ModulatedConv2d", "x", "3", "got 6")),
    Case("ModulatedConv2d style", lambda: ModulatedConv2d(3, 4, 3, 8), lambda m: m(r(2, 3, 5, 5), r(2, 7)),
         ("ModulatedConv2d", "w", "(2, 8)", "got 7")),
    Case("ModulatedConv2d style batch", lambda: ModulatedConv2d(3, 4, 3, 8), lambda m: m(r(2, 3, 5, 5), r(1, 8)),
         ("ModulatedConv2d", "w", "(2, 8)")),
]


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_right_shapes_pass(case: Case):
    torch.manual_seed(0)
    module = case.make().eval()
    with torch.no_grad():
        case.call(module)


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_wrong_size_names_the_expected_one(case: Case):
    torch.manual_seed(0)
    module = case.make().eval()
    with pytest.raises(ValueError) as info:
        case.call(module)
    message = str(info.value)
    for word in case.words:
        assert word in message, f"{word!r} not in {message!r}"
    # raised by the layer's own check, not by an op or torch further down
    layer = type(module).__name__
    assert re.match(rf"{layer}: ", message), message


def test_every_layer_has_a_bad_case():
    from pyvision_fast import nn as pnn
    layers = {name for name in pnn.__all__ if isinstance(getattr(pnn, name), type)} - {"DropPath"}
    covered = {type(case.make()).__name__ for case in BAD}
    assert layers <= covered, sorted(layers - covered)


def test_not_a_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="SphereConv2d: x must be a tensor"):
        SphereConv2d(3, 4, 3)([[1.0]])
    with pytest.raises(TypeError, match="PointNetSetAbstraction: xyz must be a tensor"):
        _sa()(None, r(2, 4, 16))


def test_deform_conv_error_is_also_runtime_error():
    """torchvision raises RuntimeError for a wrong input; code written for it still catches ours."""
    with pytest.raises(RuntimeError, match="DeformConv2d: expected input of shape"):
        DeformConv2d(4, 6, 3)(r(2, 3, 6, 6), torch.zeros(2, 18, 4, 4))


def test_checks_trace_under_export_with_dynamic_batch():
    """The checks read sizes only: torch.export with a dynamic batch keeps them as guards, and the exported
    program still computes the layer's output."""
    layer = SphereConv2d(3, 4, 3).eval()
    x = r(2, 3, 8, 16)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: batch},))
    x3 = r(3, 3, 8, 16)
    torch.testing.assert_close(program.module()(x3), layer(x3))
