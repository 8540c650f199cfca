"""NDDR-CNN (Gao et al., CVPR 2019): one VGG-16 DeepLab-LargeFOV network per task, fused after each of the
five VGG stages by an :class:`~pyvision_fast.nn.NDDR` layer; NYUv2 semantic segmentation (40 classes) and
surface normals in the paper (``nddr_vgg16``).

Per task branch (``branches.<task>``), in torchvision's VGG-16 layout so that its ImageNet keys load:

* ``features``: torchvision ``vgg16().features`` indices (13 3x3 convs + ReLU); the pools are
  DeepLab-LargeFOV's: 3x3 max pools of stride 2, padding 1 after stages 1-3 (index 4, 9, 16), stride 1 after
  stage 4 (index 23), conv5 (index 24, 26, 28) dilated by 2, and after it (index 30) a 3x3 stride-1 max pool
  then a 3x3 stride-1 average pool (padding not counted, as TF's SAME in the official code). Output stride 8:
  321 -> 41.
* ``fc6``: 3x3 conv, dilation 12, 1024 channels, ReLU, dropout 0.5; ``fc7``: 1x1 conv 1024, ReLU, dropout 0.5;
  ``fc8``: the task head (1x1 conv to ``num_classes`` for ``seg``, 3 for ``normal``, 1 for ``depth``).
* ``nddr[i]`` fuses the task features after stage i+1 (after pool1 .. pool5), as ``vgg_16_deeplab_nddr``.

The official code's slim scope put BatchNorm after every VGG convolution; the DeepLab and torchvision VGG-16
weights have none, and this model follows them (BatchNorm only inside the NDDR layers, as in the paper's
text). The torchvision classifier (fc6/fc7 as 4096-wide fully connected layers) does not fit LargeFOV's
1024-wide dilated fc6/fc7, so those start from the initialisation (Kaiming normal, fan-out; fc8 normal std
0.01, as DeepLab), like every new layer here.

``forward(x)`` with x (B, 3, H, W) float (RGB, normalised with the ImageNet mean and std of torchvision's
weights) returns ``{task: (B, C_task, H, W)}``: logits bilinearly upsampled to the input size
(``align_corners=False``); the ``normal`` output is L2-normalised per pixel in eval mode (raw in training,
where the loss normalises). ``export_module()`` returns the eval-mode network with a tuple output in ``tasks``
order.

Weights: :meth:`NDDRVGG16.adapt_state_dict` (used by ``load_weights``, ``create_model(checkpoint_path=)`` and
the training engine's ``pretrained``) accepts a torchvision VGG-16 state_dict (``features.*``,
``classifier.*``): the 13 conv layers go into every branch, the classifier is dropped, everything else keeps
the model's values.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.nddr import NDDR
from ._registry import register_model

__all__ = ["NDDRVGG16", "nddr_vgg16", "VGG16_CONV_INDICES", "STAGE_ENDS"]

# torchvision vgg16().features: conv layers (index) and the index of the pool closing each stage
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
STAGE_ENDS = (4, 9, 16, 23, 30)
_STAGE_WIDTHS = (64, 128, 256, 512, 512)
_STAGE_CONVS = (2, 2, 3, 3, 3)
TASK_CHANNELS = {"normal": 3, "depth": 1}


def _deeplab_vgg16_features(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for stage, (width, n) in enumerate(zip(widths, _STAGE_CONVS)):
        dilation = 2 if stage == 4 else 1
        for _ in range(n):
            layers += [nn.Conv2d(in_ch, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            in_ch = width
        if stage < 3:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        elif stage == 3:
            layers.append(nn.MaxPool2d(3, stride=1, padding=1))
        else:
            layers.append(nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)))
    return nn.Sequential(*layers)


class DeepLabLargeFOVBranch(nn.Module):
    """One task's VGG-16 DeepLab-LargeFOV (module docstring); run stage by stage by :class:`NDDRVGG16`."""

    def __init__(self, out_channels: int, widths: Sequence[int], fc_dim: int, dropout: float):
        super().__init__()
        self.features = _deeplab_vgg16_features(widths)
        self.fc6 = nn.Conv2d(widths[-1], fc_dim, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(fc_dim, fc_dim, 1)
        self.drop6, self.drop7 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(fc_dim, out_channels, 1)

    def stage(self, i: int, x: Tensor) -> Tensor:
        start = 0 if i == 0 else STAGE_ENDS[i - 1] + 1
        for layer in self.features[start:STAGE_ENDS[i] + 1]:
            x = layer(x)
        return x

    def head(self, x: Tensor) -> Tensor:
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        x = self.drop7(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)


class NDDRVGG16(nn.Module):
    """Multi-task VGG-16 DeepLab-LargeFOV with NDDR fusion after each stage (module docstring).

    ``tasks``: task names (``"seg"`` -> ``num_classes`` channels, ``"normal"`` -> 3, ``"depth"`` -> 1) or a
    mapping name -> output channels. ``nddr_init``: the NDDR initialisation ((0.9, 0.1), any (alpha, beta),
    ``"xavier"``). ``width`` scales every channel count (VGG stages and fc6/fc7; 1.0 is the paper's network,
    0.125 a test-sized one). ``img_size`` is the export example's H = W (``default_input_size``)."""

    def __init__(self, num_classes: int = 40,
                 tasks: Union[Sequence[str], Mapping[str, int]] = ("seg", "normal"),
                 nddr_init=(0.9, 0.1), width: float = 1.0, fc_dim: int = 1024, dropout: float = 0.5,
                 nddr_momentum: float = 0.05, img_size: int = 321):
        super().__init__()
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",") if t.strip()]
        if isinstance(tasks, Mapping):
            channels = {str(k): int(v) for k, v in tasks.items()}
        else:
            unknown = [t for t in tasks if t != "seg" and t not in TASK_CHANNELS]
            if unknown:
                known = ", ".join(TASK_CHANNELS)
                raise ValueError(f"nddr_vgg16: unknown task(s) {unknown}; known: seg, {known} "
                                 f"(or pass a mapping task -> output channels)")
            channels = {t: num_classes if t == "seg" else TASK_CHANNELS[t] for t in tasks}
        if len(channels) < 2:
            raise ValueError(f"nddr_vgg16 needs at least two tasks, got {list(channels)}")
        if not width > 0:
            raise ValueError(f"nddr_vgg16: width must be > 0, got {width}")
        self.tasks = tuple(channels)
        self.task_channels = channels
        self.num_classes = num_classes
        widths = [max(1, round(w * width)) for w in _STAGE_WIDTHS]
        fc = max(1, round(fc_dim * width))
        self.branches = nn.ModuleDict({t: DeepLabLargeFOVBranch(c, widths, fc, dropout)
                                       for t, c in channels.items()})
        self.nddr = nn.ModuleList(NDDR(len(self.tasks), w, init=nddr_init, momentum=nddr_momentum)
                                  for w in widths)
        self.default_input_size = (3, img_size, img_size)
        self.head_keys = tuple(f"branches.{t}.fc8." for t in self.tasks)
        self._init_weights()

    def _init_weights(self) -> None:
        for branch in self.branches.values():
            for m in branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            nn.init.normal_(branch.fc8.weight, std=0.01)
            nn.init.zeros_(branch.fc8.bias)

    def nddr_parameters(self) -> list[nn.Parameter]:
        return list(self.nddr.parameters())

    def forward_logits(self, x: Tensor) -> dict[str, Tensor]:
        """{task: raw head output at 1/8 resolution (B, C_task, ceil(H/8), ceil(W/8))}."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"nddr_vgg16 expects (B, 3, H, W) images, got {tuple(x.shape)}")
        feats = [x] * len(self.tasks)
        for i, fuse in enumerate(self.nddr):
            feats = [self.branches[t].stage(i, f) for t, f in zip(self.tasks, feats)]
            feats = fuse(feats)
        return {t: self.branches[t].head(f) for t, f in zip(self.tasks, feats)}

    def forward(self, x: Tensor, upsample: bool = True) -> dict[str, Tensor]:
        """{task: (B, C_task, H, W)} (module docstring); ``upsample=False`` leaves the outputs at 1/8
        resolution (what the official training loss compares with nearest-downsampled labels)."""
        size = x.shape[-2:]
        out = {}
        for t, y in self.forward_logits(x).items():
            if upsample:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            if t == "normal" and not self.training:
                y = F.normalize(y, dim=1)
            out[t] = y
        return out

    def export_module(self) -> nn.Module:
        return _TupleOutput(self)

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A torchvision VGG-16 state_dict (``features.{i}.weight``/``bias`` for the 13 convs,
        ``classifier.*``) becomes this model's: the convs in every branch, the classifier dropped, all other
        keys (fc6, fc7, fc8, NDDR) from the model as it is. Any other state_dict passes unchanged."""
        if not any(k.startswith("features.") for k in state) or any(k.startswith("branches.") for k in state):
            return dict(state)
        expected = {f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")}
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(f"not a torchvision VGG-16 state_dict: missing {missing[:6]}")
        extra = sorted(k for k in state if k not in expected and not k.startswith("classifier."))
        if extra:
            raise ValueError(f"not a torchvision VGG-16 state_dict: unexpected {extra[:6]} (VGG-16-BN is not "
                             "supported: DeepLab-LargeFOV has no BatchNorm)")
        out = {k: v.detach().clone() for k, v in self.state_dict().items()}
        for t in self.tasks:
            for k in expected:
                out[f"branches.{t}.{k}"] = state[k]
        return out


class _TupleOutput(nn.Module):
    """Eval-mode :class:`NDDRVGG16` whose output is the tuple of task outputs in ``tasks`` order."""

    def __init__(self, model: NDDRVGG16):
        super().__init__()
        self.model = model
        self.default_input_size = model.default_input_size

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        return tuple(out[t] for t in self.model.tasks)


@register_model
def nddr_vgg16(num_classes: int = 40, tasks=("seg", "normal"), nddr_init=(0.9, 0.1), width: float = 1.0,
               fc_dim: int = 1024, dropout: float = 0.5, img_size: int = 321, **kwargs) -> NDDRVGG16:
    """NDDR-CNN with VGG-16 DeepLab-LargeFOV branches for NYUv2 segmentation (40 classes) + surface
    normals."""
    return NDDRVGG16(num_classes=num_classes, tasks=tasks, nddr_init=nddr_init, width=width, fc_dim=fc_dim,
                     dropout=dropout, img_size=img_size, **kwargs)
