"""MEAD (Wang et al., ECCV 2020: talking faces of 60 actors, 8 emotions x 3 intensities, 7 views) in its
released layout, with per-frame 3DMM coefficients and landmarks beside the videos, and the neutral/emotional
clip pairs the ``talking_face_edit`` recipe trains on (paper 4 of ``shared/papers.md``).

Layout of the dataset folder ``root`` (one folder per actor, as MEAD's archives unpack)::

    <actor>/video/<view>/<emotion>/level_<k>/<clip>.mp4       MEAD's videos (e.g. M003/.../level_3/001.mp4)
    <actor>/coeffs/<view>/<emotion>/level_<k>/<clip>.npy      (T, 257) per-frame 3DMM coefficients (ours)
    <actor>/landmarks/<view>/<emotion>/level_<k>/<clip>.npy   (T, 68, 2) per-frame iBUG-68 landmarks (ours)
    <actor>/latents/<view>/<emotion>/level_<k>/<clip>.npy     (T, L, D) per-frame texture W+ latents (ours,
                                                              optional: pyvision_fast.face3d.extract)

* ``<view>``: MEAD's camera names (``front``, ``down``, ``top``, ``left_30``, ``left_60``, ``right_30``,
  ``right_60``); ``<emotion>``: one of :data:`MEAD_EMOTIONS` (angry, contempt, disgusted, fear, happy,
  neutral, sad, surprised); ``<k>`` 1..3 (weak, medium, strong; neutral has ``level_1`` only); ``<clip>``: the
  sentence number (``001``...).
* Coefficients *(our layout; MEAD ships none)*: one ``.npy`` per clip, row t = frame t of the video (every
  decoded frame, no resampling), in Deep3DFaceRecon's 257 layout (``pyvision_fast.face3d.basis.COEFF_SLICES``:
  identity 80 | expression 64 | texture 80 | angles 3 | SH 27 | translation 3), as ``fit_3dmm`` or
  Deep3DFaceRecon produce them on the frames. Landmarks likewise: frame t's 68 (x, y) points in pixels of the
  video frame (0, 0 = top-left pixel's corner). Texture latents: frame t's StyleGAN W+ latents (L = num_ws
  of the texture generator, D = w_dim; float16 or float32) of the face texture unwrapped from the frame, as
  ``pyvision_fast.face3d.extract.extract_mead_latents`` writes them.
* Any other folder in ``root`` (no ``video``/``coeffs`` child) is not an actor and is skipped.

Errors, raised when a reader is built (before training): an emotion folder not in :data:`MEAD_EMOTIONS`, a
level folder not ``level_1..3`` (or a neutral level other than 1) is a ``MEADFormatError`` (``ValueError``)
naming the folder; a clip without one of its required companion files is ``FileNotFoundError`` naming the
missing file; a coefficient file that is not a (T >= 1, 257) array, or a landmark file that is not (T, 68, 2)
with the coefficients' T, is a ``MEADFormatError`` naming the file. Values are checked (finite) when a file is
loaded.

Pairs *(ours)*: MEAD records the same sentences in every emotion and level, and the clip name is the sentence
number, so the neutral clip ``<actor>/<view>/neutral/level_1/<clip>`` is paired with every emotional clip of
the same actor, view and clip name; the emotional clip's expression coefficients, resampled linearly in time
to the neutral clip's length (:func:`resample_sequence`), are the editing target at intensity ``k / 3``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..models.expression_editor import MEAD_EMOTIONS

__all__ = ["MEAD_EMOTIONS", "MEAD_VIEWS", "N_COEFFS", "EXP_SLICE", "MEADFormatError", "MEADClip", "scan_mead",
           "mead_pairs", "split_actors", "coeff_frames", "load_coeffs", "load_landmarks", "load_latents",
           "latent_shape", "resample_sequence",
           "MEADEditPairs", "FILE_KINDS", "window_starts"]

PathLike = Union[str, os.PathLike]

MEAD_VIEWS = ("front", "down", "top", "left_30", "left_60", "right_30", "right_60")
N_COEFFS = 257
EXP_SLICE = slice(80, 144)   # pyvision_fast.face3d.basis.COEFF_SLICES["exp"]
FILE_KINDS = {"video": ".mp4", "coeffs": ".npy", "landmarks": ".npy", "latents": ".npy"}
_LEVEL = re.compile(r"^level_(\d+)$")


class MEADFormatError(ValueError):
    """A folder or file that does not follow the layout (module docstring); the message names it."""


@dataclass(frozen=True)
class MEADClip:
    """One clip: where it sits in the layout and its files (which may not all exist)."""

    root: Path
    actor: str
    view: str
    emotion: str
    level: int
    clip: str

    def path(self, kind: str) -> Path:
        """The clip's file of ``kind`` (``video``, ``coeffs``, ``landmarks`` or ``latents``)."""
        if kind not in FILE_KINDS:
            raise ValueError(f"MEAD file kind must be one of {tuple(FILE_KINDS)}, got {kind!r}")
        return (self.root / self.actor / kind / self.view / self.emotion / f"level_{self.level}"
                / f"{self.clip}{FILE_KINDS[kind]}")

    @property
    def video(self) -> Path:
        return self.path("video")

    @property
    def coeffs(self) -> Path:
        return self.path("coeffs")

    @property
    def landmarks(self) -> Path:
        return self.path("landmarks")

    @property
    def latents(self) -> Path:
        return self.path("latents")

    @property
    def label(self) -> int:
        return MEAD_EMOTIONS.index(self.emotion)

    @property
    def intensity(self) -> float:
        """``level / 3`` for an emotional clip, 0 for neutral."""
        return 0.0 if self.emotion == "neutral" else self.level / 3.0

    def __str__(self) -> str:
        return f"{self.actor}/{self.view}/{self.emotion}/level_{self.level}/{self.clip}"


def _actors(root: Path, actors: Optional[Iterable[str]]) -> list[str]:
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / k).is_dir() for k in FILE_KINDS))
    if actors is None:
        return found
    actors = list(actors)
    missing = [a for a in actors if a not in found]
    if missing:
        raise FileNotFoundError(f"MEAD: actor folder {str(root / missing[0])!r} not found (actors in {root}: "
                                f"{', '.join(found) or 'none'})")
    return actors


def _level(folder: Path, emotion: str) -> int:
    m = _LEVEL.match(folder.name)
    if not m or not 1 <= int(m.group(1)) <= 3:
        raise MEADFormatError(f"{folder}: expected a level folder level_1, level_2 or level_3")
    level = int(m.group(1))
    if emotion == "neutral" and level != 1:
        raise MEADFormatError(f"{folder}: neutral clips have level_1 only in MEAD")
    return level


def coeff_frames(path: PathLike) -> int:
    """The frame count T of a coefficient file, read from its header only; MEADFormatError unless it is a
    (T >= 1, 257) float array."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MEADFormatError(f"{path}: not a readable .npy coefficient file ({exc})") from exc
    if arr.ndim != 2 or arr.shape[1] != N_COEFFS or arr.shape[0] < 1 or arr.dtype.kind != "f":
        raise MEADFormatError(f"{path}: coefficients must be a (T, {N_COEFFS}) float array with T >= 1, got "
                              f"shape {arr.shape} {arr.dtype}")
    return int(arr.shape[0])


def _landmark_frames(path: Path) -> int:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MEADFormatError(f"{path}: not a readable .npy landmark file ({exc})") from exc
    if arr.ndim != 3 or arr.shape[1:] != (68, 2) or arr.dtype.kind not in "fiu":
        raise MEADFormatError(f"{path}: landmarks must be a (T, 68, 2) numeric array, got shape {arr.shape} "
                              f"{arr.dtype}")
    return int(arr.shape[0])


def latent_shape(path: PathLike) -> tuple[int, int, int]:
    """(T, L, D) of a texture-latent file, read from its header only; MEADFormatError unless it is a (T >= 1,
    L >= 1, D >= 1) float array."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MEADFormatError(f"{path}: not a readable .npy latent file ({exc})") from exc
    if arr.ndim != 3 or min(arr.shape) < 1 or arr.dtype.kind != "f":
        raise MEADFormatError(f"{path}: texture latents must be a (T, num_ws, w_dim) float array, got shape "
                              f"{arr.shape} {arr.dtype}")
    return tuple(int(v) for v in arr.shape)


def load_latents(path: PathLike) -> Tensor:
    """A clip's texture latents as a (T, L, D) float32 tensor; MEADFormatError naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MEAD latent file not found: {path}")
    latent_shape(path)
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if not np.isfinite(arr).all():
        raise MEADFormatError(f"{path}: non-finite latent at frame {np.argwhere(~np.isfinite(arr))[0][0]}")
    return torch.from_numpy(arr)


def load_coeffs(path: PathLike) -> Tensor:
    """A clip's coefficients as a (T, 257) float32 tensor; MEADFormatError naming the file when it is not a
    (T, 257) array of finite floats."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MEAD coefficient file not found: {path}")
    coeff_frames(path)
    arr = np.load(path, allow_pickle=False)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise MEADFormatError(f"{path}: non-finite coefficient at frame {bad[0]}, index {bad[1]}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def load_landmarks(path: PathLike) -> Tensor:
    """A clip's landmarks as a (T, 68, 2) float32 tensor (pixels); MEADFormatError naming a bad file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MEAD landmark file not found: {path}")
    _landmark_frames(path)
    arr = np.load(path, allow_pickle=False).astype(np.float32)
    if not np.isfinite(arr).all():
        raise MEADFormatError(f"{path}: non-finite landmark at frame {np.argwhere(~np.isfinite(arr))[0][0]}")
    return torch.from_numpy(arr)


def scan_mead(root: PathLike, views: Sequence[str] = ("front",), actors: Optional[Iterable[str]] = None,
              emotions: Sequence[str] = MEAD_EMOTIONS, source: str = "coeffs",
              require: Sequence[str] = ("coeffs",)) -> list[MEADClip]:
    """The clips of ``actors`` (default: every actor folder) and ``views`` found in the ``source`` tree
    (``coeffs``, ``video``, ``landmarks`` or ``latents``), restricted to ``emotions``, sorted by (actor, view,
    emotion, level, clip). Each clip's ``require``d files must exist; coefficient files are checked to be (T,
    257), landmark files (T, 68, 2) and latent files (T, L, D) with the same T, the latents of every clip of
    the same (L, D) (headers only). Errors: module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MEAD folder not found: {root}")
    if source not in FILE_KINDS:
        raise ValueError(f"scan_mead: source must be one of {tuple(FILE_KINDS)}, got {source!r}")
    for kind in require:
        if kind not in FILE_KINDS:
            raise ValueError(f"scan_mead: require holds {kind!r}; kinds are {tuple(FILE_KINDS)}")
    bad = [e for e in emotions if e not in MEAD_EMOTIONS]
    if bad:
        raise ValueError(f"scan_mead: unknown emotion {bad[0]!r}; MEAD's are {', '.join(MEAD_EMOTIONS)}")
    clips = []
    for actor in _actors(root, actors):
        for view in views:
            view_dir = root / actor / source / view
            if not view_dir.is_dir():
                continue
            for emo_dir in sorted(p for p in view_dir.iterdir() if p.is_dir()):
                if emo_dir.name not in MEAD_EMOTIONS:
                    raise MEADFormatError(f"{emo_dir}: unknown emotion folder; MEAD's are "
                                          f"{', '.join(MEAD_EMOTIONS)}")
                if emo_dir.name not in emotions:
                    continue
                for level_dir in sorted(p for p in emo_dir.iterdir() if p.is_dir()):
                    level = _level(level_dir, emo_dir.name)
                    for f in sorted(level_dir.glob(f"*{FILE_KINDS[source]}")):
                        clips.append(MEADClip(root, actor, view, emo_dir.name, level, f.stem))
    if not clips:
        raise FileNotFoundError(f"MEAD: no clip under {root}/<actor>/{source}/<view>/<emotion>/level_<k>/ "
                                f"for views {list(views)} (see pyvision_fast.data.mead for the layout)")
    for clip in clips:
        for kind in require:
            if not clip.path(kind).is_file():
                raise FileNotFoundError(f"MEAD clip {clip}: {kind} file {clip.path(kind)} does not exist")
        if "coeffs" in require:
            T = coeff_frames(clip.coeffs)
            if "landmarks" in require and _landmark_frames(clip.landmarks) != T:
                raise MEADFormatError(f"{clip.landmarks}: {_landmark_frames(clip.landmarks)} frames of "
                                      f"landmarks for the {T} frames of coefficients in {clip.coeffs}")
            if "latents" in require and latent_shape(clip.latents)[0] != T:
                raise MEADFormatError(f"{clip.latents}: {latent_shape(clip.latents)[0]} frames of latents for "
                                      f"the {T} frames of coefficients in {clip.coeffs}")
    if "latents" in require:
        shapes = {latent_shape(c.latents)[1:]: c for c in clips}
        if len(shapes) > 1:
            (a, ca), (b, cb) = list(shapes.items())[:2]
            raise MEADFormatError(f"{cb.latents}: latents of shape (T, {b[0]}, {b[1]}) beside (T, {a[0]}, "
                                  f"{a[1]}) in {ca.latents}: one texture generator must make them all")
    return clips


def split_actors(actors: Sequence[str], val_actors: Optional[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(train actors, validation actors): ``val_actors`` when given (each must be in ``actors``), else the
    last actor in sorted order *(ours)*; every other actor trains."""
    actors = sorted(actors)
    if val_actors is None:
        val = actors[-1:]
    else:
        val = list(val_actors)
        missing = [a for a in val if a not in actors]
        if missing:
            raise ValueError(f"MEAD: validation actor {missing[0]!r} not found; actors: {', '.join(actors)}")
    return [a for a in actors if a not in val], val


def mead_pairs(clips: Sequence[MEADClip]) -> list[tuple[MEADClip, MEADClip]]:
    """(neutral clip, emotional clip) pairs of the same actor, view and clip name (module docstring), in the
    order of ``clips``' emotional clips; emotional clips without a neutral twin are left out."""
    neutral = {(c.actor, c.view, c.clip): c for c in clips if c.emotion == "neutral"}
    return [(neutral[(c.actor, c.view, c.clip)], c) for c in clips
            if c.emotion != "neutral" and (c.actor, c.view, c.clip) in neutral]


def resample_sequence(x: Tensor, length: int) -> Tensor:
    """Linear resampling of a (T, D) sequence to (length, D): frame j takes time ``j (T - 1) / (length - 1)``
    of the input (first and last frames kept; a 1-frame input is repeated)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"resample_sequence: argument 'x' must be a floating (T >= 1, D) tensor, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"resample_sequence: argument 'length' must be an int >= 1, got {length!r}")
    if x.shape[0] == length:
        return x
    if x.shape[0] == 1 or length == 1:
        return x[:1].expand(length, -1).clone() if x.shape[0] == 1 else x[:1].clone()
    return F.interpolate(x.t()[None], size=length, mode="linear", align_corners=True)[0].t().contiguous()


def window_starts(num_frames: int, seq_len: int) -> list[int]:
    """Starts of consecutive windows of ``seq_len`` frames; a last, shorter window moves back to end at the
    last frame; none when the clip is shorter than ``seq_len``."""
    if num_frames < seq_len:
        return []
    starts = list(range(0, num_frames - seq_len + 1, seq_len))
    if starts[-1] + seq_len < num_frames:
        starts.append(num_frames - seq_len)
    return starts


class MEADEditPairs(Dataset):
    """Training / evaluation items of the expression editor: windows of ``seq_len`` frames of each
    (neutral, emotional) pair of :func:`mead_pairs`.

    Item: ``(neutral (seq_len, 257) float32, target_exp (seq_len, 64) float32, emotion () int64, intensity ()
    float32, meta)``: the neutral clip's coefficients, the emotional clip's expression coefficients resampled
    to the neutral clip's length (same window), the emotional clip's label in :data:`MEAD_EMOTIONS` and
    ``level / 3``; ``meta = {"actor", "view", "clip", "emotion", "level", "start"}``. With ``latents=True``
    (every clip needs its latent file) two more: the neutral clip's texture latents (seq_len, L, D) and the
    emotional clip's, resampled alike (seq_len, L, D), float32; ``latent_shape`` is (L, D). Clips shorter than
    ``seq_len`` give no window (``skipped`` counts those pairs); no window at all is a ValueError.
    """

    def __init__(self, root: PathLike, actors: Optional[Iterable[str]] = None,
                 views: Sequence[str] = ("front",), emotions: Sequence[str] = MEAD_EMOTIONS,
                 seq_len: int = 32, levels: Sequence[int] = (1, 2, 3),
                 require_landmarks: bool = False, latents: bool = False) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"MEADEditPairs: argument 'seq_len' must be an int >= 1, got {seq_len!r}")
        wanted = tuple(dict.fromkeys(("neutral", *emotions)))
        require = ("coeffs", "landmarks") if require_landmarks else ("coeffs",)
        if latents:
            require += ("latents",)
        clips = scan_mead(root, views=views, actors=actors, emotions=wanted, require=require)
        self.latents = bool(latents)
        self.latent_shape = latent_shape(clips[0].latents)[1:] if latents else None
        self.pairs = [(n, e) for n, e in mead_pairs(clips) if e.level in levels]
        if not self.pairs:
            raise ValueError(f"MEAD {root}: no (neutral, emotional) clip pair of the same actor, view and "
                             f"clip name for actors {sorted({c.actor for c in clips})}")
        self.seq_len = seq_len
        self.windows: list[tuple[int, int]] = []
        self.skipped = 0
        for i, (neutral, _) in enumerate(self.pairs):
            starts = window_starts(coeff_frames(neutral.coeffs), seq_len)
            self.skipped += not starts
            self.windows += [(i, s) for s in starts]
        if not self.windows:
            raise ValueError(f"MEAD {root}: every neutral clip is shorter than seq_len={seq_len} frames")

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        p, start = self.windows[i]
        neutral, emotional = self.pairs[p]
        source = load_coeffs(neutral.coeffs)
        target = resample_sequence(load_coeffs(emotional.coeffs)[:, EXP_SLICE], source.shape[0])
        stop = start + self.seq_len
        meta = {"actor": emotional.actor, "view": emotional.view, "clip": emotional.clip,
                "emotion": emotional.emotion, "level": emotional.level, "start": start}
        item = (source[start:stop], target[start:stop], torch.tensor(emotional.label),
                torch.tensor(emotional.intensity, dtype=torch.float32), meta)
        if not self.latents:
            return item
        src_lat = load_latents(neutral.latents)
        T, L, D = src_lat.shape
        tgt_lat = resample_sequence(load_latents(emotional.latents).flatten(1), T).view(T, L, D)
        return item + (src_lat[start:stop], tgt_lat[start:stop])
