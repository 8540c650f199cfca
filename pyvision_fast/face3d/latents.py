"""The texture side of talking-face editing (paper 4, docs/talking_face.md): StyleGAN W+ latents of the face
texture of video frames, so that the expression editor can edit appearance in latent space.

* :func:`load_texture_generator`: the ``stylegan2_texture`` generator of a ``pvf train texture_gan``
  checkpoint (its EMA file, ``checkpoint-ema-last.safetensors``, is the one to use), or of an official
  stylegan2-ada-pytorch ``G_ema`` state_dict with ``model_args``.
* :func:`invert_textures`: GAN inversion by optimisation *(ours; the paper names no inversion method)*: W+
  latents ws (B, num_ws, w_dim) whose textures ``to_unit_range(G.synthesis(ws, noise_mode="const"))`` match
  the target textures on their visible texels. Adam on ws from ``init`` (default the generator's ``w_avg``),
  the loss per texture

      sum_s  mean_vis |down_s(G(ws)) - down_s(target)|^2        (s = 1, 2, 4: visibility-weighted area
                                                                 down-sampling)
      + w_weight * mean (ws - w_avg)^2
      + smooth_weight * mean_t (ws[t + 1] - ws[t])^2             (``sequence=True``: the batch is frames)

  with ``mean_vis`` the visibility-weighted mean (invisible texels do not count). No perceptual term (LPIPS
  needs weights that are not available offline). All frames of a batch are optimised together (one
  synthesis per step for the whole batch), which the temporal term couples. The generator is not changed:
  only ws is optimised, and the generator's parameters stop requiring gradients during the call (restored
  after), so no parameter gradient is computed or accumulated.
* :func:`invert_video`: the W+ latents (T, num_ws, w_dim) of a video's frames, chunk by chunk: each frame's
  texture is unwrapped from the frame with its 3DMM coefficients (:func:`pyvision_fast.face3d.texture.
  unwrap_texture`; only the visible texels count), and each chunk is inverted jointly with the temporal term,
  warm-started from the previous chunk's last frame and tied to it (``previous``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["load_texture_generator", "invert_textures", "synthesize_textures", "invert_video"]

PathLike = Union[str, os.PathLike]


def load_texture_generator(checkpoint: PathLike, model_args: Optional[dict] = None) -> nn.Module:
    """The generator of ``checkpoint`` in eval mode: a ``pvf train texture_gan`` checkpoint rebuilds its
    network from the file's metadata (``model_args`` override); other files (an official ``G_ema``
    state_dict as ``.safetensors`` / ``.pt``) load into ``stylegan2_texture(**model_args)``."""
    from ..models import create_model, load_weights
    from ..train.checkpoint import read_model_identity

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"texture generator checkpoint {str(checkpoint)!r} does not exist (a pvf "
                                f"train texture_gan checkpoint-ema-last.safetensors, or an official G_ema "
                                f"state_dict)")
    identity = read_model_identity(checkpoint)
    name = identity.get("model", "stylegan2_texture")
    model = create_model(name, **{**identity.get("model_args", {}), **(model_args or {})})
    if not hasattr(model, "synthesis") or not hasattr(model, "num_ws"):
        raise ValueError(f"{checkpoint} holds a {name!r}, not a StyleGAN2 texture generator")
    try:
        load_weights(model, checkpoint)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint} does not fit {name} with "
                         f"{model_args or identity.get('model_args', {})}: "
                         f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def synthesize_textures(generator: nn.Module, ws: Tensor) -> Tensor:
    """ws (B, num_ws, w_dim) -> textures (B, C, R, R) in [0, 1] (noise "const": deterministic)."""
    from ..models.stylegan2 import to_unit_range

    return to_unit_range(generator.synthesis(ws, noise_mode="const"))


def _area(x: Tensor, factor: int) -> Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def _check_textures(generator: nn.Module, textures: Tensor,
                    visibility: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    if not isinstance(textures, Tensor) or not textures.is_floating_point():
        raise TypeError(f"invert_textures: argument 'textures' must be a floating tensor (B, C, R, R), got "
                        f"{getattr(textures, 'dtype', type(textures).__name__)}")
    C, R = generator.img_channels, generator.img_resolution
    if textures.dim() != 4 or textures.shape[1] != C or textures.shape[0] < 1:
        raise ValueError(f"invert_textures: argument 'textures' must have shape (B >= 1, {C}, H, W), got "
                         f"{tuple(textures.shape)}")
    if visibility is None:
        visibility = textures.new_ones(textures.shape[0], 1, *textures.shape[-2:])
    if (not isinstance(visibility, Tensor) or visibility.dim() != 4 or visibility.shape[1] != 1
            or visibility.shape[0] != textures.shape[0] or visibility.shape[-2:] != textures.shape[-2:]):
        raise ValueError(f"invert_textures: argument 'visibility' must have shape ({textures.shape[0]}, 1, "
                         f"{textures.shape[2]}, {textures.shape[3]}), got "
                         f"{tuple(getattr(visibility, 'shape', ()))}")
    visibility = visibility.to(textures.dtype)
    if not bool(((visibility >= 0) & (visibility <= 1)).all()):
        raise ValueError("invert_textures: argument 'visibility' must lie in [0, 1]")
    textures = torch.where(visibility > 0, textures, torch.zeros_like(textures))
    if not bool(torch.isfinite(textures).all()):
        raise ValueError("invert_textures: argument 'textures' holds NaN or Inf at visible texels")
    if tuple(textures.shape[-2:]) != (R, R):   # visibility-weighted area resize
        weight = F.interpolate(visibility, size=(R, R), mode="area")
        textures = F.interpolate(textures * visibility, size=(R, R), mode="area") / weight.clamp_min(1e-8)
        visibility = weight
    return textures, visibility


def invert_textures(generator: nn.Module, textures: Tensor, visibility: Optional[Tensor] = None, *,
                    steps: int = 200, lr: float = 0.05, init: Optional[Tensor] = None,
                    w_weight: float = 1e-3, sequence: bool = False, smooth_weight: float = 1.0,
                    previous: Optional[Tensor] = None, scales: Sequence[int] = (1, 2, 4),
                    return_loss: bool = False):
    """W+ latents of target textures (module docstring).

    Args:
        generator: a ``StyleGAN2Generator`` (``synthesis``, ``mapping.w_avg``, ``num_ws``, ``w_dim``).
        textures: (B, C, H, W) floating targets in [0, 1]; resized (area) to the generator's resolution.
        visibility: (B, 1, H, W) weights in [0, 1] of the texels that are known (None: all).
        steps, lr: Adam iterations and learning rate on ws.
        init: (B, num_ws, w_dim), (num_ws, w_dim) or (w_dim,) starting latents (default ``w_avg``).
        w_weight: pull toward ``w_avg`` (keeps the latents where the generator is trained).
        sequence: the batch is consecutive frames of one video: adds the temporal term.
        smooth_weight: weight of that term.
        previous: (num_ws, w_dim) latents of the frame before the batch (``sequence=True``: the temporal term
            also ties the first frame to it, so consecutive batches of a video join smoothly).
        scales: area down-sampling factors of the pixel loss (each must divide the resolution).
        return_loss: also return the final per-texture pixel loss (B,).

    Returns:
        ws (B, num_ws, w_dim) in the generator's dtype, detached (and the (B,) losses).
    """
    for name, v in (("steps", steps),):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"invert_textures: argument '{name}' must be an int >= 0, got {v!r}")
    if not lr > 0:
        raise ValueError(f"invert_textures: argument 'lr' must be positive, got {lr}")
    R = generator.img_resolution
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or R % s for s in scales):
        raise ValueError(f"invert_textures: scales must be ints >= 1 dividing the resolution {R}, got "
                         f"{tuple(scales)}")
    textures, visibility = _check_textures(generator, textures, visibility)
    dtype = generator.mapping.w_avg.dtype
    device = generator.mapping.w_avg.device
    textures, visibility = textures.to(device, dtype), visibility.to(device, dtype)
    B, L, D = textures.shape[0], generator.num_ws, generator.w_dim
    w_avg = generator.mapping.w_avg.detach().to(dtype)
    if init is None:
        init = w_avg.expand(B, L, D)
    if not isinstance(init, Tensor) or init.shape[-1] != D or init.dim() > 3:
        raise ValueError(f"invert_textures: argument 'init' must be (B, {L}, {D}), ({L}, {D}) or ({D},), got "
                         f"{tuple(getattr(init, 'shape', ()))}")
    try:
        init = init.to(device, dtype).expand(B, L, D)
    except RuntimeError as exc:
        raise ValueError(f"invert_textures: init of shape {tuple(init.shape)} does not fit ({B}, {L}, {D})") \
            from exc
    prev = None
    if previous is not None:
        if not isinstance(previous, Tensor) or tuple(previous.shape) != (L, D):
            raise ValueError(f"invert_textures: argument 'previous' must have shape ({L}, {D}), got "
                             f"{tuple(getattr(previous, 'shape', ()))}")
        prev = previous.detach().to(device, dtype)[None]
    ws = init.clone().requires_grad_(True)
    # visibility-weighted pooling: an invisible texel (weight 0) has no effect at any scale, whatever it holds
    masked = textures * visibility
    pooled_vis = [_area(visibility, s) for s in scales]
    targets = [_area(masked, s) / v.clamp_min(1e-8) for s, v in zip(scales, pooled_vis)]

    def pixel_loss(ws: Tensor) -> Tensor:
        img = synthesize_textures(generator, ws)
        total = img.new_zeros(B)
        for s, tex, vis in zip(scales, targets, pooled_vis):
            pooled = _area(img * visibility, s) / vis.clamp_min(1e-8)
            err = (pooled - tex).square() * vis
            total = total + err.sum((1, 2, 3)) / (vis.sum((1, 2, 3)) * img.shape[1]).clamp_min(1e-8)
        return total

    flags = [p.requires_grad for p in generator.parameters()]
    for p in generator.parameters():
        p.requires_grad_(False)
    try:
        opt = torch.optim.Adam([ws], lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = pixel_loss(ws).sum() + w_weight * (ws - w_avg).square().mean((1, 2)).sum()
            if sequence:
                seq = ws if previous is None else torch.cat([prev, ws])
                if seq.shape[0] > 1:
                    loss = loss + smooth_weight * (seq[1:] - seq[:-1]).square().mean((1, 2)).sum()
            loss.backward()
            opt.step()
        ws = ws.detach()
        if not return_loss:
            return ws
        with torch.no_grad():
            return ws, pixel_loss(ws)
    finally:
        for p, flag in zip(generator.parameters(), flags):
            p.requires_grad_(flag)


def invert_video(generator: nn.Module, face: nn.Module, chunks: Iterable[tuple[Tensor, Tensor]], *,
                 steps: int = 200, warm_steps: Optional[int] = None, lr: float = 0.05, w_weight: float = 1e-3,
                 smooth_weight: float = 1.0, min_facing: float = 0.2,
                 on_chunk: Optional[Callable[[int], None]] = None) -> Tensor:
    """W+ latents of a video's face textures (module docstring).

    Args:
        generator: the texture generator (its ``img_resolution`` is the unwrapped texture's size).
        face: the BFM whose ``image_size`` the frames have (crops or resized frames).
        chunks: consecutive ``(coeffs (n, 257), frames (n, 3, H, W) in [0, 1])`` pairs, in frame order.
        steps: Adam steps of the first chunk (from ``w_avg``); ``warm_steps`` those of the later chunks (from
            the previous chunk's last latents; default ``steps // 2``).
        lr, w_weight, smooth_weight: as :func:`invert_textures`.
        min_facing: :func:`~pyvision_fast.face3d.texture.unwrap_texture`'s facing threshold.
        on_chunk: called with each chunk's frame count (a progress bar's ``update``).

    Returns:
        (T, num_ws, w_dim) latents in the generator's dtype, on its device.
    """
    from .texture import unwrap_texture, uv_raster

    warm_steps = steps // 2 if warm_steps is None else warm_steps
    device = generator.mapping.w_avg.device
    uv_rast = uv_raster(face, size=generator.img_resolution)
    out: list[Tensor] = []
    previous = None
    for coeffs, frames in chunks:
        coeffs = coeffs.to(device, face.mean_shape.dtype)
        frames = frames.to(device, face.mean_shape.dtype)
        with torch.no_grad():
            unwrapped = unwrap_texture(face, coeffs, frames, size=generator.img_resolution, uv_rast=uv_rast,
                                       min_facing=min_facing)
        n = coeffs.shape[0]
        init = None if previous is None else previous.expand(n, *previous.shape)
        ws = invert_textures(generator, unwrapped["texture"], unwrapped["visibility"],
                             steps=steps if previous is None else warm_steps, lr=lr, init=init,
                             w_weight=w_weight, sequence=True, smooth_weight=smooth_weight, previous=previous)
        out.append(ws)
        previous = ws[-1]
        if on_chunk is not None:
            on_chunk(n)
    if not out:
        raise ValueError("invert_video: no frames")
    return torch.cat(out)
