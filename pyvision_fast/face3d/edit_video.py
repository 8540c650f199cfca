"""Emotional editing of a talking-face video (paper 4, docs/talking_face.md), behind ``pvf edit-video``:

    pvf edit-video --input talk.mp4 --coeffs talk_coeffs.npy --emotion happy --intensity 0.6 \\
        --output happy.mp4 --bfm BFM_model_front.mat --checkpoint runs/edit/checkpoint-best.safetensors

1. the per-frame coefficients (:func:`load_coeff_sequence`: one (T, 257) ``.npy``, or a folder of per-frame
   ``.npy`` (257,) or Deep3DFaceRecon ``.mat`` files) are edited by the expression editor
   (:class:`pyvision_fast.models.expression_editor.ExpressionEditor`) toward the emotion at the intensity;
2. the edit is smoothed over time (:func:`edit_coefficients`): *(ours)* the offset ``edited - original`` of
   the expression is averaged over ``window`` frames
   (:func:`~pyvision_fast.models.expression_editor.temporal_smooth`) and added back to the original, so the
   editor's frame-to-frame jitter is averaged out while the original lip motion keeps its frame accuracy
   (smoothing the edited coefficients themselves would low-pass the speech);
3. the edited face is rendered by the BFM (:class:`pyvision_fast.models.bfm.BFM`, its own albedo and the
   frame's pose and lighting) at ``fit_size`` (the image size the coefficients were fitted at; default the
   video's frame size), resized to the frame and composited over it with the rendered mask as alpha;
4. the frames are written to an MP4 with PyAV (``mpeg4`` by default, the input's frame rate), streaming:
   frames are decoded, rendered and encoded ``chunk`` at a time, with a tqdm progress bar.

The video's decoded frame count must equal the coefficient count (checked before anything is written; the
output appears only when complete). The StyleGAN texture edit is not applied here (the texture generator and
its UV maps come from ``models.stylegan2``; :meth:`ExpressionEditor.edit_latent` edits its latents).
"""
from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .basis import COEFF_SLICES, N_COEFFS

__all__ = ["load_coeff_sequence", "load_editor", "edit_coefficients", "edit_video", "D3DFR_MAT_KEYS"]

PathLike = Union[str, os.PathLike]
D3DFR_MAT_KEYS = ("id", "exp", "tex", "angle", "gamma", "trans")   # Deep3DFaceRecon's saved coefficient keys
_EXP = COEFF_SLICES["exp"]


def _frame_vector(path: Path) -> np.ndarray:
    """One frame's (257,) coefficients from a ``.npy`` ((257,) or (1, 257)) or a Deep3DFaceRecon ``.mat``."""
    if path.suffix == ".mat":
        import scipy.io

        try:
            mat = scipy.io.loadmat(str(path))
        except Exception as exc:  # scipy raises several types for a bad file
            raise ValueError(f"{path}: not a readable .mat file ({type(exc).__name__}: {exc})") from exc
        if "coeff" in mat:
            vec = np.asarray(mat["coeff"], dtype=np.float64).reshape(-1)
        else:
            missing = [k for k in D3DFR_MAT_KEYS if k not in mat]
            if missing:
                raise ValueError(f"{path}: lacks the coefficient key(s) {missing} (Deep3DFaceRecon saves "
                                 f"{', '.join(D3DFR_MAT_KEYS)})")
            vec = np.concatenate([np.asarray(mat[k], dtype=np.float64).reshape(-1) for k in D3DFR_MAT_KEYS])
    else:
        try:
            vec = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
        vec = np.asarray(vec)
        if vec.ndim <= 2 and vec.size == N_COEFFS:
            vec = vec.reshape(-1)
    if vec.shape != (N_COEFFS,):
        raise ValueError(f"{path}: one frame's coefficients must hold {N_COEFFS} values, got shape "
                         f"{vec.shape}")
    return vec


def load_coeff_sequence(path: PathLike) -> Tensor:
    """(T, 257) float32 coefficients of a video: a ``.npy`` file holding (T, 257), or a folder of one file per
    frame in name order (``.npy`` of (257,) or (1, 257); Deep3DFaceRecon's ``.mat`` with keys id, exp, tex,
    angle, gamma, trans, or ``coeff``). Errors name the file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".mat") and p.is_file())
        if not files:
            raise FileNotFoundError(f"coefficient folder {path} holds no .npy or .mat file")
        arr = np.stack([_frame_vector(f) for f in files])
    elif path.is_file():
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable .npy coefficient file ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] != N_COEFFS or arr.shape[0] < 1:
            raise ValueError(f"{path}: coefficients must be a (T, {N_COEFFS}) array, got shape {arr.shape}")
    else:
        raise FileNotFoundError(f"coefficients not found: {path}")
    if arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
        raise ValueError(f"{path}: coefficients must be finite numbers")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def load_editor(checkpoint: PathLike, model_args: Optional[dict] = None) -> nn.Module:
    """The editor of ``checkpoint``: a ``pvf train talking_face_edit`` checkpoint rebuilds its model from the
    file's metadata; other weights load into ``expression_editor`` with ``model_args`` (strict)."""
    from ..models import create_model, read_state_dict
    from ..train.checkpoint import read_model_identity

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"editor checkpoint {str(checkpoint)!r} does not exist")
    identity = read_model_identity(checkpoint)
    name = identity.get("model", "expression_editor")
    model = create_model(name, **{**identity.get("model_args", {}), **(model_args or {})})
    if not hasattr(model, "exp_dim"):
        raise ValueError(f"{checkpoint} holds a {name!r}, not an expression editor")
    try:
        model.load_state_dict(read_state_dict(checkpoint), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{checkpoint} does not fit {name} with "
                         f"{model_args or identity.get('model_args', {})}: "
                         f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def edit_coefficients(editor: nn.Module, coeffs: Tensor, emotion, intensity: float, window: int = 5,
                      chunk: int = 1024) -> Tensor:
    """(T, 257) coefficients -> (T, 257) with the expression edited toward ``emotion`` at ``intensity`` and
    the edit smoothed over ``window`` frames (module docstring, step 2); everything but the expression is
    kept. Intensity 0 returns ``coeffs`` unchanged."""
    from ..models.expression_editor import temporal_smooth

    if not isinstance(coeffs, Tensor) or coeffs.dim() != 2 or coeffs.shape[1] != N_COEFFS:
        raise ValueError(f"edit_coefficients: coeffs must be (T, {N_COEFFS}), got "
                         f"{tuple(getattr(coeffs, 'shape', ()))}")
    exp = coeffs[:, _EXP]
    with torch.no_grad():
        edited = torch.cat([editor(exp[i:i + chunk], emotion, float(intensity))
                            for i in range(0, len(exp), chunk)])
    offset = temporal_smooth(edited - exp, window, dim=0)
    out = coeffs.clone()
    out[:, _EXP] = exp + offset
    return out


def _parse_size(fit_size, frame_hw: tuple[int, int]) -> tuple[int, int]:
    if fit_size is None:
        return frame_hw
    if isinstance(fit_size, int):
        fit_size = (fit_size, fit_size)
    fit_size = tuple(fit_size)
    if len(fit_size) == 1:
        fit_size = fit_size * 2
    if len(fit_size) != 2:
        raise ValueError(f"fit_size must be H x W, got {fit_size}")
    h, w = (int(v) for v in fit_size)
    if h < 1 or w < 1:
        raise ValueError(f"fit_size must be positive, got {fit_size}")
    return h, w


def edit_video(input: PathLike, coeffs: Union[PathLike, Tensor], output: PathLike, *, editor: nn.Module,
               bfm: Union[PathLike, nn.Module], emotion: str, intensity: float, window: int = 5,
               fit_size: Union[None, int, Sequence[int]] = None, chunk: int = 16, codec: str = "mpeg4",
               bit_rate: int = 20_000_000, codec_options: Optional[dict] = None,
               progress: Optional[bool] = None, device: str = "cpu") -> dict:
    """Edits ``input`` (module docstring) and writes ``output``; returns ``{"output", "frames", "fps",
    "height", "width"}``. ``bfm``: a ``BFM_model_front.mat`` path or a built BFM module (its image size is
    then the fit size). ``codec_options``: FFmpeg encoder options (``{"crf": "0"}`` for a lossless
    ``libx264``). ``progress`` None: a bar when stderr is a terminal."""
    from tqdm import tqdm

    from ..data.video import _av, _open, probe_video
    from ..models.expression_editor import emotion_index

    if not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"intensity must lie in [0, 1], got {intensity}")
    emotion_index(emotion, editor.emotions)
    input, output = Path(input), Path(output)
    info = probe_video(input)
    if info.height % 2 or info.width % 2:
        raise ValueError(f"{input}: frame size {info.width}x{info.height} must be even for the MP4 output")
    seq = coeffs if isinstance(coeffs, Tensor) else load_coeff_sequence(coeffs)
    if seq.shape[0] != info.num_frames:
        where = "the given coefficients" if isinstance(coeffs, Tensor) else str(coeffs)
        raise ValueError(f"{input} has {info.num_frames} frames but {where} hold {seq.shape[0]} frames of "
                         f"coefficients")
    dev = torch.device(device)
    if isinstance(bfm, nn.Module):
        face = bfm
    else:
        from ..models import create_model

        size = _parse_size(fit_size, (info.height, info.width))
        face = create_model("bfm", basis_path=bfm, image_size=size)
    face = face.to(dev).eval()
    edited = edit_coefficients(editor.to(dev), seq.to(dev), emotion, intensity, window)

    av = _av()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.partial{output.suffix or '.mp4'}")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=info.num_frames, desc=f"edit-video {emotion} {float(intensity):.2f}", unit="frame",
               disable=not show, file=sys.stderr)
    done = 0
    try:
        with av.open(str(partial), mode="w", format="mp4") as out:
            try:
                stream = out.add_stream(codec, rate=Fraction(info.fps or 25).limit_denominator(1001),
                                        options={str(k): str(v) for k, v in (codec_options or {}).items()})
            except (ValueError, av.FFmpegError) as exc:
                raise ValueError(f"video codec {codec!r} is not available in PyAV's FFmpeg ({exc})") from exc
            stream.height, stream.width = info.height, info.width
            stream.pix_fmt, stream.bit_rate = "yuv420p", bit_rate
            container = _open(input)
            frames: list[np.ndarray] = []

            def flush() -> None:
                nonlocal done
                batch = torch.from_numpy(np.stack(frames)).to(dev).permute(0, 3, 1, 2).float().div(255)
                with torch.no_grad():
                    r = face.render(edited[done:done + len(frames)])
                img, mask = r["image"].clamp(0, 1), r["mask"]
                if tuple(img.shape[-2:]) != (info.height, info.width):
                    size = (info.height, info.width)
                    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
                    mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
                comp = (img * mask + batch * (1 - mask)).mul(255).round().clamp(0, 255).byte()
                for array in comp.permute(0, 2, 3, 1).cpu().numpy():
                    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array),
                                                                           format="rgb24")):
                        out.mux(packet)
                done += len(frames)
                bar.update(len(frames))
                frames.clear()

            try:
                for frame in container.decode(container.streams.video[0]):
                    if done + len(frames) >= info.num_frames:
                        break
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) == chunk:
                        flush()
                if frames:
                    flush()
            finally:
                container.close()
            for packet in stream.encode():
                out.mux(packet)
        if done != info.num_frames:
            raise ValueError(f"{input}: decoded {done} frames, expected {info.num_frames}")
        partial.replace(output)
    finally:
        bar.close()
        if partial.exists():
            partial.unlink()
    return {"output": str(output), "frames": done, "fps": info.fps, "height": info.height,
            "width": info.width}
