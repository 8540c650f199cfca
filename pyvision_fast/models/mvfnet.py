"""MVFNet (Wu et al., "MVFNet: Multi-View Fusion Network for Efficient Video Recognition", AAAI 2021): a
TSN-style 2-D recognizer whose ResNet carries the library's multi-view fusion module (``nn.MVF``) in front of
conv1 of every bottleneck of layer3 and layer4.

    model = create_model("mvfnet_r50", num_classes=400, num_segments=8)
    logits = model(clips)              # clips (B, 3, T, H, W) float32, T == num_segments -> (B, num_classes)

Layout and keys: the model *is* a ``torchvision.models.ResNet`` (``conv1``, ``bn1``, ``layer1..4``, ``fc``),
so its state_dict keys are torchvision's, except that a wrapped conv1 appears as ``layerX.Y.conv1.net.weight``
beside the MVF parameters (``conv1.shift_conv.weight``, ``conv1.h_conv.weight``, ``conv1.w_conv.weight``,
``conv1.bn.*``), as in the official code. Weights that load:

* torchvision ImageNet ResNet weights (the paper's initialisation): :func:`load_imagenet_resnet`, or
  ``load_weights`` / ``create_model(checkpoint_path=...)`` through :meth:`MVFNet.adapt_state_dict`. Every
  ResNet tensor must be there; the ImageNet ``fc`` is never used (the classifier starts from N(0, 0.01)).
* the official MVFNet checkpoints (mmaction keys ``backbone.*`` and ``cls_head.new_fc.*``; the mmaction2 name
  ``cls_head.fc_cls.*`` is accepted too): :func:`convert_official_checkpoint`, also applied by
  ``adapt_state_dict``.

Input: (B, 3, T, H, W), the clip layout of torchvision's and mmaction2's video models, with T ==
``num_segments`` (the MVF modules mix frames of one clip along T, so T is fixed when the model is built). The
TSN layout (B*T, 3, H, W), frames of a clip consecutive, is accepted as well. Several views of one video are
several batch entries: average their logits outside the model (the ``mvfnet`` recipe does). The export module
is the model itself on (B, 3, T, H, W) with a dynamic batch.

Head (the official ``TSNClsHead``): global average pool per frame, dropout, ``fc``, then the average of the T
frames' logits (average consensus). Averaging after the linear ``fc`` equals the fully convolutional testing
of the official code (``--fcn_testing``) at any input size.

Parameter count at 400 classes: R50 24,342,416 (torchvision's ResNet-50 trunk 23,508,032 + fc 819,600 + 14,784
in the 9 MVF modules), the paper's "24.34M"; R101 43,358,480.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence, Union

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from ..nn import MVF, insert_mvf
from ._registry import register_model
from .weights import read_state_dict

__all__ = ["MVFNet", "mvfnet_r50", "mvfnet_r101", "load_imagenet_resnet", "convert_official_checkpoint"]

_MVF_PARAMS = ("shift_conv.", "h_conv.", "w_conv.", "bn.")


class MVFNet(ResNet):
    """A torchvision Bottleneck ResNet (``layers`` blocks per stage) with ``MVF`` wrapped around conv1 of
    every block of the stages flagged in ``mvf_stages`` and a TSN head.

    Args:
        layers: blocks per stage, (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for ResNet-101; tests use
            (1, 1, 1, 1).
        num_classes: classifier outputs.
        num_segments: frames per clip T (the MVF temporal extent); every input must carry T frames per clip.
        alpha: share of each block's input channels that goes through the fusion (official 1/8).
        dropout: dropout before ``fc`` (official 0.5).
        mode: MVF views, "THW" (official), "TH" or "T".
        mvf_stages: which of layer1..4 get MVF (official (0, 0, 1, 1)).
        width: planes of layer1's blocks (64 in every ResNet; layer i has ``width * 2**(i-1)``, the stem stays
            64): smaller values make the small models of tests and ablations; keys are unchanged.
        init_std: std of the normal initialisation of ``fc`` (bias 0), official 0.01.
    """

    head_keys = ("fc.",)

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 400, num_segments: int = 8,
                 alpha: float = 0.125, dropout: float = 0.5, mode: str = "THW",
                 mvf_stages: Sequence[int] = (0, 0, 1, 1), init_std: float = 0.01, width: int = 64):
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"MVFNet: layers must be 4 positive block counts, got {tuple(layers)}")
        if width < 8 or width % 8:
            raise ValueError(f"MVFNet: width must be a positive multiple of 8, got {width}")
        self._width = int(width)  # read by _make_layer during ResNet.__init__
        if num_segments < 1:
            raise ValueError(f"MVFNet: num_segments must be >= 1, got {num_segments}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"MVFNet: alpha must lie in [0, 1], got {alpha}")
        super().__init__(Bottleneck, [int(n) for n in layers], num_classes=num_classes)
        if width != 64:
            self.fc = nn.Linear(8 * width * Bottleneck.expansion, num_classes)
        self.num_segments = int(num_segments)
        self.alpha = float(alpha)
        self.num_mvf = insert_mvf(self, self.num_segments, self.alpha, tuple(mvf_stages), use_hs=True,
                                  mode=mode)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.normal_(self.fc.weight, 0.0, init_std)
        nn.init.zeros_(self.fc.bias)
        self.default_input_size = (3, self.num_segments, 224, 224)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1,
                    dilate: bool = False) -> nn.Sequential:
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)

    def _frames(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) or (B*T, 3, H, W) -> (B*T, 3, H, W), checking T."""
        T = self.num_segments
        if x.ndim == 5:
            if x.shape[2] != T:
                raise ValueError(f"MVFNet: clips (B, C, T, H, W) must have T == num_segments={T}, got shape "
                                 f"{tuple(x.shape)}")
            return x.transpose(1, 2).flatten(0, 1)
        if x.ndim == 4:
            if x.shape[0] % T:
                raise ValueError(f"MVFNet: {x.shape[0]} frames (B*T, C, H, W) are not a multiple of "
                                 f"num_segments={T}")
            return x
        raise ValueError(f"MVFNet: expected (B, C, T, H, W) clips or (B*T, C, H, W) frames, got shape "
                         f"{tuple(x.shape)}")

    def forward_features(self, x: Tensor) -> Tensor:
        """Clips (B, 3, T, H, W) or frames (B*T, 3, H, W) -> per-frame features (B*T, 2048, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._frames(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: Tensor) -> Tensor:
        """Per-frame features (B*T, C, h, w) -> clip logits (B, num_classes): pool, dropout, fc, mean over
        T."""
        x = self.dropout(torch.flatten(self.avgpool(features), 1))
        logits = self.fc(x)
        return logits.view(-1, self.num_segments, logits.shape[-1]).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def adapt_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Converts what ``load_weights`` reads: official MVFNet checkpoints (``backbone.*``) through
        :func:`convert_official_checkpoint`, torchvision ResNet weights (conv1 of wrapped blocks without
        ``.net``) through :func:`imagenet_to_mvfnet`; an MVFNet state_dict passes unchanged."""
        state = dict(state_dict)
        if any(k.startswith("backbone.") for k in state):
            return convert_official_checkpoint(state)
        if any(f"{name}.conv1.weight" in state for name in self._wrapped_blocks()):
            return imagenet_to_mvfnet(self, state)
        return state

    def _wrapped_blocks(self) -> list[str]:
        """Module names of the blocks whose conv1 is wrapped in MVF (``layer3.0``, ...)."""
        return [name[: -len(".conv1")] for name, m in self.named_modules() if isinstance(m, MVF)]


def imagenet_to_mvfnet(model: MVFNet, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ResNet state_dict in ``model``'s keys: each wrapped block's ``conv1.weight`` becomes
    ``conv1.net.weight``; the MVF parameters and ``fc`` (ImageNet's 1000-class classifier) are the model's own
    current tensors. Every other ResNet tensor must be in ``state_dict``, with no key left over
    (``ValueError`` naming them otherwise)."""
    wrapped = model._wrapped_blocks()
    src = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    for name in wrapped:
        key = f"{name}.conv1.weight"
        if key in src:
            src[f"{name}.conv1.net.weight"] = src.pop(key)
    own = model.state_dict()
    keep_own = [k for k in own if k.startswith("fc.") or _is_mvf_param(k)]
    missing = sorted(set(own) - set(src) - set(keep_own))
    unexpected = sorted(set(src) - set(own))
    if missing or unexpected:
        raise ValueError(f"ImageNet ResNet weights do not fit {type(model).__name__}(layers="
                         f"{[len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)]}): "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")
    src.update({k: own[k] for k in keep_own})
    return src


def _is_mvf_param(key: str) -> bool:
    parts = key.split(".conv1.", 1)
    return len(parts) == 2 and parts[1].startswith(_MVF_PARAMS)


def load_imagenet_resnet(model: MVFNet, state_dict_or_path: Union[Mapping[str, Tensor], str, Path]) -> MVFNet:
    """Loads torchvision ImageNet ResNet weights (a state_dict, or a ``.pth``/``.safetensors`` file such as
    ``resnet50-11ad3fa6.pth``) into ``model``: strict for every ResNet tensor (shape mismatches, missing or
    unexpected keys raise ``ValueError``); ``fc`` and the MVF modules keep their initialisation. Returns
    ``model``."""
    if isinstance(state_dict_or_path, (str, Path)):
        state_dict_or_path = read_state_dict(state_dict_or_path)
    state = imagenet_to_mvfnet(model, state_dict_or_path)
    own = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
           if own[k].shape != v.shape]
    if bad:
        raise ValueError(f"ImageNet ResNet weights do not fit the model: shape mismatch {bad[:4]}")
    model.load_state_dict(state, strict=True)
    return model


_HEAD_KEYS = {"cls_head.new_fc.weight": "fc.weight", "cls_head.new_fc.bias": "fc.bias",
              "cls_head.fc_cls.weight": "fc.weight", "cls_head.fc_cls.bias": "fc.bias"}


def convert_official_checkpoint(state_dict: Union[Mapping[str, Tensor], str, Path]) -> dict[str, Tensor]:
    """The official MVFNet checkpoint (``whwu95/MVFNet``, mmaction v1: ``{"state_dict": {...}}`` with keys
    ``backbone.conv1.weight``, ``backbone.layer3.0.conv1.net.weight``,
    ``backbone.layer3.0.conv1.shift_conv.weight``, ``backbone.layer3.0.conv1.bn.running_mean``, ...,
    ``cls_head.new_fc.weight``) as an :class:`MVFNet` state_dict: ``backbone.`` is removed (mmaction's ResNet
    uses torchvision's names: ``bn1``, ``downsample.0``/ ``.1``; MVF's parameter names are the library
    module's) and the head's ``new_fc`` (or mmaction2's ``fc_cls``) becomes ``fc``. A path is read with
    ``read_state_dict`` (``weights_only``, the ``state_dict`` wrapper and a DDP ``module.`` prefix removed). A
    key outside ``backbone.``/``cls_head.`` is a ``ValueError`` naming it."""
    if isinstance(state_dict, (str, Path)):
        state_dict = read_state_dict(state_dict)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = re.sub(r"^module\.", "", key)
        if key.startswith("backbone."):
            out[key[len("backbone."):]] = value
        elif key in _HEAD_KEYS:
            out[_HEAD_KEYS[key]] = value
        else:
            raise ValueError(f"convert_official_checkpoint: unexpected key {key!r} (expected backbone.* or "
                             f"cls_head.new_fc.* / cls_head.fc_cls.*)")
    if "conv1.weight" not in out:
        raise ValueError("convert_official_checkpoint: no 'backbone.conv1.weight': not an MVFNet checkpoint")
    return out


def _build(depth_layers, num_classes: int, num_segments: int, alpha: float, dropout: float,
           **kwargs) -> MVFNet:
    layers = kwargs.pop("layers", depth_layers)
    return MVFNet(layers=layers, num_classes=num_classes, num_segments=num_segments, alpha=alpha,
                  dropout=dropout, **kwargs)


@register_model(pretrained_file="an official MVFNet-R50 checkpoint (github.com/whwu95/MVFNet model zoo) or "
                                "torchvision's resnet50 ImageNet weights (load_imagenet_resnet)")
def mvfnet_r50(num_classes: int = 400, num_segments: int = 8, alpha: float = 0.125, dropout: float = 0.5,
               **kwargs) -> MVFNet:
    """MVFNet-R50 (K400 8x8: 76.0% top-1 at 30 views in the official model zoo). ``kwargs``: ``layers``,
    ``mode``, ``mvf_stages``, ``init_std`` of :class:`MVFNet`."""
    return _build((3, 4, 6, 3), num_classes, num_segments, alpha, dropout, **kwargs)


@register_model(pretrained_file="an official MVFNet-R101 checkpoint (github.com/whwu95/MVFNet model zoo) or "
                                "torchvision's resnet101 ImageNet weights (load_imagenet_resnet)")
def mvfnet_r101(num_classes: int = 400, num_segments: int = 8, alpha: float = 0.125, dropout: float = 0.5,
                **kwargs) -> MVFNet:
    """MVFNet-R101 (K400 8x8: 77.4% top-1 at 30 views in the official model zoo); MVF in all 23 + 3 blocks of
    layer3 and layer4, as the official ``n_round = 1``."""
    return _build((3, 4, 23, 3), num_classes, num_segments, alpha, dropout, **kwargs)
