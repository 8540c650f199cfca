"""``talking_face_edit``: trains the expression editor of emotional talking-face editing (paper 4, Sun et al.,
TAFFC 2023; docs/talking_face.md) on MEAD coefficient sequences, and evaluates lip-sync, emotion and intensity
control.

    pvf train talking_face_edit --data MEAD --output runs/edit --set bfm=BFM_model_front.mat
    pvf eval talking_face_edit --data MEAD --checkpoint runs/edit/checkpoint-best.safetensors \\
        --set bfm=BFM_model_front.mat fer_checkpoint=runs/fer/checkpoint-best.safetensors figure=edit.png

``--data`` is a MEAD folder in :mod:`pyvision_fast.data.mead`'s layout (videos, per-clip (T, 257)
coefficients, landmarks). Pairs *(ours: MEAD records the same sentences in every emotion and level)*: the
neutral clip of an actor/view/sentence with each emotional clip of the same actor/view/sentence at level k;
the editing target is that clip's expression coefficients resampled in time to the neutral clip's length, at
intensity k / 3. Items are windows of ``seq_len`` frames (:class:`pyvision_fast.data.mead.MEADEditPairs`).
Validation actors: ``val_actors`` (default: the last actor in sorted order); the others train.

Loss *(ours; the paper gives no formula)*::

    L = L1(edited_exp, target_exp) + mouth_weight * L_mouth(mesh(edited), mesh(neutral))
        [+ latent_weight * L1(edit_latent(neutral_ws), target_ws)]

with ``edited_exp = editor(neutral_exp, emotion, k / 3)`` and ``L_mouth`` the mouth-shape preservation loss
(:func:`pyvision_fast.losses.talking_face.mouth_shape_loss`) on the BFM's mouth vertices (``BFM.mouth_idx``)
of the meshes of the neutral coefficients with the expression replaced (identity kept): ``mouth_weight`` (λ)
trades lip-sync for expressiveness. Only the mouth vertices' rows of the basis are evaluated
(:func:`mouth_meshes`, equal to ``BFM.shape(c)[:, mouth_idx]``). The texture term: when the MEAD folder holds
per-frame texture latents (``<actor>/latents/...``, the StyleGAN W+ latents of the frames' unwrapped face
textures that ``pvf extract talking_face`` writes), the editor's latent branch learns the same
neutral -> emotional mapping in W+ (``neutral_ws`` the neutral window's latents (B, T, L, D), ``target_ws``
the emotional clip's, resampled in time like the coefficients). ``texture_latents``: ``"auto"`` (default)
trains it when every clip of the view has its latent file, ``True`` requires them, ``False`` ignores them;
the editor is then built with ``latent_dim`` = the files' D and ``latent_layers`` = their L (each W+ row
edited in its own direction), else with ``latent_dim=0`` (no latent editor).
``bfm``: the ``BFM_model_front.mat`` path, or ``"synthetic"`` (the synthetic test face); ``bfm_args``:
``create_model("bfm", ...)`` keywords (``image_size``: the size the coefficients were fitted at).

Evaluation (the main metric is the loss, lower is better): ``l1``, ``mouth`` (and ``latent_l1``: the loss
terms), ``lmd``
(:func:`pyvision_fast.metrics.talking_face.mouth_lmd`: mouth landmarks of the edited vs the neutral
coefficients, BFM projection, pixels at the BFM's image size) on ``eval_frames`` evenly spaced frames of each
window. With a facial-expression classifier (``fer_checkpoint``: a ``pvf train fer_finetune`` checkpoint,
whose model comes from its metadata, or weights of ``fer_model`` with ``len(fer_classes)`` classes): the
rendered edited frames (BFM albedo, black background *(ours)*) are classified: ``emotion_accuracy`` at the
pair's intensity, and for pairs at level 3 the target emotion's mean probability at ``intensity_steps``
intensities 0..1 gives ``monotonic_fraction`` and ``spearman_rho``
(:func:`pyvision_fast.metrics.talking_face.intensity_monotonicity`). ``pvf eval`` also writes ``figure`` (a
PNG: rows = intensities 0..1, columns = ``figure_frames`` frames of the first validation pair, the edited face
rendered over its neutral video's frames where the video exists).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ...data.mead import EXP_SLICE, MEADEditPairs, scan_mead, split_actors
from ...losses.talking_face import mouth_shape_loss
from ...metrics.talking_face import (TalkingFaceEditMetrics, emotion_probabilities, fer_class_indices,
                                     intensity_monotonicity, mouth_lmd, save_intensity_grid)
from ..recipe import Recipe, StepContext

__all__ = ["TalkingFaceEditRecipe", "RECIPE", "mouth_meshes", "replace_exp", "AFFECTNET8_CLASSES"]

AFFECTNET8_CLASSES = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt")


def replace_exp(coeffs: Tensor, exp: Tensor) -> Tensor:
    """``coeffs`` (..., 257) with its expression slice replaced by ``exp`` (..., 64) (differentiable in
    exp)."""
    return torch.cat([coeffs[..., :EXP_SLICE.start], exp, coeffs[..., EXP_SLICE.stop:]], dim=-1)


def mouth_meshes(face: nn.Module, coeffs: Tensor) -> Tensor:
    """(B, 257) -> (B, M, 3): ``face.shape(coeffs)[:, face.mouth_idx]`` computed from the basis rows of the
    mouth vertices only (the BFM's 35,709 vertices would cost 200x more)."""
    idx = face.mouth_idx
    dt = coeffs.dtype
    return (face.mean_shape[idx].to(dt)
            + torch.einsum("mck,bk->bmc", face.id_base[idx].to(dt), coeffs[:, :EXP_SLICE.start])
            + torch.einsum("mck,bk->bmc", face.exp_base[idx].to(dt), coeffs[:, EXP_SLICE]))


def _frames(length: int, count: int) -> Tensor:
    """``count`` evenly spaced frame indices of a window of ``length`` (all of them when count >= length)."""
    if count >= length:
        return torch.arange(length)
    return torch.linspace(0, length - 1, count).round().long()


class TalkingFaceEditRecipe(Recipe):
    name = "talking_face_edit"
    main_metric = "loss"
    main_mode = "min"
    defaults = dict(
        model="expression_editor",
        bfm=None,                   # BFM_model_front.mat, or "synthetic"
        bfm_args={},                # create_model("bfm", ...) keywords: image_size, focal, ...
        view="front",
        val_actors=None,            # None: the last actor in sorted order
        seq_len=32,                 # frames per window
        mouth_weight=1.0,           # λ of the mouth-shape preservation loss
        texture_latents="auto",     # train the latent editor on <actor>/latents/: "auto", True, False
        latent_weight=1.0,          # weight of the latent L1 term
        opt="adam",
        lr=1e-4,
        weight_decay=0.0,
        epochs=30,
        batch_size=16,
        sched="cosine",
        min_lr=1e-6,
        warmup_epochs=1,
        eval_frames=4,              # frames per window rendered for LMD / the classifier
        intensity_steps=5,          # intensities 0..1 of the monotonicity series
        fer_checkpoint=None,        # facial-expression classifier weights; None: no emotion metrics
        fer_model="vit_base_patch16_224",
        fer_model_args={},
        fer_classes=AFFECTNET8_CLASSES,
        fer_img_size=224,
        fer_mean=(0.485, 0.456, 0.406),
        fer_std=(0.229, 0.224, 0.225),
        figure="talking_face_edit.png",   # written by pvf eval (None: no figure)
        figure_frames=6,
    )

    # --- data -----------------------------------------------------------------------------------------------
    def build_datasets(self, data_dir: str):
        c = self.cfg
        root = Path(data_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"--data {str(root)!r} does not exist (the MEAD folder)")
        if c.bfm is None:
            raise ValueError("talking_face_edit needs the face model: --set bfm=PATH of BFM_model_front.mat "
                             "(or bfm=synthetic for the synthetic test face)")
        if c.bfm != "synthetic" and not Path(c.bfm).is_file():
            raise FileNotFoundError(f"talking_face_edit: bfm file {str(c.bfm)!r} does not exist")
        if c.fer_checkpoint is not None and not Path(c.fer_checkpoint).is_file():
            raise FileNotFoundError(f"talking_face_edit: fer_checkpoint {str(c.fer_checkpoint)!r} does not "
                                    "exist")
        for key in ("seq_len", "eval_frames", "intensity_steps", "figure_frames"):
            low = 2 if key == "intensity_steps" else 1
            if isinstance(c[key], bool) or not isinstance(c[key], int) or c[key] < low:
                raise ValueError(f"talking_face_edit: {key} must be a positive int (>= 2 for "
                                 "intensity_steps), "
                                 f"got {c[key]!r}")
        if c.texture_latents not in ("auto", True, False):
            raise ValueError(f"talking_face_edit: texture_latents must be 'auto', True or False, got "
                             f"{c.texture_latents!r}")
        clips = scan_mead(root, views=(c.view,))
        latents = bool(c.texture_latents)
        if c.texture_latents == "auto":
            latents = all(clip.latents.is_file() for clip in clips)
        self.latents = latents
        actors = sorted({clip.actor for clip in clips})
        train_actors, val_actors = split_actors(actors, c.val_actors)
        common = dict(views=(c.view,), seq_len=c.seq_len, latents=latents)
        val = MEADEditPairs(root, actors=val_actors, **common)
        self.latent_shape = val.latent_shape
        if self.for_eval:
            return None, val
        if not train_actors:
            raise ValueError(f"talking_face_edit: every actor of {root} ({', '.join(actors)}) is a "
                             f"validation actor; none is left to train on")
        return MEADEditPairs(root, actors=train_actors, **common), val

    # --- model ----------------------------------------------------------------------------------------------
    def build_model(self, num_classes: Optional[int]) -> nn.Module:
        """``cfg.model`` with ``latent_dim`` = the texture latents' width when they are trained, else 0, unless
        ``--model-arg latent_dim=`` says otherwise (recorded in the checkpoint's model arguments)."""
        from ...models import create_model

        shape = getattr(self, "latent_shape", None)
        kwargs = {"latent_dim": shape[1] if shape else 0, **({"latent_layers": shape[0]} if shape else {}),
                  **self.cfg.model_args}
        if shape and kwargs["latent_dim"] != shape[1]:
            raise ValueError(f"talking_face_edit: --model-arg latent_dim={kwargs['latent_dim']} but the texture "
                             f"latents are {shape[1]} wide (set texture_latents=False to ignore them)")
        self.cfg.model_args = kwargs
        return create_model(self.cfg.model, **kwargs)

    def face(self, device: torch.device) -> nn.Module:
        """The BFM face model (built once, no parameters)."""
        if getattr(self, "_face", None) is None:
            from ...models import create_model

            c = self.cfg
            args = dict(c.bfm_args)
            args.update(basis="synthetic") if c.bfm == "synthetic" else args.update(basis_path=c.bfm)
            self._face = create_model("bfm", **args).eval()
        return self._face.to(device)

    def classifier(self, device: torch.device) -> Optional[nn.Module]:
        """The facial-expression classifier of ``fer_checkpoint`` (None without one): a ``pvf train``
        checkpoint rebuilds its own model and arguments; other weights load into ``fer_model``."""
        c = self.cfg
        if c.fer_checkpoint is None:
            return None
        if getattr(self, "_fer", None) is None:
            from ...models import create_model, load_weights
            from ..checkpoint import read_model_identity

            identity = read_model_identity(c.fer_checkpoint)
            name = identity.get("model", c.fer_model)
            args = {**identity.get("model_args", {}), **c.fer_model_args}
            classes = identity.get("num_classes") or len(c.fer_classes)
            if classes != len(c.fer_classes):
                raise ValueError(f"talking_face_edit: {c.fer_checkpoint} has {classes} classes but "
                                 f"fer_classes names {len(c.fer_classes)}: set fer_classes to the "
                                 "classifier's class names")
            args["num_classes"] = classes
            model = create_model(name, **args)
            load_weights(model, c.fer_checkpoint)
            self._fer = model.eval()
            self._fer_index = fer_class_indices(c.fer_classes)
        return self._fer.to(device)

    # --- steps ----------------------------------------------------------------------------------------------
    def _latent_l1(self, model: nn.Module, batch) -> Optional[Tensor]:
        """Per-sample L1 (B,) of the edited texture latents against the target ones (None without latents)."""
        if len(batch) < 7:
            return None
        _, _, emotion, intensity, _, src, tgt = batch[:7]
        return (model.edit_latent(src, emotion, intensity) - tgt).abs().mean((1, 2, 3))

    def _terms(self, model: nn.Module, batch, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(edited exp (B, L, 64), per-sample L1 (B,), per-sample mouth loss (B,), edited coeffs (B, L,
        257))."""
        neutral, target, emotion, intensity = batch[:4]
        edited = model(neutral[..., EXP_SLICE], emotion, intensity)
        l1 = (edited - target).abs().mean((1, 2))
        coeffs = replace_exp(neutral, edited)
        B, L = neutral.shape[:2]
        face = self.face(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(self.cfg.mouth_weight)):
            # computed (and logged) at λ = 0 too, without its graph
            mouth = mouth_shape_loss(mouth_meshes(face, coeffs.reshape(B * L, -1)),
                                     mouth_meshes(face, neutral.reshape(B * L, -1)),
                                     reduction="none").view(B, L).mean(1)
        return edited, l1, mouth, coeffs

    def train_loss(self, model: nn.Module, batch, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """``batch``: (neutral (B, L, 257), target exp (B, L, 64), emotion (B,), intensity (B,), meta[, neutral
        latents (B, L, num_ws, D), target latents]); returns L1 + mouth_weight * mouth loss [+ latent_weight *
        latent L1], logging the terms."""
        _, l1, mouth, _ = self._terms(model, batch, ctx.device)
        loss = l1.mean() + self.cfg.mouth_weight * mouth.mean()
        logged = {"l1": float(l1.detach().mean()), "mouth": float(mouth.detach().mean())}
        latent = self._latent_l1(model, batch)
        if latent is not None:
            loss = loss + self.cfg.latent_weight * latent.mean()
            logged["latent_l1"] = float(latent.detach().mean())
        return loss, logged

    def build_metrics(self, num_classes: Optional[int]):
        return TalkingFaceEditMetrics(keys=("l1", "mouth", "latent_l1", "lmd", "emotion_accuracy",
                                            "monotonic_fraction", "spearman_rho"))

    def _probabilities(self, fer: nn.Module, face: nn.Module, coeffs: Tensor) -> Tensor:
        """(n, 257) coefficients -> (n, K) classifier probabilities of their renders."""
        c = self.cfg
        out = face.render(coeffs)
        return emotion_probabilities(fer, out["image"] * out["mask"], size=c.fer_img_size, mean=c.fer_mean,
                                     std=c.fer_std)

    def eval_update(self, model: nn.Module, batch, metrics, ctx: StepContext) -> Tensor:
        """Loss terms, LMD and (with a classifier) emotion accuracy and intensity monotonicity of one batch
        (module docstring); returns the batch's mean loss."""
        c = self.cfg
        neutral, target, emotion, intensity, meta = batch[:5]
        with torch.no_grad():
            edited, l1, mouth, coeffs = self._terms(model, batch, ctx.device)
            latent = self._latent_l1(model, batch)
            if latent is not None:
                metrics.update(latent_l1=latent)
            face = self.face(ctx.device)
            idx = _frames(neutral.shape[1], c.eval_frames).to(neutral.device)
            B, n = neutral.shape[0], len(idx)
            sel_edit = coeffs[:, idx].reshape(B * n, -1)
            sel_orig = neutral[:, idx].reshape(B * n, -1)
            lmd = mouth_lmd(face.geometry(sel_edit)["landmarks"], face.geometry(sel_orig)["landmarks"],
                            reduction="none").view(B, n).mean(1)
            metrics.update(l1=l1, mouth=mouth, lmd=lmd)
            fer = self.classifier(ctx.device)
            if fer is not None:
                cls = torch.tensor(self._fer_index, device=neutral.device)[emotion]       # (B,), -1: no class
                probs = self._probabilities(fer, face, sel_edit).view(B, n, -1)
                known = cls >= 0
                if known.any():
                    hit = (probs.argmax(-1) == cls[:, None]).double().mean(1)
                    metrics.update(emotion_accuracy=hit[known])
                full = known & (torch.as_tensor(meta["level"], device=neutral.device) == 3)
                if full.any():
                    steps = torch.linspace(0, 1, c.intensity_steps, dtype=neutral.dtype,
                                           device=neutral.device)
                    src = neutral[full][:, idx]                                  # (S, n, 257)
                    S = src.shape[0]
                    series = []
                    for a in steps:
                        exp = model(src[..., EXP_SLICE], emotion[full], a.expand(S))
                        p = self._probabilities(fer, face, replace_exp(src, exp).reshape(S * n, -1))
                        series.append(p.view(S, n, -1).gather(2, cls[full][:, None, None].expand(S, n, 1))
                                      .mean((1, 2)))
                    series = torch.stack(series, 1)                              # (S, steps)
                    for row in series:
                        m = intensity_monotonicity(row, steps.tolist())
                        metrics.update(monotonic_fraction=m["monotonic_fraction"],
                                       spearman_rho=m["spearman_rho"])
        loss = l1 + c.mouth_weight * mouth
        return (loss if latent is None else loss + c.latent_weight * latent).mean()

    def evaluate_extra(self, model: nn.Module, loader, ctx: StepContext) -> dict[str, Any]:
        """Under ``pvf eval`` with ``figure`` set: writes the intensity x frame grid of the first validation
        pair's first window (:meth:`intensity_figure`) and returns its path."""
        if not (self.for_eval and self.cfg.figure) or ctx.rank != 0:
            return {}
        return {"figure": str(self.intensity_figure(model, loader.dataset, self.cfg.figure, ctx.device))}

    def intensity_figure(self, model: nn.Module, dataset: MEADEditPairs, path, device: torch.device) -> Path:
        """PNG grid: rows = ``intensity_steps`` intensities 0..1 toward the first item's emotion, columns =
        ``figure_frames`` frames of its window, the edited face rendered over the neutral video's frames (a
        grey background without the video)."""
        import torch.nn.functional as F

        from ...data.video import read_video

        c = self.cfg
        neutral, _, emotion, _, meta = dataset[0][:5]
        pair = dataset.pairs[dataset.windows[0][0]][0]
        idx = _frames(neutral.shape[0], c.figure_frames)
        src = neutral[idx].to(device)
        face = self.face(device)
        H, W = face.image_size
        background = torch.full((len(idx), 3, H, W), 0.5, device=device)
        if pair.video.is_file():
            frames = read_video(pair.video, indices=(idx + meta["start"]).tolist())
            background = F.interpolate(frames.permute(0, 3, 1, 2).float().div(255).to(device), size=(H, W),
                                       mode="bilinear", align_corners=False, antialias=True)
        rows = []
        model.eval()
        with torch.no_grad():
            for a in torch.linspace(0, 1, c.intensity_steps):
                exp = model(src[:, EXP_SLICE], emotion.expand(len(idx)).to(device), float(a))
                out = face.render(replace_exp(src, exp))
                rows.append(out["image"] * out["mask"] + background * (1 - out["mask"]))
        title = f"{meta['actor']} {meta['clip']}: neutral -> {meta['emotion']}"
        return save_intensity_grid(torch.stack(rows).cpu(), path,
                                   intensities=torch.linspace(0, 1, c.intensity_steps).tolist(), title=title)


RECIPE = TalkingFaceEditRecipe
