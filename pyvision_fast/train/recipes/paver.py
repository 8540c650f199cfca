"""``paver``: PAVER's self-supervised decoder training on cached Wild360 features and its saliency evaluation
(shared/papers.md section 2; ``HS-YN/PAVER:code/train.py``, ``configs/model/paver.json``,
``dataset/wild360.json``).

    pvf extract paver --data WILD360 --output WILD360/features --checkpoint vit_b16_augreg.safetensors
    pvf train paver --data WILD360 --output runs/paver
    pvf eval paver --data WILD360 --checkpoint runs/paver/checkpoint-best.safetensors

``--data`` is the Wild360 folder (:mod:`pyvision_fast.data.wild360`); the features come from ``pvf extract
paver`` (:mod:`pyvision_fast.train.extract`) in ``--set features=DIR`` (default ``DATA/features``); a listed
video without its feature file is an error saying to run the extraction. As PAVER's ``train.py``: the videos
are cut into clips of ``clip_length`` = 25 frames and each clip into windows of ``num_frame`` = 5 (a model
argument too); training takes one optimizer step per window (:class:`TrainWindows`, :func:`window_spans`: a
clip's last, shorter window moves back to end at the clip's end), with ``PAVER.loss`` (temporal, spatial and
cls terms, no labels); the engine shuffles all the windows each epoch (PAVER shuffles the clips and runs a
clip's windows in order: the same updates in another order). Evaluation decodes each test clip window by
window (:func:`clip_heatmap`, the same moved-back last window, keeping its new frames) and scores every
frame's heatmap against its GT map with :class:`pyvision_fast.metrics.saliency.SaliencyMetrics`: AUC-Borji,
AUC-Judd, CC, SIM, NSS and KLD, averaged over each video's frames then over videos, plus the loss, ``frames``
and ``undefined_frames``; ``pvf eval paver`` prints them as one JSON object. The main metric
(``checkpoint-best``) is **CC**: it is deterministic (both AUCs draw random numbers), uses the whole map
rather than thresholded fixations, and PAVER reports it beside the AUCs.

The model trained is ``paver_decoder`` (the decoder alone: the encoder's work is in the cached features, and a
checkpoint holds 8.3M parameters instead of 94M); ``create_model("paver", decoder_checkpoint=CKPT)`` puts
the trained decoder behind the encoder for inference on frames. ``--model paver`` trains the full model
instead (same updates; the frozen encoder is saved in every checkpoint). The loss runs through
DistributedDataParallel's forward (``training_module``), so ``torchrun`` synchronises the gradients.

Defaults are PAVER's: Adam (torch's, L2 weight decay 1e-3), lr 2e-7, 5 epochs, batch 1, no schedule. The
encoder is frozen (its parameters never require grad) and only the parameters that require grad — the
decoder's — go to the optimizer. Batches hold one window (training) or one clip (evaluation):
``batch_size=1``, as PAVER. The model is built with ``img_size`` from ``--img-size`` unless ``--model-arg
img_size=`` is given; it must be the size the features were extracted at (the feature files' token count is
checked against the model).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ...data.wild360 import CLIP_LENGTH, Wild360Features
from ...metrics.saliency import SaliencyMetrics
from ..recipe import MethodAsForward, Recipe, StepContext

# paver's arguments that only the encoder uses (pvf extract needs them; the decoder does not take them)
_ENCODER_ARGS = ("depth", "num_heads", "offsets", "encoder_checkpoint")

__all__ = ["PAVERRecipe", "RECIPE", "TrainWindows", "EvalClips", "window_spans", "clip_heatmap"]


def window_spans(start: int, stop: int, num_frame: int) -> list[tuple[int, int]]:
    """PAVER's training windows of the clip ``start:stop`` (``train.py``): consecutive windows of
    ``num_frame`` frames; a last, shorter window is moved back to end at ``stop`` (overlapping the previous
    one) when the clip holds ``num_frame`` frames, and dropped otherwise."""
    spans = []
    for s in range(start, stop, num_frame):
        if s + num_frame <= stop:
            spans.append((s, s + num_frame))
        elif stop - start >= num_frame:
            spans.append((stop - num_frame, stop))
    return spans


class TrainWindows(Dataset):
    """The training items: every window (:func:`window_spans`) of every clip of a :class:`Wild360Features`, as
    ``(features (num_frame, 1 + N, D) float32, empty (0,) tensor, meta)``; the engine steps once per window,
    as PAVER's trainer does."""

    def __init__(self, clips: Wild360Features, num_frame: int) -> None:
        self.clips = clips
        self.windows = [(index, k, s, e) for index, k, start, stop in clips.clips
                        for s, e in window_spans(start, stop, num_frame)]
        if not self.windows:
            raise ValueError(f"no training window of {num_frame} frames: every clip is shorter")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        index, k, start, stop = self.windows[i]
        features, _ = self.clips.load(index, start, stop, with_gt=False)
        return features, torch.zeros(0), {"video_index": index, "clip": k, "start": start}


class EvalClips(Dataset):
    """The test clips of a :class:`Wild360Features` with their GT: ``(features (T, 1 + N, D), gt (T, 120,
    240), meta)``."""

    def __init__(self, clips: Wild360Features) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        features, gt, meta = self.clips[i]
        return features, gt, {k: meta[k] for k in ("video_index", "clip", "start")}


def clip_heatmap(model: nn.Module, features: Tensor, num_frame: int) -> Tensor:
    """Heatmaps (B, T, H, W) of a clip as PAVER's evaluation makes them: windows of ``num_frame``; a last,
    shorter window is moved back to end at the clip's end and only its new frames are kept (a clip shorter
    than ``num_frame`` is decoded as it is)."""
    T = features.shape[1]
    rest = T % num_frame
    if rest == 0 or T < num_frame:
        return model(features)
    head = model(features[:, :T - rest])
    tail = model(features[:, T - num_frame:])[:, num_frame - rest:]
    return torch.cat([head, tail], dim=1)


class PAVERRecipe(Recipe):
    name = "paver"
    main_metric = "cc"
    main_mode = "max"
    defaults = dict(
        model="paver_decoder",    # the decoder alone (it trains on cached features); "paver": the full model
        features=None,            # folder of {vid}.safetensors from `pvf extract paver` (None: DATA/features)
        clip_length=CLIP_LENGTH,  # frames per clip (PAVER: 25)
        num_frame=5,              # frames per window (PAVER: 5); --model-arg num_frame= wins
        img_size=224,             # ERP height (width 2 x); --model-arg img_size= wins
        opt="adam",
        lr=2e-7,
        weight_decay=1e-3,
        epochs=5,
        batch_size=1,
        sched="none",
        warmup_epochs=0,
        metric_resample="lanczos",  # PIL filter resizing maps to 240x120 (see metrics.saliency)
        borji_splits=100,
        metric_seed=0,            # seeds AUC-Judd's jitter and AUC-Borji's sampling per (video, frame)
        metric_average="video",   # video (PAVER: per video, then over videos) | frame
    )

    @property
    def num_frame(self) -> int:
        return int(self.cfg.model_args.get("num_frame", self.cfg.num_frame))

    def feature_dir(self, data_dir: str) -> Path:
        return Path(self.cfg.features) if self.cfg.features else Path(data_dir) / "features"

    def build_datasets(self, data_dir: str):
        c = self.cfg
        if c.batch_size != 1:
            raise ValueError(f"paver takes one window (training) or clip (evaluation) per batch, as PAVER; "
                             f"got batch_size={c.batch_size}")
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(f"--data {str(data_dir)!r} does not exist (the Wild360 folder)")
        features = self.feature_dir(data_dir)
        if not features.is_dir():
            raise FileNotFoundError(f"feature folder {str(features)!r} does not exist: run `pvf extract "
                                    f"paver --data {data_dir} --output {features}` first (or --set features=DIR)")
        val = Wild360Features(data_dir, features, "test", clip_length=c.clip_length)
        self._tokens = (val.num_tokens, val.dim)
        if self.for_eval:  # pvf eval needs only the test features
            return None, EvalClips(val)
        train = Wild360Features(data_dir, features, "train", clip_length=c.clip_length)
        if (train.num_tokens, train.dim) != self._tokens:
            raise ValueError(f"{features}: train features have (N, D) = {(train.num_tokens, train.dim)}, test "
                             f"features {self._tokens}")
        return TrainWindows(train, self.num_frame), EvalClips(val)

    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        from ...models import create_model

        kwargs = {"img_size": self.cfg.img_size, "num_frame": self.cfg.num_frame, **self.cfg.model_args}
        self.cfg.model_args = kwargs  # recorded in the checkpoints, so pvf eval rebuilds the same model
        if self.cfg.model == "paver_decoder":  # one --model-arg list serves pvf extract and pvf train
            kwargs = {k: v for k, v in kwargs.items() if k not in _ENCODER_ARGS}
        model = create_model(self.cfg.model, **kwargs)
        tokens = getattr(self, "_tokens", None)
        want = tuple(model.default_input_size[1:]) if hasattr(model, "default_input_size") else None
        if tokens is not None and want is not None and tokens != (want[0] - 1, want[1]):
            raise ValueError(f"the features hold (N, D) = {tokens} per frame, model {self.cfg.model!r} with "
                             f"{kwargs} expects {(want[0] - 1, want[1])}: extract and train with the same "
                             "model arguments")
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        """One group: the parameters that require grad (the decoder's; the frozen encoder's never do), with
        PAVER's weight decay on all of them (torch Adam, as the official code)."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("paver: the model has no trainable parameter")
        return [{"params": params, "weight_decay": self.cfg.weight_decay}]

    def training_module(self, model: nn.Module) -> nn.Module:
        """The model's ``loss`` as the forward DistributedDataParallel wraps (its forward is the heatmap)."""
        return MethodAsForward(model, "loss")

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``model``: ``training_module``'s, DDP-wrapped when distributed; ``batch``: (features (1, num_frame,
        1 + N, D) float32, unused, meta): one window; returns ``PAVER.loss`` and its terms."""
        loss, parts = model(batch[0])
        return loss, parts

    def build_metrics(self, num_classes: Optional[int]):
        c = self.cfg
        return SaliencyMetrics(resample=c.metric_resample, n_splits=c.borji_splits, seed=c.metric_seed,
                               average=c.metric_average)

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Heatmaps of one test clip scored frame by frame against its GT maps; returns the clip's loss."""
        features, gt, meta = batch
        if gt.dim() != 4 or gt.shape[:2] != features.shape[:2]:
            raise ValueError(f"paver evaluation needs GT maps (B, T, H, W) for the clip's T = "
                             f"{features.shape[1]} frames, got {tuple(gt.shape)}")
        with torch.no_grad():
            heatmap = clip_heatmap(model, features, self.num_frame)
            loss, _ = model.loss(features)
        for b in range(features.shape[0]):
            frames = meta["start"][b] + torch.arange(features.shape[1])
            metrics.update(heatmap[b].float(), gt[b], video=meta["video_index"][b], frames=frames)
        return loss.float()


RECIPE = PAVERRecipe
