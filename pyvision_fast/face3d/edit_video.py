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
3. where the face is: with ``landmarks`` (per-frame 68-point landmarks in frame pixels) the coefficients are
   those of aligned face crops, as Deep3DFaceRecon fits them: each frame's crop transform maps its five
   facial points onto the BFM's mean face at the BFM's image size (``fit_size``, default 224)
   (:mod:`pyvision_fast.face3d.align`), smoothed over ``window`` frames; without landmarks the coefficients
   were fitted on the whole frame resized to ``fit_size`` (default the frame size);
4. the texture edit (with a texture generator, ``texture``): the face texture of every frame is unwrapped
   from the (cropped) frame with its original coefficients and inverted into the generator's W+ space
   (:func:`pyvision_fast.face3d.latents.invert_video`; or ``latents`` given, e.g. from ``pvf extract
   talking_face``), the latents are edited by the editor's latent branch toward the emotion
   (:meth:`ExpressionEditor.edit_latent`) with the latent edit smoothed over the window like the expression's,
   and the edited textures are generated; without a generator the BFM's own albedo is rendered, lit by the
   frame's SH coefficients;
5. the edited face is rendered (``BFM.render``: the generated texture unlit, as unwrapped from the frames, or
   the lit albedo) and composited over the frame: pasted back through the crop transform with a feathered
   mask (``feather`` crop pixels), or resized to the frame with the rendered mask as alpha;
6. the frames are written to an MP4 with PyAV (``mpeg4`` by default, the input's frame rate), streaming:
   frames are decoded, rendered and encoded ``chunk`` at a time, with a tqdm progress bar (the inversion is a
   first pass over the video with its own bar).

The video's decoded frame count must equal the coefficient count (and the landmark and latent counts; checked
before anything is written; the output appears only when complete).
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

__all__ = ["load_coeff_sequence", "load_editor", "edit_coefficients", "edit_latents", "load_landmark_file",
           "face_frame_chunks", "frame_alignment", "edit_video", "D3DFR_MAT_KEYS"]

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


def edit_latents(editor: nn.Module, ws: Tensor, emotion, intensity: float, window: int = 5,
                 chunk: int = 256) -> Tensor:
    """(T, L, D) per-frame W+ texture latents -> (T, L, D) edited toward ``emotion`` at ``intensity`` by the
    editor's latent branch, the edit smoothed over ``window`` frames as in :func:`edit_coefficients`.
    Intensity 0 returns ``ws`` unchanged."""
    from ..models.expression_editor import temporal_smooth

    if getattr(editor, "latent_net", None) is None:
        raise ValueError("the editor has no latent editor (latent_dim=0): train talking_face_edit with texture "
                         "latents, or leave out the texture generator")
    if not isinstance(ws, Tensor) or ws.dim() != 3 or ws.shape[-1] != editor.latent_dim:
        raise ValueError(f"edit_latents: ws must be (T, L, {editor.latent_dim}), got "
                         f"{tuple(getattr(ws, 'shape', ()))}")
    with torch.no_grad():
        edited = torch.cat([editor.edit_latent(ws[i:i + chunk], emotion, float(intensity))
                            for i in range(0, len(ws), chunk)])
    return ws + temporal_smooth(edited - ws, window, dim=0)


def load_landmark_file(path: PathLike) -> Tensor:
    """(T, 68, 2) float32 landmarks (frame pixels): a ``.npy`` of (T, 68, 2), or a folder of one 68-line
    ``x y`` text file per frame (:func:`pyvision_fast.face3d.fit.read_landmark_sequence`)."""
    from .fit import read_landmark_sequence

    path = Path(path)
    if path.is_dir():
        return read_landmark_sequence(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npy landmark file ({exc})") from exc
    if arr.ndim != 3 or arr.shape[1:] != (68, 2) or arr.dtype.kind not in "fiu":
        raise ValueError(f"{path}: landmarks must be a (T, 68, 2) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: non-finite landmark at frame {np.argwhere(~np.isfinite(arr))[0][0]}")
    return torch.from_numpy(arr.astype(np.float32))


def _load_latent_file(path: PathLike) -> Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latents not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npy latent file ({exc})") from exc
    if arr.ndim != 3 or arr.dtype.kind != "f" or not np.isfinite(arr).all():
        raise ValueError(f"{path}: latents must be a finite (T, num_ws, w_dim) float array, got shape "
                         f"{arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.astype(np.float32))


def _decode_chunks(path: Path, num_frames: int, chunk: int):
    """Yields (start, (n, 3, H, W) float32 frames in [0, 1]) of ``path``, ``chunk`` frames at a time."""
    from ..data.video import _open

    container = _open(path)
    frames: list[np.ndarray] = []
    start = 0
    try:
        for frame in container.decode(container.streams.video[0]):
            if start + len(frames) >= num_frames:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == chunk:
                yield start, torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
                start += len(frames)
                frames = []
        if frames:
            yield start, torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div(255)
    finally:
        container.close()


def _to_face(frames: Tensor, size: tuple[int, int], align: Optional[Tensor]) -> Tensor:
    """Frames (n, 3, H, W) -> what the coefficients were fitted on: the aligned crops (``align`` (n, 2, 3)) or
    the frames resized to ``size``."""
    from .align import crop_faces

    if align is not None:
        return crop_faces(frames, align, size)
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)


def face_frame_chunks(video: PathLike, coeffs: Tensor, face: nn.Module, align: Optional[Tensor], num_frames: int,
                      chunk: int = 16, device: Union[str, torch.device] = "cpu"):
    """Yields ``(coeffs (n, 257), frames (n, 3, h, w) in [0, 1])`` of ``video``, ``chunk`` frames at a time,
    the frames as the coefficients were fitted: aligned crops (``align`` (T, 2, 3)) or the frames resized to
    the face model's image size."""
    for start, frames in _decode_chunks(Path(video), num_frames, chunk):
        n = len(frames)
        yield coeffs[start:start + n], _to_face(frames.to(device), face.image_size,
                                                None if align is None else align[start:start + n])


def frame_alignment(landmarks: Tensor, face: nn.Module, window: int = 5) -> Tensor:
    """(T, 68, 2) frame-pixel landmarks -> (T, 2, 3) float32 crop transforms onto the face model's mean-face
    template (:mod:`pyvision_fast.face3d.align`), smoothed over ``window`` frames."""
    from .align import alignment_template, estimate_alignment, smooth_alignment

    align = estimate_alignment(landmarks.double(), alignment_template(face, torch.float64).to(landmarks.device))
    return smooth_alignment(align, window).float()


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
               fit_size: Union[None, int, Sequence[int]] = None,
               landmarks: Union[None, PathLike, Tensor] = None, feather: int = 3,
               texture: Union[None, PathLike, nn.Module] = None, latents: Union[None, PathLike, Tensor] = None,
               invert_steps: int = 200, chunk: int = 16, codec: str = "mpeg4", bit_rate: int = 20_000_000,
               codec_options: Optional[dict] = None, progress: Optional[bool] = None,
               device: str = "cpu") -> dict:
    """Edits ``input`` (module docstring) and writes ``output``; returns ``{"output", "frames", "fps",
    "height", "width", "aligned", "texture"}``.

    Args:
        coeffs: (T, 257) coefficients or their file / folder (:func:`load_coeff_sequence`).
        editor: the expression editor (:func:`load_editor`); with ``texture`` it needs its latent branch.
        bfm: a ``BFM_model_front.mat`` path or a built BFM module (its image size is then the fit size).
        landmarks: (T, 68, 2) frame-pixel landmarks (a tensor, a ``.npy`` or a folder of per-frame ``.txt``
            files): the coefficients belong to aligned crops, and the face is pasted back (step 3).
        feather: crop pixels over which the pasted face fades into the frame (landmarks only).
        texture: the texture generator (a module, or a checkpoint for :func:`~pyvision_fast.face3d.latents.
            load_texture_generator`): the texture edit of step 4.
        latents: (T, num_ws, w_dim) W+ latents of the frames (tensor or ``.npy``) instead of the inversion.
        invert_steps: Adam steps of the inversion's first chunk (later chunks: half, warm-started).
        codec_options: FFmpeg encoder options (``{"crf": "0"}`` for a lossless ``libx264``).
        progress: None: bars when stderr is a terminal.
    """
    from tqdm import tqdm

    from ..data.video import _av, probe_video
    from ..models.expression_editor import emotion_index
    from .align import paste_faces
    from .latents import invert_video, load_texture_generator, synthesize_textures

    if not 0.0 <= float(intensity) <= 1.0:
        raise ValueError(f"intensity must lie in [0, 1], got {intensity}")
    emotion_index(emotion, editor.emotions)
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise ValueError(f"feather must be an int >= 0, got {feather!r}")
    if latents is not None and texture is None:
        raise ValueError("latents are the texture generator's: give the generator (texture) too")
    if texture is not None and getattr(editor, "latent_net", None) is None:
        raise ValueError("the editor has no latent editor (latent_dim=0): train talking_face_edit with texture "
                         "latents, or leave out the texture generator")
    input, output = Path(input), Path(output)
    info = probe_video(input)
    T = info.num_frames
    if info.height % 2 or info.width % 2:
        raise ValueError(f"{input}: frame size {info.width}x{info.height} must be even for the MP4 output")
    seq = coeffs if isinstance(coeffs, Tensor) else load_coeff_sequence(coeffs)
    if seq.shape[0] != T:
        where = "the given coefficients" if isinstance(coeffs, Tensor) else str(coeffs)
        raise ValueError(f"{input} has {T} frames but {where} hold {seq.shape[0]} frames of coefficients")
    lms = None
    if landmarks is not None:
        lms = landmarks if isinstance(landmarks, Tensor) else load_landmark_file(landmarks)
        if lms.dim() != 3 or tuple(lms.shape[1:]) != (68, 2) or lms.shape[0] != T:
            where = "the given landmarks" if isinstance(landmarks, Tensor) else str(landmarks)
            raise ValueError(f"{input} has {T} frames but {where} have shape {tuple(lms.shape)} (want ({T}, 68, "
                             f"2))")
    dev = torch.device(device)
    if isinstance(bfm, nn.Module):
        face = bfm
    else:
        from ..models import create_model

        size = _parse_size(fit_size, (224, 224) if lms is not None else (info.height, info.width))
        face = create_model("bfm", basis_path=bfm, image_size=size)
    face = face.to(dev).eval()
    align = None if lms is None else frame_alignment(lms.to(dev), face, window)
    seq = seq.to(dev)
    edited = edit_coefficients(editor.to(dev), seq, emotion, intensity, window)
    show = sys.stderr.isatty() if progress is None else bool(progress)

    G, ws_edit = None, None
    if texture is not None:
        G = (texture if isinstance(texture, nn.Module) else load_texture_generator(texture)).to(dev).eval()
        if latents is None:
            with tqdm(total=T, desc="invert textures", unit="frame", disable=not show, file=sys.stderr) as bar:
                chunks = face_frame_chunks(input, seq, face, align, T, chunk, dev)
                ws = invert_video(G, face, chunks, steps=invert_steps, on_chunk=bar.update)
        else:
            ws = latents if isinstance(latents, Tensor) else _load_latent_file(latents)
            if tuple(ws.shape) != (T, G.num_ws, G.w_dim):
                where = "the given latents" if isinstance(latents, Tensor) else str(latents)
                raise ValueError(f"{where} have shape {tuple(ws.shape)}; the video and the generator need "
                                 f"({T}, {G.num_ws}, {G.w_dim})")
        if ws.shape[0] != T:
            raise ValueError(f"{input}: decoded {ws.shape[0]} frames, expected {T}")
        ws_edit = edit_latents(editor, ws.to(dev, G.mapping.w_avg.dtype), emotion, intensity, window)

    av = _av()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.partial{output.suffix or '.mp4'}")
    bar = tqdm(total=T, desc=f"edit-video {emotion} {float(intensity):.2f}", unit="frame", disable=not show,
               file=sys.stderr)
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
            for start, frames in _decode_chunks(input, T, chunk):
                frames = frames.to(dev)
                span = slice(start, start + len(frames))
                with torch.no_grad():
                    tex = None if G is None else synthesize_textures(G, ws_edit[span]).to(edited.dtype)
                    r = face.render(edited[span], texture=tex)
                    img, mask = r["image"].clamp(0, 1), r["mask"]
                    if align is not None:
                        comp = paste_faces(frames, img, mask, align[span], feather=feather)
                    else:
                        if tuple(img.shape[-2:]) != (info.height, info.width):
                            size = (info.height, info.width)
                            img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
                            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
                        comp = img * mask + frames * (1 - mask)
                comp = comp.mul(255).round().clamp(0, 255).byte()
                for array in comp.permute(0, 2, 3, 1).cpu().numpy():
                    for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array),
                                                                           format="rgb24")):
                        out.mux(packet)
                done += len(frames)
                bar.update(len(frames))
            for packet in stream.encode():
                out.mux(packet)
        if done != T:
            raise ValueError(f"{input}: decoded {done} frames, expected {T}")
        partial.replace(output)
    finally:
        bar.close()
        if partial.exists():
            partial.unlink()
    return {"output": str(output), "frames": done, "fps": info.fps, "height": info.height,
            "width": info.width, "aligned": align is not None, "texture": G is not None}
