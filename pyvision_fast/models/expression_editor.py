"""Continuous emotion editing of 3DMM expression coefficients and StyleGAN W latents (paper 4 of
``shared/papers.md``, Sun et al., TAFFC 2023; no public code: the design below is ours where marked).

The paper edits a talking face's motion (3DMM expression coefficients) and appearance (a StyleGAN-modelled
UV texture) with networks controlled by a target emotion and a continuous intensity, then smooths the edits
over time by averaging in coefficient / latent space. Here:

* :class:`ExpressionEditor` (registry ``expression_editor``) holds two residual editors *(ours)*::

      edited_exp = exp + intensity * delta_exp(exp, emotion)        exp (B, 64) or (B, T, 64)
      edited_w   = w   + intensity * delta_w(w, emotion[, layer])   w (B, 512), (B, L, 512), (B, T, L, 512)

  ``delta`` is an MLP over ``[x, embedding(emotion)]`` (an ``nn.Embedding`` of the 8 MEAD emotions, or a
  probability vector over them mixing their embeddings: a soft, blended target emotion). Intensity 0 returns
  the input exactly (``x + 0 * delta`` is ``x``), the edit is continuous in the intensity, and for one frame
  it moves along a straight line whose length grows with the intensity, so a stronger control never edits
  less. The last layer of each MLP starts at zero: an untrained editor is the identity.
  ``intensity_input=True`` also feeds the intensity to the MLPs (a curved path; the identity at 0 still holds
  exactly). ``latent_layers=L`` (the generator's num_ws) also conditions ``delta_w`` on a learned embedding
  of the W+ row (synthesis layer) it edits, so each layer can move in its own direction (inverted textures
  live in W+, where one direction for all rows would have to be guessed from the row's content); W+ inputs
  must then have L rows. With ``latent_layers=0`` every row is edited alike.
* :func:`temporal_smooth` averages a sequence over a centred window (coefficients or latents).
* :data:`MEAD_EMOTIONS` fixes the emotion order (index = label) of the editor, the MEAD reader and the
  metrics.

Dtypes: float32 or float64 inputs (the parameters' dtype); emotion indices int64 (any integer dtype is
accepted), emotion weights floating. Shapes and value ranges are checked eagerly with a ValueError/TypeError
naming the argument; under ``torch.export`` / ONNX export only the shape checks run (no data is read).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["MEAD_EMOTIONS", "ExpressionEditor", "PackedExpressionEditor", "LatentEditorExport",
           "expression_editor", "emotion_index", "temporal_smooth"]

MEAD_EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")

EmotionLike = Union[str, int, Tensor, Sequence]
IntensityLike = Union[float, int, Tensor]


def emotion_index(emotion: Union[str, int], emotions: Sequence[str] = MEAD_EMOTIONS) -> int:
    """The label of ``emotion`` (a name, case-insensitive, or an index) in ``emotions``; ValueError
    otherwise."""
    if isinstance(emotion, str):
        names = [e.lower() for e in emotions]
        if emotion.lower() not in names:
            raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(emotions)}")
        return names.index(emotion.lower())
    if isinstance(emotion, bool) or not isinstance(emotion, int):
        raise TypeError(f"emotion must be a name or an int index, got {type(emotion).__name__}")
    if not 0 <= emotion < len(emotions):
        raise ValueError(f"emotion index {emotion} is outside [0, {len(emotions)})")
    return emotion


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


class _DeltaMLP(nn.Module):
    """``[x, e (, a)]`` -> Linear -> SiLU -> ... -> Linear (zero-initialised) -> delta of x's size."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim + cond_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.out(self.net(torch.cat([x, cond], dim=-1)))


class ExpressionEditor(nn.Module):
    """Emotion editor of expression coefficients and (optionally) StyleGAN W latents (module docstring).

    Args:
        exp_dim: expression coefficients per frame (64, Deep3DFaceRecon's BFM).
        latent_dim: W-space width of the texture generator (512); 0 builds no latent editor.
        num_emotions: target emotions (8, :data:`MEAD_EMOTIONS`); ``emotions`` names them.
        embed_dim: emotion embedding width.
        hidden, depth: width and number of linear layers of the expression MLP (depth >= 1).
        latent_hidden, latent_depth: the same for the latent MLP.
        intensity_input: also condition the MLPs on the intensity (curved edit paths).
        latent_layers: W+ rows (the texture generator's num_ws) the latent MLP tells apart by a learned
            ``layer_embed_dim``-wide embedding; 0: rows edited alike.
    """

    def __init__(self, exp_dim: int = 64, latent_dim: int = 512, num_emotions: int = 8, embed_dim: int = 32,
                 hidden: int = 256, depth: int = 3, latent_hidden: int = 512, latent_depth: int = 3,
                 intensity_input: bool = False, emotions: Optional[Sequence[str]] = None,
                 latent_layers: int = 0, layer_embed_dim: int = 16) -> None:
        super().__init__()
        for name, value, low in (("exp_dim", exp_dim, 1), ("latent_dim", latent_dim, 0),
                                 ("num_emotions", num_emotions, 1), ("embed_dim", embed_dim, 1),
                                 ("hidden", hidden, 1), ("depth", depth, 1),
                                 ("latent_hidden", latent_hidden, 1),
                                 ("latent_depth", latent_depth, 1), ("latent_layers", latent_layers, 0),
                                 ("layer_embed_dim", layer_embed_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ExpressionEditor: argument '{name}' must be an int >= {low}, got "
                                 f"{value!r}")
        if emotions is None:
            emotions = MEAD_EMOTIONS if num_emotions == len(MEAD_EMOTIONS) else \
                tuple(str(i) for i in range(num_emotions))
        if len(emotions) != num_emotions:
            raise ValueError(f"ExpressionEditor: {len(emotions)} emotion names for "
                             f"num_emotions={num_emotions}")
        self.exp_dim, self.latent_dim, self.num_emotions = exp_dim, latent_dim, num_emotions
        self.emotions = tuple(emotions)
        self.intensity_input = bool(intensity_input)
        cond = embed_dim + int(self.intensity_input)
        self.emotion_embed = nn.Embedding(num_emotions, embed_dim)
        nn.init.normal_(self.emotion_embed.weight, std=1.0)
        self.exp_net = _DeltaMLP(exp_dim, cond, hidden, depth)
        self.latent_layers = latent_layers if latent_dim else 0
        self.layer_embed = None
        if self.latent_layers:
            self.layer_embed = nn.Embedding(self.latent_layers, layer_embed_dim)
            nn.init.normal_(self.layer_embed.weight, std=1.0)
        layer_cond = layer_embed_dim if self.latent_layers else 0
        self.latent_net = (_DeltaMLP(latent_dim, cond + layer_cond, latent_hidden, latent_depth) if latent_dim
                           else None)

    # --- argument handling ---------------------------------------------------------------------------------
    def _emotion(self, emotion: EmotionLike, batch: int, device, dtype) -> Tensor:
        """(B,) int64 indices or (B, E) weights, from a name / int (the whole batch) or a tensor."""
        if isinstance(emotion, (str, int)) and not isinstance(emotion, bool):
            label = emotion_index(emotion, self.emotions)
            return torch.full((batch,), label, dtype=torch.int64, device=device)
        if isinstance(emotion, (list, tuple)):
            emotion = torch.tensor([emotion_index(e, self.emotions) for e in emotion], dtype=torch.int64,
                                   device=device)
        if not isinstance(emotion, Tensor):
            raise TypeError(f"ExpressionEditor: argument 'emotion' must be a name, an int or a tensor, got "
                            f"{type(emotion).__name__}")
        if emotion.is_floating_point():
            if emotion.dim() != 2 or emotion.shape[0] != batch or emotion.shape[1] != self.num_emotions:
                raise ValueError(f"ExpressionEditor: emotion weights must have shape ({batch}, "
                                 f"{self.num_emotions}), got {tuple(emotion.shape)}")
            return emotion.to(dtype)
        if emotion.dtype in (torch.bool, torch.complex64, torch.complex128):
            raise TypeError(f"ExpressionEditor: argument 'emotion' must hold integer indices or float "
                            f"weights, got {emotion.dtype}")
        if emotion.dim() == 0:
            emotion = emotion.expand(batch)
        if emotion.dim() != 1 or emotion.shape[0] != batch:
            raise ValueError(f"ExpressionEditor: emotion indices must have shape ({batch},), got "
                             f"{tuple(emotion.shape)}")
        if not _tracing() and emotion.numel() and (int(emotion.min()) < 0
                                                   or int(emotion.max()) >= self.num_emotions):
            raise ValueError(f"ExpressionEditor: emotion indices must lie in [0, {self.num_emotions}), got "
                             f"[{int(emotion.min())}, {int(emotion.max())}]")
        return emotion.long()

    def _intensity(self, intensity: IntensityLike, x: Tensor) -> Tensor:
        """Intensity broadcast to x's leading dimensions plus a trailing 1: (B, 1) or (B, T, 1)."""
        if isinstance(intensity, (float, int)) and not isinstance(intensity, bool):
            intensity = torch.tensor(float(intensity), dtype=x.dtype, device=x.device)
        if not isinstance(intensity, Tensor) or not intensity.is_floating_point():
            raise TypeError(f"ExpressionEditor: argument 'intensity' must be a float or a floating tensor, "
                            f"got {getattr(intensity, 'dtype', type(intensity).__name__)}")
        lead = tuple(x.shape[:-1])
        if intensity.dim() > len(lead) or tuple(intensity.shape) != lead[:intensity.dim()]:
            raise ValueError(f"ExpressionEditor: intensity of shape {tuple(intensity.shape)} does not fit "
                             f"the input's leading dimensions {lead} (give (), (B,) or {lead})")
        if not _tracing() and intensity.numel() and not bool(((intensity >= 0) & (intensity <= 1)).all()):
            raise ValueError(f"ExpressionEditor: intensity must lie in [0, 1], got values in "
                             f"[{float(intensity.min())}, {float(intensity.max())}]")
        a = intensity.to(x.dtype).reshape(*intensity.shape, *([1] * (len(lead) - intensity.dim())))
        return a.expand(lead).unsqueeze(-1)

    def _check(self, name: str, x, dim: int, ranks: tuple = (2, 3), layout: str = "") -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"ExpressionEditor: argument '{name}' must be a floating tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() not in ranks or x.shape[-1] != dim:
            layout = layout or f"(B, {dim}) or (B, T, {dim})"
            raise ValueError(f"ExpressionEditor: expected {name} of shape {layout}, got {tuple(x.shape)}")

    def _edit(self, net: _DeltaMLP, x: Tensor, emotion: EmotionLike, intensity: IntensityLike,
              layers: Optional[nn.Embedding] = None) -> Tensor:
        e = self._emotion(emotion, x.shape[0], x.device, x.dtype)
        a = self._intensity(intensity, x)
        table = self.emotion_embed.weight.to(x.dtype)
        emb = F.embedding(e, table) if e.dim() == 1 else e @ table          # (B, embed_dim)
        lead = tuple(x.shape[:-1])
        emb = emb.reshape(emb.shape[0], *([1] * (len(lead) - 1)), emb.shape[-1]).expand(*lead, emb.shape[-1])
        parts = [emb, a] if self.intensity_input else [emb]
        if layers is not None:                                               # rows are x's dimension -2
            rows = layers.weight.to(x.dtype)
            parts.append(rows.reshape(*([1] * (len(lead) - 1)), *rows.shape).expand(*lead, rows.shape[-1]))
        cond = torch.cat(parts, dim=-1) if len(parts) > 1 else emb
        return x + a * net(x, cond)

    # --- public API ----------------------------------------------------------------------------------------
    def forward(self, exp: Tensor, emotion: EmotionLike, intensity: IntensityLike) -> Tensor:
        """Edited expression coefficients.

        Args:
            exp: (B, exp_dim) or (B, T, exp_dim) floating expression coefficients.
            emotion: target emotion: a name or index for the whole batch, (B,) int64 indices, or (B,
                num_emotions) floating weights (a mix of the emotions' embeddings).
            intensity: in [0, 1]: a float, a () / (B,) tensor, or (B, T) for per-frame intensities.

        Returns:
            Tensor of exp's shape and dtype; equal to ``exp`` where the intensity is 0.
        """
        self._check("exp", exp, self.exp_dim)
        return self._edit(self.exp_net, exp, emotion, intensity)

    def edit_latent(self, w: Tensor, emotion: EmotionLike, intensity: IntensityLike) -> Tensor:
        """Edited StyleGAN latents: ``w`` (B, latent_dim) in W, (B, L, latent_dim) in W+ (one latent per
        synthesis layer) or (B, T, L, latent_dim) (frames of W+ latents); emotion and intensity as in
        :meth:`forward` (intensity (), (B,), or per frame (B, T) for 4-d w); w's shape and dtype. With
        ``latent_layers`` set, W+ inputs must have that many rows L, each edited with its layer's
        embedding; otherwise all rows are edited alike."""
        if self.latent_net is None:
            raise ValueError("ExpressionEditor: built with latent_dim=0, it has no latent editor")
        D, L = self.latent_dim, self.latent_layers
        if L:
            self._check("w", w, D, (3, 4), f"(B, {L}, {D}) or (B, T, {L}, {D})")
            if w.shape[-2] != L:
                raise ValueError(f"ExpressionEditor: expected w with {L} W+ rows (latent_layers), got shape "
                                 f"{tuple(w.shape)}")
        else:
            self._check("w", w, D, (2, 3, 4), f"(B, {D}), (B, L, {D}) or (B, T, L, {D})")
        return self._edit(self.latent_net, w, emotion, intensity, self.layer_embed)

    def export_module(self, part: str = "exp") -> nn.Module:
        """The deployable form: ``part="exp"`` (what ``pvf export expression_editor`` exports,
        :class:`PackedExpressionEditor`) or ``"latent"`` (:class:`LatentEditorExport`: the texture-latent
        editor)."""
        if part == "exp":
            return PackedExpressionEditor(self)
        if part == "latent":
            return LatentEditorExport(self)
        raise ValueError(f"export_module: part must be 'exp' or 'latent', got {part!r}")


class PackedExpressionEditor(nn.Module):
    """The expression editor with one input, for ``pvf export``: ``x`` (B, exp_dim + num_emotions + 1) =
    ``[exp | emotion weights (one-hot for one emotion) | intensity]`` -> edited exp (B, exp_dim). Exports to
    standard ONNX operators (renderer-free)."""

    def __init__(self, editor: ExpressionEditor) -> None:
        super().__init__()
        self.editor = editor
        self.default_input_size = (editor.exp_dim + editor.num_emotions + 1,)

    def forward(self, x: Tensor) -> Tensor:
        d, k = self.editor.exp_dim, self.editor.num_emotions
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != d + k + 1:
            raise ValueError(f"PackedExpressionEditor: expected x of shape (B, {d + k + 1}) = [exp {d} | "
                             f"emotion weights {k} | intensity 1], got {tuple(getattr(x, 'shape', ()))}")
        return self.editor(x[:, :d], x[:, d:d + k], x[:, d + k])


class LatentEditorExport(nn.Module):
    """The texture-latent editor for ONNX: ``(w (B, L, D), emotion weights (B, num_emotions), intensity (B,))``
    -> edited w (B, L, D) (one-hot weights for one emotion). Standard ONNX operators."""

    def __init__(self, editor: ExpressionEditor) -> None:
        super().__init__()
        if editor.latent_net is None:
            raise ValueError("LatentEditorExport: the editor has no latent editor (latent_dim=0)")
        self.editor = editor

    def forward(self, w: Tensor, emotion: Tensor, intensity: Tensor) -> Tensor:
        return self.editor.edit_latent(w, emotion, intensity)


def temporal_smooth(x: Tensor, window: int, dim: int = 0) -> Tensor:
    """Moving average of a sequence along ``dim`` (time) over a centred window of ``window`` frames (odd).

    Frame t becomes the mean of frames ``max(0, t - h) .. min(T - 1, t + h)``, ``h = (window - 1) // 2``: at
    the edges the window shrinks to the frames that exist (no padding, so nothing is pulled toward zero or
    repeated, and the first and last frames stay centred within what is known) *(ours)*. A constant sequence
    is unchanged; ``window=1`` returns ``x`` itself; a window longer than the sequence averages what it
    covers.

    Args:
        x: floating tensor, any shape, e.g. (T, 64) coefficients or (B, T, 512) latents.
        window: odd int >= 1.
        dim: the time dimension.

    Returns:
        Tensor of x's shape and dtype.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"temporal_smooth: argument 'x' must be a floating tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"temporal_smooth: argument 'window' must be an odd int >= 1, got {window!r}")
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"temporal_smooth: argument 'dim' {dim} is not a dimension of x of shape "
                         f"{tuple(x.shape)}")
    if window == 1 or x.shape[dim] <= 1:
        return x
    seq = x.movedim(dim, -1)
    shape = seq.shape
    # count_include_pad=False divides each sum by the frames inside the sequence: the shrinking edge window
    out = F.avg_pool1d(seq.reshape(-1, 1, shape[-1]), kernel_size=window, stride=1, padding=window // 2,
                       count_include_pad=False)
    return out.reshape(shape).movedim(-1, dim)


@register_model
def expression_editor(exp_dim: int = 64, latent_dim: int = 512, num_emotions: int = 8, embed_dim: int = 32,
                      hidden: int = 256, depth: int = 3, latent_hidden: int = 512, latent_depth: int = 3,
                      intensity_input: bool = False, latent_layers: int = 0, **kwargs) -> ExpressionEditor:
    """The emotion editor of expression coefficients (64) and texture latents (W / W+, 512): 3-layer SiLU MLPs
    conditioned on a 32-d embedding of the 8 MEAD emotions (and, with ``latent_layers``, of the W+ row)
    *(ours)*."""
    return ExpressionEditor(exp_dim=exp_dim, latent_dim=latent_dim, num_emotions=num_emotions,
                            embed_dim=embed_dim, hidden=hidden, depth=depth, latent_hidden=latent_hidden,
                            latent_depth=latent_depth, intensity_input=intensity_input,
                            latent_layers=latent_layers, **kwargs)
