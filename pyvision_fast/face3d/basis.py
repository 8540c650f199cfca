"""3D morphable face model basis: the coefficient layout, the ``FaceBasis`` container and the reader / writer
of the Basel Face Model front model ``.mat`` file in the layout of Deep3DFaceRecon's ``BFM_model_front.mat``.

Coefficient layout (Deep3DFaceRecon, 257 values per face): identity 80 | expression 64 | texture 80 |
rotation angles 3 (x, y, z, radians) | SH lighting 27 (9 bands x RGB, channel-major: R's 9, G's 9, B's 9) |
translation 3. ``COEFF_SLICES`` names the slices; ``split_coeffs`` cuts a (B, 257) tensor into them.

File layout (keys of the ``.mat``; scipy returns vectors as (1, n) or (n, 1), both are accepted):

============  ===========  ===============================================================================
key           shape        meaning
============  ===========  ===============================================================================
meanshape     3N           mean shape, vertex-major (x0, y0, z0, x1, ...)
idBase        (3N, 80)     identity basis (rows as meanshape)
exBase        (3N, 64)     expression basis
meantex       3N           mean albedo, 0..255
texBase       (3N, 80)     albedo basis, 0..255 units
tri           (F, 3)       triangles, 1-based vertex indices
point_buf     (N, 8)       for each vertex the (1-based) triangles around it; F + 1 or 0 pads a short row
keypoints     68           the vertices of the 68 iBUG landmarks, 1-based
uv            (N, 2)       optional *(ours, not in Deep3DFaceRecon's file)*: texture coordinates in [0, 1]
============  ===========  ===============================================================================

``FaceBasis`` holds the same data as float32 / int64 tensors with 0-based indices, the bases per vertex
(N, 3, K), and the albedo divided by 255 (albedo in [0, 1]; the coefficients mean the same as in
Deep3DFaceRecon, whose model divides the 0..255 albedo by 255 after the linear combination).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["COEFF_SLICES", "N_COEFFS", "N_ID", "N_EXP", "N_TEX", "FaceBasis", "load_bfm", "save_bfm_mat",
           "split_coeffs", "vertex_face_table", "mouth_vertex_indices", "BFM_SOURCE"]

N_ID, N_EXP, N_TEX = 80, 64, 80
COEFF_SLICES: dict[str, slice] = {
    "id": slice(0, 80),
    "exp": slice(80, 144),
    "tex": slice(144, 224),
    "angle": slice(224, 227),
    "gamma": slice(227, 254),
    "trans": slice(254, 257),
}
N_COEFFS = 257

BFM_SOURCE = ("the Basel Face Model front model in Deep3DFaceRecon's layout (BFM_model_front.mat: "
              "Deep3DFaceRecon's BFM preparation, util/load_mats.py transferBFM09, builds it from the Basel "
              "Face Model 2009 01_MorphableModel.mat (faces.dmi.unibas.ch/bfm, registration required) and "
              "the expression basis Exp_Pca.bin (from Guo et al.'s 3DFace / CNN-based 3D face reconstruction "
              "release))")


def split_coeffs(coeffs: Tensor) -> dict[str, Tensor]:
    """(B, 257) coefficients -> dict of views ``id`` (B, 80), ``exp`` (B, 64), ``tex`` (B, 80), ``angle``
    (B, 3), ``gamma`` (B, 27), ``trans`` (B, 3)."""
    if not isinstance(coeffs, Tensor):
        raise TypeError(f"split_coeffs: argument 'coeffs' must be a tensor, got {type(coeffs).__name__}")
    if coeffs.dim() != 2 or coeffs.shape[1] != N_COEFFS:
        raise ValueError(f"split_coeffs: argument 'coeffs' must have shape (B, {N_COEFFS}), "
                         f"got {tuple(coeffs.shape)}")
    return {k: coeffs[:, s] for k, s in COEFF_SLICES.items()}


@dataclasses.dataclass
class FaceBasis:
    """A linear 3D face model (float32 tensors, 0-based int64 indices).

    * ``mean_shape`` (N, 3), ``id_base`` (N, 3, 80), ``exp_base`` (N, 3, 64): shape = mean + id_base @ id +
      exp_base @ exp (model units: those of the file; Deep3DFaceRecon's BFM is in decimetres-ish units, a face
      about 2 wide, looked at from 10 units away).
    * ``mean_tex`` (N, 3), ``tex_base`` (N, 3, 80): albedo = mean_tex + tex_base @ tex, in [0, 1] units.
    * ``faces`` (F, 3) int64 triangles; ``landmark_idx`` (68,) int64 vertices of the iBUG 68 landmarks;
      ``point_buf`` (N, P) int64 triangles around each vertex, padded with F (the index of the zero normal
      appended by vertex-normal computation).
    * ``uv`` (N, 2) optional texture coordinates in [0, 1], ``ops.texture_sample``'s convention: u along the
      texture's width (left to right), v along its rows (v = 0 the top row of the texture image).
    """

    mean_shape: Tensor
    id_base: Tensor
    exp_base: Tensor
    mean_tex: Tensor
    tex_base: Tensor
    faces: Tensor
    landmark_idx: Tensor
    point_buf: Tensor
    uv: Optional[Tensor] = None

    def __post_init__(self):
        self.validate()

    @property
    def n_verts(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def validate(self) -> None:
        """Checks dtypes, shapes and index ranges; ValueError / TypeError naming the field."""
        N = self.mean_shape.shape[0] if isinstance(self.mean_shape, Tensor) else None
        expect = {"mean_shape": (N, 3), "id_base": (N, 3, N_ID), "exp_base": (N, 3, N_EXP),
                  "mean_tex": (N, 3), "tex_base": (N, 3, N_TEX)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"FaceBasis: field '{name}' must be a floating tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
            if tuple(t.shape) != shape:
                raise ValueError(f"FaceBasis: field '{name}' must have shape {shape}, got {tuple(t.shape)}")
        for name in ("faces", "landmark_idx", "point_buf"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dtype != torch.int64:
                raise TypeError(f"FaceBasis: field '{name}' must be an int64 tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
        F = self.faces.shape[0] if self.faces.dim() == 2 else 0
        if self.faces.dim() != 2 or self.faces.shape[1] != 3 or F == 0:
            raise ValueError(f"FaceBasis: field 'faces' must have shape (F, 3), F >= 1, got "
                             f"{tuple(self.faces.shape)}")
        if int(self.faces.min()) < 0 or int(self.faces.max()) >= N:
            raise ValueError(f"FaceBasis: field 'faces' has vertex indices outside [0, {N})")
        if tuple(self.landmark_idx.shape) != (68,):
            raise ValueError(f"FaceBasis: field 'landmark_idx' must have shape (68,), got "
                             f"{tuple(self.landmark_idx.shape)}")
        if int(self.landmark_idx.min()) < 0 or int(self.landmark_idx.max()) >= N:
            raise ValueError(f"FaceBasis: field 'landmark_idx' has vertex indices outside [0, {N})")
        if self.point_buf.dim() != 2 or self.point_buf.shape[0] != N:
            raise ValueError(f"FaceBasis: field 'point_buf' must have shape ({N}, P), got "
                             f"{tuple(self.point_buf.shape)}")
        if int(self.point_buf.min()) < 0 or int(self.point_buf.max()) > F:
            raise ValueError(f"FaceBasis: field 'point_buf' has triangle indices outside [0, {F}] "
                             f"({F} pads)")
        if self.uv is not None:
            if not isinstance(self.uv, Tensor) or not self.uv.is_floating_point():
                raise TypeError("FaceBasis: field 'uv' must be a floating tensor or None")
            if tuple(self.uv.shape) != (N, 2):
                raise ValueError(f"FaceBasis: field 'uv' must have shape ({N}, 2), got "
                                 f"{tuple(self.uv.shape)}")

    def to(self, *args, **kwargs) -> "FaceBasis":
        """A copy with every floating field moved / cast like ``Tensor.to`` (index fields keep int64)."""
        out = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif t.is_floating_point():
                out[f.name] = t.to(*args, **kwargs)
            else:
                dev = [a for a in args if isinstance(a, (torch.device, str))]
                device = kwargs.get("device", dev[0] if dev else t.device)
                out[f.name] = t.to(device=device)
        return FaceBasis(**out)


def vertex_face_table(faces: Tensor, n_verts: int, width: Optional[int] = None) -> Tensor:
    """(N, P) int64: for each vertex the triangles that use it (in increasing order), padded with F = number
    of triangles (Deep3DFaceRecon's ``point_buf`` after its 1-based -> 0-based shift). ``width`` defaults to
    the largest vertex valence; a vertex with more triangles than ``width`` keeps its first ``width``."""
    faces = faces.long()
    F = faces.shape[0]
    vert = faces.reshape(-1)
    tri = torch.arange(F).repeat_interleave(3)
    order = torch.argsort(vert * (F + 1) + tri)
    vert, tri = vert[order], tri[order]
    counts = torch.bincount(vert, minlength=n_verts)
    P = int(counts.max()) if width is None else int(width)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(vert.numel()) - start[vert]
    keep = rank < P
    table = torch.full((n_verts, max(P, 1)), F, dtype=torch.int64)
    table[vert[keep], rank[keep]] = tri[keep]
    return table


def mouth_vertex_indices(basis: FaceBasis, radius: float = 0.25) -> Tensor:
    """Vertices of the mouth region (int64, sorted): every vertex of the mean shape whose 3D distance to one
    of the mouth landmarks' vertices (iBUG 48-67: outer and inner lips) is at most ``radius`` times the mouth
    width (distance between the mouth corners, landmarks 48 and 54) *(ours; the paper only says the mouth
    loss compares the mouth region)*. Scale-free: the same rule selects the lips and a band around them on
    the synthetic model and on the BFM."""
    if radius <= 0:
        raise ValueError(f"mouth_vertex_indices: argument 'radius' must be positive, got {radius}")
    v = basis.mean_shape.double()
    lm = v[basis.landmark_idx[48:68]]
    width = (lm[0] - lm[6]).norm()
    d = torch.cdist(v, lm).min(1).values
    return torch.nonzero(d <= radius * width).squeeze(1)


# ---------------------------------------------------------------------------------------------------------
# .mat reading and writing


def _vector(mat: dict, key: str, path: Path, length: Optional[int] = None) -> np.ndarray:
    a = np.asarray(mat[key])
    if a.ndim == 2 and 1 in a.shape:
        a = a.reshape(-1)
    if a.ndim != 1 or (length is not None and a.shape[0] != length):
        want = f"{length} values" if length is not None else "a vector"
        raise ValueError(f"load_bfm: key '{key}' of {path} must be {want} (1-row or 1-column accepted), got "
                         f"shape {np.asarray(mat[key]).shape}")
    return a


def _matrix(mat: dict, key: str, path: Path, shape: tuple) -> np.ndarray:
    a = np.asarray(mat[key])
    if a.ndim != 2 or any(s is not None and a.shape[i] != s for i, s in enumerate(shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"load_bfm: key '{key}' of {path} must have shape {want}, got {a.shape}")
    return a


def load_bfm(path: Union[str, Path], recenter: bool = True) -> FaceBasis:
    """Reads a BFM front model ``.mat`` (Deep3DFaceRecon's ``BFM_model_front.mat`` layout, see the module
    docstring) with ``scipy.io.loadmat``. ``recenter`` (default True, as Deep3DFaceRecon's
    ``ParametricFaceModel(recenter=True)``) subtracts the mean vertex of the mean shape so that the model
    rotates about the face's centre. Raises FileNotFoundError naming the file and where it comes from;
    ValueError naming a missing or mis-shaped key."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_bfm: basis file {str(path)!r} not found; it is {BFM_SOURCE}")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for a corrupt or non-.mat file
        raise ValueError(f"load_bfm: {path} is not a readable .mat file ({type(e).__name__}: {e})") from e
    keys = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ValueError(f"load_bfm: {path} lacks the key(s) {missing} of the BFM front model layout")
    mean_shape = _vector(mat, "meanshape", path)
    if mean_shape.shape[0] % 3:
        raise ValueError(f"load_bfm: key 'meanshape' of {path} must hold 3N values, got "
                         f"{mean_shape.shape[0]}")
    n3 = mean_shape.shape[0]
    N = n3 // 3
    id_base = _matrix(mat, "idBase", path, (n3, N_ID))
    exp_base = _matrix(mat, "exBase", path, (n3, N_EXP))
    tex_base = _matrix(mat, "texBase", path, (n3, N_TEX))
    mean_tex = _vector(mat, "meantex", path, n3)
    tri = _matrix(mat, "tri", path, (None, 3))
    point_buf = _matrix(mat, "point_buf", path, (N, None))
    keypoints = _vector(mat, "keypoints", path, 68)
    F = tri.shape[0]
    ranges = (("tri", tri, 1, N), ("keypoints", keypoints, 1, N), ("point_buf", point_buf, 0, F + 1))
    for key, arr, lo, hi in ranges:
        if arr.size and (arr.min() < lo or arr.max() > hi):
            raise ValueError(f"load_bfm: key '{key}' of {path} must hold 1-based indices in [{lo}, {hi}], "
                             f"got [{arr.min()}, {arr.max()}]")
    f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    i64 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    shape = f32(mean_shape).view(N, 3)
    if recenter:
        shape = shape - shape.mean(0, keepdim=True)
    # a short row is padded with F + 1 or with 0 (both reach the zero normal in Deep3DFaceRecon's indexing:
    # index F, or -1 = the last row, of the normals with a zero row appended): both become F here
    pbuf = i64(point_buf) - 1
    pbuf[pbuf < 0] = F
    uv = None
    if "uv" in mat:
        uv = f32(_matrix(mat, "uv", path, (N, 2)))
    return FaceBasis(
        mean_shape=shape, id_base=f32(id_base).view(N, 3, N_ID), exp_base=f32(exp_base).view(N, 3, N_EXP),
        mean_tex=f32(mean_tex).view(N, 3) / 255.0, tex_base=f32(tex_base).view(N, 3, N_TEX) / 255.0,
        faces=i64(tri) - 1, landmark_idx=i64(keypoints) - 1, point_buf=pbuf, uv=uv)


def save_bfm_mat(path: Union[str, Path], basis: FaceBasis) -> None:
    """Writes ``basis`` in the layout ``load_bfm`` reads (1-based indices, albedo x 255, row vectors as
    scipy's ``savemat`` writes 1-D arrays); ``uv`` is written when present."""
    import scipy.io

    if not isinstance(basis, FaceBasis):
        raise TypeError(f"save_bfm_mat: argument 'basis' must be a FaceBasis, got {type(basis).__name__}")
    N = basis.n_verts
    np32 = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    out = {
        "meanshape": np32(basis.mean_shape).reshape(1, 3 * N),
        "idBase": np32(basis.id_base).reshape(3 * N, N_ID),
        "exBase": np32(basis.exp_base).reshape(3 * N, N_EXP),
        "meantex": np32(basis.mean_tex * 255.0).reshape(1, 3 * N),
        "texBase": np32(basis.tex_base * 255.0).reshape(3 * N, N_TEX),
        "tri": basis.faces.cpu().numpy().astype(np.float64) + 1,
        "point_buf": basis.point_buf.cpu().numpy().astype(np.float64) + 1,
        "keypoints": basis.landmark_idx.cpu().numpy().astype(np.float64).reshape(1, 68) + 1,
    }
    if basis.uv is not None:
        out["uv"] = np32(basis.uv)
    scipy.io.savemat(str(path), out)
