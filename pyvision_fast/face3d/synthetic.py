"""A small synthetic 3D morphable face (for tests and examples, no data needed) and a talking sequence.

``synthetic_face_basis(n_rows, seed)`` builds a ``FaceBasis`` in the BFM front model's layout and units (a
face about 1.6 wide and 2 high, its mean vertex at the origin, looking toward +z, seen from the
Deep3DFaceRecon camera 10 units away): an ellipsoid cap (n_rows x n_rows grid mapped onto a disc) with a nose,
brow ridge, eye sockets and lips, 68 landmark vertices at iBUG positions, an albedo with darker lips, eyes,
brows and mouth interior, and bases

* expression (64): 0 jaw / mouth opening (lower lip and jaw down, stretching the mouth interior band),
  1 smile (mouth corners out and up), 2 pucker (lips forward and together), 3 brow raise, 4 eye closing,
  5..63 random smooth fields (sums of Gaussian bumps) of decaying size;
* identity (80): 0 jaw width, 1 nose tip height, 2 nose depth, 3..79 random smooth fields of decaying size;
* texture (80): random smooth colour fields of decaying size.

A coefficient of 1 is a full-strength deformation (expression 0 opens the lips by about 0.14 units, ~14 px at
224x224); ``synthetic_talking_sequence`` draws plausible coefficient sequences for it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .basis import COEFF_SLICES, N_COEFFS, N_EXP, N_ID, N_TEX, FaceBasis, mouth_vertex_indices, \
    vertex_face_table

__all__ = ["synthetic_face_basis", "synthetic_talking_sequence", "mouth_vertex_indices", "landmark_template"]

_A, _B, _C = 0.8, 1.05, 0.55  # ellipsoid semi-axes (x, y, z)
_MOUTH_Y = -0.45


def landmark_template() -> Tensor:
    """(68, 2) float64 (x, y) positions (model units, y up, face centred at 0) of the iBUG 68 landmarks on the
    synthetic face *(ours: drawn from ellipse arcs, not a measured template)*; index 0..16 jaw (image left to
    right), 17..26 brows, 27..35 nose, 36..47 eyes, 48..59 outer lips, 60..67 inner lips."""
    pts = []
    for k in range(17):  # jaw: lower half of an ellipse, from the left temple through the chin
        th = math.pi + k * math.pi / 16
        pts.append((0.66 * math.cos(th), 0.2 - 1.05 * abs(math.sin(th))))
    for side in (-1, 1):  # brows, each from image-left to image-right
        xs = [-0.55, -0.45, -0.34, -0.22, -0.1] if side < 0 else [0.1, 0.22, 0.34, 0.45, 0.55]
        for x in xs:
            pts.append((x, 0.44 + 0.06 * math.cos((abs(x) - 0.32) / 0.25 * math.pi / 2)))
    for k in range(4):  # nose bridge, top to tip
        pts.append((0.0, 0.3 - k * 0.12))
    for k in range(5):  # nostrils
        x = -0.14 + k * 0.07
        pts.append((x, -0.2 - 0.03 * math.cos(x / 0.14 * math.pi / 2)))
    for cx in (-0.3, 0.3):  # eyes: outer corner (left eye) / inner corner (right eye) first, clockwise
        ring = [(-0.14, 0.0), (-0.05, 0.05), (0.05, 0.05), (0.14, 0.0), (0.05, -0.05), (-0.05, -0.05)]
        pts.extend((cx + dx, 0.25 + dy) for dx, dy in ring)
    outer = [(-0.28, 0.0), (-0.18, 0.08), (-0.08, 0.11), (0.0, 0.1), (0.08, 0.11), (0.18, 0.08),
             (0.28, 0.0), (0.18, -0.1), (0.08, -0.14), (0.0, -0.15), (-0.08, -0.14), (-0.18, -0.1)]
    inner = [(-0.2, 0.0), (-0.09, 0.05), (0.0, 0.05), (0.09, 0.05), (0.2, 0.0), (0.09, -0.05), (0.0, -0.05),
             (-0.09, -0.05)]
    pts.extend((x, _MOUTH_Y + y) for x, y in outer + inner)
    return torch.tensor(pts, dtype=torch.float64)


def _gauss(xy: Tensor, cx: float, cy: float, sx: float, sy: float) -> Tensor:
    return torch.exp(-0.5 * (((xy[:, 0] - cx) / sx) ** 2 + ((xy[:, 1] - cy) / sy) ** 2))


def _smooth_fields(xy: Tensor, n: int, amp: float, gen: torch.Generator, channels: int = 3) -> Tensor:
    """(N, channels, n) random smooth fields: field k is a sum of 4 Gaussian bumps (random centres inside the
    face, widths 0.2..0.5) with random directions, scaled to max norm ``amp / (1 + k / 8)``."""
    N = xy.shape[0]
    out = torch.zeros(N, channels, n, dtype=torch.float64)
    for k in range(n):
        f = torch.zeros(N, channels, dtype=torch.float64)
        for _ in range(4):
            c = (torch.rand(2, generator=gen, dtype=torch.float64) * 2 - 1) * torch.tensor([0.6, 0.8])
            s = 0.2 + 0.3 * torch.rand(2, generator=gen, dtype=torch.float64)
            d = torch.randn(channels, generator=gen, dtype=torch.float64)
            f += _gauss(xy, float(c[0]), float(c[1]), float(s[0]), float(s[1]))[:, None] * d
        out[:, :, k] = f * (amp / (1 + k / 8) / f.norm(dim=1).max().clamp_min(1e-12))
    return out


def _assign_landmarks(xy: Tensor, template: Tensor) -> Tensor:
    """Nearest distinct vertex (in x, y) for each template point, greedily in order."""
    d = torch.cdist(template, xy)
    taken = torch.zeros(xy.shape[0], dtype=torch.bool)
    idx = []
    for k in range(template.shape[0]):
        dk = d[k].masked_fill(taken, float("inf"))
        j = int(dk.argmin())
        taken[j] = True
        idx.append(j)
    return torch.tensor(idx, dtype=torch.int64)


def synthetic_face_basis(n_rows: int = 32, seed: int = 0) -> FaceBasis:
    """A random synthetic ``FaceBasis`` of ``n_rows**2`` vertices and ``2 (n_rows - 1)**2`` triangles (see the
    module docstring). Deterministic for a given (n_rows, seed): the geometry is fixed, ``seed`` draws the
    random smooth bases. ``n_rows`` in [24, 80] (below 24 the lip landmarks would not be distinct
    vertices)."""
    if isinstance(n_rows, bool) or not isinstance(n_rows, int):
        raise TypeError(f"synthetic_face_basis: argument 'n_rows' must be an int, got "
                        f"{type(n_rows).__name__}")
    if not 24 <= n_rows <= 80:
        raise ValueError(f"synthetic_face_basis: argument 'n_rows' must be in [24, 80], got {n_rows}")
    gen = torch.Generator().manual_seed(int(seed))
    n = n_rows
    s = torch.linspace(-0.97, 0.97, n, dtype=torch.float64)
    t, s = torch.meshgrid(s.flip(0), s, indexing="ij")  # row 0 at the top (t = +0.97)
    s, t = s.reshape(-1), t.reshape(-1)
    # square -> disc (elliptical grid mapping), then the ellipse of the face
    px, py = s * torch.sqrt(1 - t * t / 2), t * torch.sqrt(1 - s * s / 2)
    xy = torch.stack([_A * px, _B * py], 1)
    z = _C * torch.sqrt((1 - px * px - py * py).clamp_min(0.0))
    z = z + 0.25 * _gauss(xy, 0.0, -0.08, 0.08, 0.2) + 0.05 * _gauss(xy, 0.0, 0.15, 0.06, 0.2)  # nose
    z = z + 0.05 * _gauss(xy, 0.0, 0.45, 0.45, 0.05)  # brow ridge
    for cx in (-0.3, 0.3):
        z = z - 0.07 * _gauss(xy, cx, 0.25, 0.13, 0.08)  # eye sockets
    z = z + 0.04 * _gauss(xy, 0.0, _MOUTH_Y, 0.22, 0.09)  # lips
    mean_shape = torch.cat([xy, z[:, None]], 1)
    mean_shape = mean_shape - mean_shape.mean(0)  # centred, as load_bfm(recenter=True) leaves the BFM

    # triangles: each grid quad split along its diagonal, counter-clockwise seen from +z (x right, y up)
    r, c = torch.meshgrid(torch.arange(n - 1), torch.arange(n - 1), indexing="ij")
    tl, tr = (r * n + c).reshape(-1), (r * n + c + 1).reshape(-1)
    bl, br = tl + n, tr + n
    faces = torch.cat([torch.stack([tl, bl, br], 1), torch.stack([tl, br, tr], 1)], 0)

    template = landmark_template()
    landmark_idx = _assign_landmarks(xy, template)

    # expression basis
    exp_base = torch.zeros(n * n, 3, N_EXP, dtype=torch.float64)
    x, y = xy[:, 0], xy[:, 1]
    below = torch.sigmoid((_MOUTH_Y - y) / 0.02)  # lower lip and jaw
    jaw = below * torch.exp(-((x / 0.55) ** 2)) * torch.exp(-(((y - _MOUTH_Y) / 0.7) ** 2))
    upper = (1 - below) * _gauss(xy, 0.0, _MOUTH_Y, 0.25, 0.08)
    exp_base[:, 1, 0] = -0.12 * jaw + 0.02 * upper
    exp_base[:, 2, 0] = -0.04 * jaw
    mouth = _gauss(xy, 0.0, _MOUTH_Y, 0.25, 0.12)
    exp_base[:, 0, 1] = 0.06 * mouth * torch.tanh(x / 0.12)
    exp_base[:, 1, 1] = 0.03 * mouth * (x / 0.25) ** 2
    exp_base[:, 2, 2] = 0.05 * mouth
    exp_base[:, 0, 2] = -0.05 * mouth * torch.tanh(x / 0.12)
    for cx in (-0.3, 0.3):
        exp_base[:, 1, 3] += 0.05 * _gauss(xy, cx, 0.45, 0.18, 0.08)
        exp_base[:, 1, 4] -= 0.04 * _gauss(xy, cx, 0.28, 0.12, 0.03)
    exp_base[:, :, 5:] = _smooth_fields(xy, N_EXP - 5, 0.03, gen)

    id_base = torch.zeros(n * n, 3, N_ID, dtype=torch.float64)
    lower = torch.sigmoid((-0.1 - y) / 0.1)
    id_base[:, 0, 0] = 0.06 * x * lower  # jaw width (no pure scalings: those would mimic the camera distance)
    id_base[:, 1, 1] = 0.04 * _gauss(xy, 0.0, -0.15, 0.15, 0.12)  # nose tip height
    id_base[:, 2, 2] = 0.06 * _gauss(xy, 0.0, -0.08, 0.1, 0.22)  # nose depth
    id_base[:, :, 3:] = _smooth_fields(xy, N_ID - 3, 0.04, gen)

    skin = torch.tensor([0.78, 0.58, 0.48], dtype=torch.float64)
    mean_tex = skin.repeat(n * n, 1)
    lips = ((x / 0.3) ** 2 + ((y - _MOUTH_Y) / 0.16) ** 2 < 1).double()
    gap = ((x / 0.21) ** 2 + ((y - _MOUTH_Y) / 0.035) ** 2 < 1).double()
    brows = sum(((x - cx) / 0.24) ** 2 + ((y - 0.47) / 0.05) ** 2 < 1 for cx in (-0.32, 0.32)).double()
    eyes = sum(((x - cx) / 0.13) ** 2 + ((y - 0.25) / 0.05) ** 2 < 1 for cx in (-0.3, 0.3)).double()
    for mask, col in ((lips, (0.72, 0.32, 0.32)), (gap, (0.2, 0.06, 0.06)), (brows, (0.3, 0.2, 0.15)),
                      (eyes, (0.9, 0.9, 0.88))):
        mean_tex = torch.lerp(mean_tex, torch.tensor(col, dtype=torch.float64), mask[:, None])
    tex_base = _smooth_fields(xy, N_TEX, 0.04, gen)

    uv = torch.stack([(s / 0.97 + 1) / 2, (1 - t / 0.97) / 2], 1)  # v = 0 at the top row
    f32 = lambda a: a.float().contiguous()  # noqa: E731
    return FaceBasis(mean_shape=f32(mean_shape), id_base=f32(id_base), exp_base=f32(exp_base),
                     mean_tex=f32(mean_tex), tex_base=f32(tex_base), faces=faces.long(),
                     landmark_idx=landmark_idx, point_buf=vertex_face_table(faces, n * n, width=8),
                     uv=f32(uv))


def _smooth_noise(T: int, n: int, gen: torch.Generator, period: float) -> Tensor:
    """(T, n) smooth random curves: sums of 3 sinusoids with random phases, periods around ``period`` frames,
    unit RMS."""
    t = torch.arange(T, dtype=torch.float64)[:, None]
    out = torch.zeros(T, n, dtype=torch.float64)
    for _ in range(3):
        per = period * (0.6 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64))
        ph = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        out += torch.sin(2 * math.pi * t / per + ph)
    return out * math.sqrt(2 / 3)


def synthetic_talking_sequence(basis: FaceBasis, T: int, seed: int = 0) -> Tensor:
    """(T, 257) float32 coefficients of a talking face: one identity and albedo (N(0, 0.5) each), the mouth
    opening (expression 0) oscillating in [0, 1] at about 4 cycles per 25 frames (syllables), a slow smile
    (expression 1, in [0, 0.6]), small smooth other expressions (RMS 0.1), a slow head motion (angles within
    about +-0.12 rad), a fixed light (the default ambient plus a frontal-top directional band; rendered
    colours stay in [0, 1]) and a small translation drift. ``basis`` fixes nothing but the device; any basis
    in the 257 layout can be driven."""
    if not isinstance(basis, FaceBasis):
        raise TypeError(f"synthetic_talking_sequence: argument 'basis' must be a FaceBasis, got "
                        f"{type(basis).__name__}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"synthetic_talking_sequence: argument 'T' must be a positive int, got {T!r}")
    gen = torch.Generator().manual_seed(int(seed))
    c = torch.zeros(T, N_COEFFS, dtype=torch.float64)
    c[:, COEFF_SLICES["id"]] = 0.5 * torch.randn(1, N_ID, generator=gen, dtype=torch.float64)
    c[:, COEFF_SLICES["tex"]] = 0.5 * torch.randn(1, N_TEX, generator=gen, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64)
    phase = 2 * math.pi * float(torch.rand(1, generator=gen))
    speed = 2 * math.pi * 4 / 25 * (0.8 + 0.4 * float(torch.rand(1, generator=gen)))
    exp = 0.1 * _smooth_noise(T, N_EXP, gen, 20.0)
    exp[:, 0] = 0.5 - 0.5 * torch.cos(speed * t + phase)
    exp[:, 1] = 0.3 + 0.3 * torch.sin(2 * math.pi * t / 60 + phase)
    c[:, COEFF_SLICES["exp"]] = exp
    c[:, COEFF_SLICES["angle"]] = 0.06 * _smooth_noise(T, 3, gen, 40.0)
    gamma = torch.zeros(3, 9, dtype=torch.float64)
    # Deep3DFaceRecon's SH basis is (1, -n_y, n_z, -n_x, ...): negative 1 = light from above, positive 2 =
    # from the front, positive 3 = from image left; with the 0.8 ambient offset the irradiance stays below 1,
    # so frames stay in [0, 1]
    gamma[:, 1] = -0.1
    gamma[:, 2] = 0.15
    gamma[:, 3] = 0.05
    c[:, COEFF_SLICES["gamma"]] = gamma.reshape(1, 27)
    c[:, COEFF_SLICES["trans"]] = 0.03 * _smooth_noise(T, 3, gen, 50.0)
    return c.float().to(basis.mean_shape.device)
