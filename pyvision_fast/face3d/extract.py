"""``pvf extract talking_face``: the per-frame texture latents of a MEAD folder, which the ``talking_face_edit``
recipe trains the editor's latent branch on.

    pvf extract talking_face --data MEAD --checkpoint runs/tex/checkpoint-ema-last.safetensors \\
        --bfm BFM_model_front.mat [--align] [--fit-size 224x224] [--view front] [--invert-steps 200]

For every clip with a video and coefficients (and landmarks with ``--align``) in :mod:`pyvision_fast.data.mead`'s
layout, the video is decoded ``chunk`` frames at a time, brought to what the coefficients were fitted on (the
aligned crops of :mod:`pyvision_fast.face3d.align` with ``align``, else the frames resized to ``fit_size``),
and its face textures are inverted into the texture generator's W+ space
(:func:`pyvision_fast.face3d.latents.invert_video`). The latents (T, num_ws, w_dim) go to
``<actor>/latents/<view>/<emotion>/level_<k>/<clip>.npy`` (float16 by default) beside the coefficients,
written atomically (a temporary file renamed), so an interrupted run leaves no partial file; a rerun skips the
clips whose latent file exists with the right shape (resumable). Under torchrun each process takes every
``WORLD_SIZE``-th clip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

__all__ = ["extract_mead_latents", "LATENT_DTYPES"]

PathLike = Union[str, os.PathLike]
LATENT_DTYPES = {"float16": np.float16, "float32": np.float32}


def _existing(path: Path, shape: tuple[int, int, int]) -> bool:
    if not path.is_file():
        return False
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape) == shape
    except (ValueError, OSError):
        return False


def extract_mead_latents(root: PathLike, generator: Union[PathLike, nn.Module], bfm: Union[PathLike, nn.Module],
                         *, views: Sequence[str] = ("front",), actors: Optional[Sequence[str]] = None,
                         align: bool = False, fit_size=None, window: int = 5, steps: int = 200,
                         warm_steps: Optional[int] = None, chunk: int = 16, dtype: str = "float16",
                         device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Writes the texture latents of every clip of ``root`` (module docstring); returns ``{"clips",
    "written", "skipped", "frames", "shape"}`` (this process's share).

    Args:
        generator: the texture generator, or its checkpoint (:func:`~pyvision_fast.face3d.latents.
            load_texture_generator`).
        bfm: a ``BFM_model_front.mat`` path (or ``"synthetic"``) or a built BFM module (its image size is the fit
            size).
        align: the coefficients are those of aligned crops (needs the clips' landmarks); the crops' size is
            ``fit_size`` (default 224); ``window`` smooths the crop transforms.
        fit_size: without ``align``: the size the whole frames were fitted at (default each video's size).
        steps, warm_steps, chunk: the inversion's (:func:`~pyvision_fast.face3d.latents.invert_video`).
        dtype: ``float16`` or ``float32`` on disk.
    """
    from tqdm import tqdm

    from ..data.mead import load_coeffs, load_landmarks, scan_mead
    from ..data.video import probe_video
    from ..models import create_model
    from .edit_video import _parse_size, face_frame_chunks, frame_alignment
    from .latents import invert_video, load_texture_generator

    if dtype not in LATENT_DTYPES:
        raise ValueError(f"dtype must be one of {tuple(LATENT_DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    G = (generator if isinstance(generator, nn.Module) else load_texture_generator(generator)).to(dev).eval()
    require = ("video", "coeffs", "landmarks") if align else ("video", "coeffs")
    clips = scan_mead(root, views=views, actors=actors, source="coeffs", require=require)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    mine = clips[rank::world]
    faces: dict[tuple[int, int], nn.Module] = {}

    def face_for(frame_hw: tuple[int, int]) -> nn.Module:
        if isinstance(bfm, nn.Module):
            return bfm.to(dev).eval()
        size = _parse_size(fit_size, (224, 224) if align else frame_hw)
        if size not in faces:
            args = {"basis": "synthetic"} if str(bfm) == "synthetic" else {"basis_path": bfm}
            faces[size] = create_model("bfm", image_size=size, **args).to(dev).eval()
        return faces[size]

    shape = (G.num_ws, G.w_dim)
    written = skipped = frames = 0
    show = progress and rank == 0 and sys.stderr.isatty()
    bar = tqdm(total=len(mine), desc="texture latents", unit="clip", disable=not show,
               file=sys.stderr)
    try:
        for clip in mine:
            coeffs = load_coeffs(clip.coeffs)
            T = coeffs.shape[0]
            out = clip.latents
            if _existing(out, (T, *shape)):
                skipped += 1
                bar.update(1)
                continue
            info = probe_video(clip.video)
            if info.num_frames != T:
                raise ValueError(f"{clip.video} has {info.num_frames} frames but {clip.coeffs} holds {T} frames "
                                 f"of coefficients")
            face = face_for((info.height, info.width))
            transforms = None
            if align:
                transforms = frame_alignment(load_landmarks(clip.landmarks).to(dev), face, window)
            chunks = face_frame_chunks(clip.video, coeffs.to(dev), face, transforms, T, chunk, dev)
            ws = invert_video(G, face, chunks, steps=steps, warm_steps=warm_steps)
            arr = ws.cpu().numpy()
            if dtype == "float16" and not np.isfinite(arr.astype(np.float16)).all():
                raise ValueError(f"{clip}: latents beyond float16's range; use --dtype float32")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npy")
            try:
                np.save(tmp, arr.astype(LATENT_DTYPES[dtype]))
                tmp.replace(out)
            finally:
                if tmp.exists():
                    tmp.unlink()
            written += 1
            frames += T
            bar.update(1)
    finally:
        bar.close()
    return {"clips": len(mine), "written": written, "skipped": skipped, "frames": frames,
            "shape": [G.num_ws, G.w_dim]}
