"""Face alignment for the talking-face pipeline: the crop transform of each video frame from its 68-point
landmarks, cropping the frames, and pasting faces rendered in crop space back into the full frames.

Deep3DFaceRecon fits its coefficients on 224 x 224 crops aligned from five facial points by scale and
translation only (the roll is left to the 3D pose). Here the five points of each frame are mapped onto the
five points of the model's own mean face (``alignment_template``), so the coefficients fitted on the crops
come out centred, at the model's ``image_size``.

Conventions.

* Pixel coordinates are continuous, x right and y down; pixel (row i, column j) covers [j, j + 1) x
  [i, i + 1) and its centre is (j + 0.5, i + 0.5), in the frame and in the crop alike (the convention of
  ``face3d.render`` and of ``BFM.landmarks``).
* An alignment ``A`` is a (T, 2, 3) affine matrix per frame mapping *frame* pixel coordinates p to *crop*
  pixel coordinates: ``crop = A[:, :, :2] @ p + A[:, :, 2]``. ``invert_alignment`` gives crop -> frame.
* ``crop_faces``: crop pixel (i, j) takes the bilinear sample of the frame at A^-1 (j + 0.5, i + 0.5), the
  frame's border pixels repeated outside it. ``paste_faces``: frame pixel (i, j) takes the bilinear sample of
  the crop-space face and mask at A (j + 0.5, i + 0.5), zero outside the crop.
* ``estimate_alignment`` fits the template to the frame's points, ``frame ~ s R template + t`` (least squares
  in frame pixels, as Deep3DFaceRecon's alignment fits its template to the detected points), and returns the
  inverse of that map. The detector's noise is in the frame's points, not in the template, so this direction
  is not biased toward small scales (fitting ``template ~ s' frame + t'`` is: s' shrinks with the noise).
  For points that are an exact similarity of the template both directions agree.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["five_points", "alignment_template", "estimate_alignment", "transform_points", "invert_alignment",
           "smooth_alignment", "crop_faces", "paste_faces", "FIVE_POINT_INDICES"]

#: 0-based indices in the 68-point layout of the five points: left eye (mean of two corners), right eye
#: (mean of two corners), nose tip, left and right mouth corners ("left" = image left, x smaller).
FIVE_POINT_INDICES = ((36, 39), (42, 45), (30,), (48,), (54,))


# ----------------------------------------------------------------------------------------------- checks
def _float_tensor(fn: str, name: str, x, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a floating tensor {expected}, got "
                        f"{type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: argument '{name}' must be a floating tensor {expected}, got dtype {x.dtype}")
    return x


def _check_alignment(fn: str, A, batch: Union[int, None] = None, finite: bool = False) -> Tensor:
    _float_tensor(fn, "A", A, "(T, 2, 3)")
    if A.dim() != 3 or A.shape[0] < 1 or tuple(A.shape[1:]) != (2, 3):
        raise ValueError(f"{fn}: argument 'A' must have shape (T, 2, 3) with T >= 1, got {tuple(A.shape)}")
    if batch is not None and A.shape[0] != batch:
        raise ValueError(f"{fn}: argument 'A' has {A.shape[0]} transforms but 'frames' has {batch} frames "
                         f"(one (2, 3) alignment per frame)")
    if finite:
        bad = _first_bad_frame(A)
        if bad >= 0:
            raise ValueError(f"{fn}: argument 'A' has non-finite values in frame {bad}")
    return A


def _check_frames(fn: str, frames) -> Tensor:
    _float_tensor(fn, "frames", frames, "(T, C, H, W)")
    if frames.dim() != 4 or frames.shape[0] < 1:
        raise ValueError(f"{fn}: argument 'frames' must have shape (T, C, H, W) with T >= 1, got "
                         f"{tuple(frames.shape)}")
    return frames


def _first_bad_frame(x: Tensor) -> int:
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    return int(bad.nonzero()[0, 0]) if bad.any() else -1


# ------------------------------------------------------------------------------------------------ points
def five_points(landmarks: Tensor) -> Tensor:
    """Deep3DFaceRecon's 5-point reduction of 68-point landmarks.

    Args:
        landmarks: (..., 68, 2) floating tensor, pixel (x, y).

    Returns:
        (..., 5, 2) of landmarks' dtype: left-eye centre (mean of points 36 and 39, 0-based), right-eye
        centre (mean of 42 and 45), nose tip (30), left mouth corner (48), right mouth corner (54).
    """
    _float_tensor("five_points", "landmarks", landmarks, "(..., 68, 2)")
    if landmarks.dim() < 2 or tuple(landmarks.shape[-2:]) != (68, 2):
        raise ValueError(f"five_points: argument 'landmarks' must have shape (..., 68, 2), got "
                         f"{tuple(landmarks.shape)}")
    pts = [landmarks[..., list(idx), :].mean(-2) for idx in FIVE_POINT_INDICES]
    return torch.stack(pts, -2)


def alignment_template(model, dtype: torch.dtype = torch.float32) -> Tensor:
    """The five points (``five_points``) of ``model``'s mean face (all 257 coefficients zero) in its rendered
    image, whose ``image_size`` (H, W) is the crop size: the target that ``estimate_alignment`` maps each
    frame's five points onto.

    Args:
        model: a ``BFM`` (``create_model("bfm", ...)``), or anything with ``landmarks(coeffs)`` -> (B, 68, 2)
            and ``image_size``.
        dtype: floating dtype of the result (the landmarks are computed in it).

    Returns:
        (5, 2) tensor of ``dtype`` on the model's device, crop pixel coordinates.
    """
    if not callable(getattr(model, "landmarks", None)) or not hasattr(model, "image_size"):
        raise TypeError(f"alignment_template: argument 'model' must be a BFM model (with landmarks() and "
                        f"image_size), got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"alignment_template: argument 'dtype' must be a floating torch dtype, got {dtype!r}")
    buf = next(iter(model.buffers()), None) if hasattr(model, "buffers") else None
    device = buf.device if buf is not None else torch.device("cpu")
    from .basis import N_COEFFS
    with torch.no_grad():
        lm = model.landmarks(torch.zeros(1, N_COEFFS, dtype=dtype, device=device))
    return five_points(lm)[0]


# ----------------------------------------------------------------------------------------------- fitting
def estimate_alignment(landmarks: Tensor, template: Tensor, rotation: bool = False) -> Tensor:
    """Per-frame crop transforms from landmarks.

    The template is fitted to each frame's five points by least squares in frame pixels,
    ``min_{s, t} sum_k |s template_k + t - p_k|^2`` (``rotation=False``: scale and translation,
    s = sum(p_c . q_c) / sum |q_c|^2 over the centred points) or ``min_{s, R, t} sum_k |s R template_k + t -
    p_k|^2`` (``rotation=True``: a similarity, Umeyama's closed form from the SVD of the cross-covariance,
    reflections excluded); the result is the inverse map, frame -> crop (module docstring).

    Args:
        landmarks: (T, 68, 2) or (T, 5, 2) floating frame pixel coordinates (68 points are reduced by
            ``five_points``).
        template: (5, 2) floating crop pixel coordinates (``alignment_template(model)``).
        rotation: also fit the in-plane rotation.

    Returns:
        A: (T, 2, 3) of landmarks' dtype and device, ``crop = A[:, :, :2] @ p + A[:, :, 2]``.

    Raises:
        TypeError for non-tensors or non-floating dtypes; ValueError for wrong shapes, non-finite landmarks
        (naming the first such frame), a degenerate template, or a frame whose five points coincide or whose
        fitted scale is not positive (an upside-down face without ``rotation``, a mirror image with it).
    """
    fn = "estimate_alignment"
    _float_tensor(fn, "landmarks", landmarks, "(T, 68, 2) or (T, 5, 2)")
    _float_tensor(fn, "template", template, "(5, 2)")
    if landmarks.dim() != 3 or landmarks.shape[0] < 1 or landmarks.shape[1] not in (5, 68) \
            or landmarks.shape[2] != 2:
        raise ValueError(f"{fn}: argument 'landmarks' must have shape (T, 68, 2) or (T, 5, 2) with T >= 1, "
                         f"got {tuple(landmarks.shape)}")
    if tuple(template.shape) != (5, 2):
        raise ValueError(f"{fn}: argument 'template' must have shape (5, 2), got {tuple(template.shape)}")
    bad = _first_bad_frame(landmarks)
    if bad >= 0:
        raise ValueError(f"{fn}: argument 'landmarks' has non-finite values in frame {bad}")
    if not torch.isfinite(template).all():
        raise ValueError(f"{fn}: argument 'template' has non-finite values")
    dtype, device = landmarks.dtype, landmarks.device
    p = landmarks.double()
    if p.shape[1] == 68:
        p = five_points(p)
    q = template.to(device=device, dtype=torch.float64)
    T = p.shape[0]
    pm, qm = p.mean(1), q.mean(0)                                # (T, 2), (2,)
    pc, qc = p - pm[:, None], q - qm
    var_p, var_q = pc.pow(2).sum((1, 2)), qc.pow(2).sum()
    if float(var_q) <= (1e-6 * max(1.0, float(q.abs().max()))) ** 2:
        raise ValueError(f"{fn}: argument 'template' is degenerate: its five points coincide")
    tiny = (1e-6 * p.abs().flatten(1).amax(1).clamp_min(1.0)) ** 2
    degenerate = var_p <= tiny
    if degenerate.any():
        t = int(degenerate.nonzero()[0, 0])
        raise ValueError(f"{fn}: argument 'landmarks', frame {t}: the five points coincide, so the scale is "
                         f"undefined")
    if rotation:
        cov = pc.transpose(1, 2) @ qc / 5                       # (T, 2, 2): mean of p_c q_c^T
        U, D, Vh = torch.linalg.svd(cov)
        d = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
        d = torch.where(d == 0, torch.ones_like(d), d)
        S = torch.stack([torch.ones_like(d), d], -1)             # diag(1, d): no reflection
        R = U @ (S[:, :, None] * Vh)
        s = (D * S).sum(-1) / (var_q / 5)
    else:
        R = torch.eye(2, dtype=torch.float64, device=device).expand(T, 2, 2)
        s = (pc * qc).sum((1, 2)) / var_q
    small = s <= 1e-9 * (var_p / var_q).sqrt()
    if small.any():
        t = int(small.nonzero()[0, 0])
        what = "a mirror image of the template" if rotation else \
            "upside down or rotated by 90 degrees or more (try rotation=True)"
        raise ValueError(f"{fn}: argument 'landmarks', frame {t}: the fitted scale is {float(s[t]):.3g} (not "
                         f"positive): the five points are {what}")
    trans = pm - s[:, None] * (R @ qm)                          # frame = s R q + trans
    M = R.transpose(1, 2) / s[:, None, None]                     # crop = M (p - trans)
    A = torch.cat([M, -(M @ trans[:, :, None])], 2)
    return A.to(dtype)


def transform_points(A: Tensor, points: Tensor) -> Tensor:
    """Applies affine maps to points: ``A[..., :2] @ p + A[..., 2]``.

    Args:
        A: (..., 2, 3) floating (e.g. (T, 2, 3) from ``estimate_alignment``; ``invert_alignment(A)`` maps the
            other way).
        points: (..., N, 2) floating; the leading dimensions broadcast against A's (e.g. (T, N, 2)).

    Returns:
        (..., N, 2) in the promoted dtype of A and points.
    """
    fn = "transform_points"
    _float_tensor(fn, "A", A, "(..., 2, 3)")
    _float_tensor(fn, "points", points, "(..., N, 2)")
    if A.dim() < 2 or tuple(A.shape[-2:]) != (2, 3):
        raise ValueError(f"{fn}: argument 'A' must have shape (..., 2, 3), got {tuple(A.shape)}")
    if points.dim() < 2 or points.shape[-1] != 2:
        raise ValueError(f"{fn}: argument 'points' must have shape (..., N, 2), got {tuple(points.shape)}")
    try:
        torch.broadcast_shapes(A.shape[:-2], points.shape[:-2])
    except RuntimeError:
        raise ValueError(f"{fn}: the leading dimensions of 'A' {tuple(A.shape[:-2])} and 'points' "
                         f"{tuple(points.shape[:-2])} do not broadcast") from None
    dt = torch.promote_types(A.dtype, points.dtype)
    A, points = A.to(dt), points.to(dt)
    return points @ A[..., :2].transpose(-1, -2) + A[..., None, :, 2]


def invert_alignment(A: Tensor) -> Tensor:
    """Inverse affine maps: frame -> crop becomes crop -> frame (and back).

    Args:
        A: (..., 2, 3) floating.

    Returns:
        (..., 2, 3) of A's dtype: ``[M^-1, -M^-1 t]`` for ``A = [M, t]``. ValueError if some M is singular
        or A is not finite.
    """
    _float_tensor("invert_alignment", "A", A, "(..., 2, 3)")
    if A.dim() < 2 or tuple(A.shape[-2:]) != (2, 3):
        raise ValueError(f"invert_alignment: argument 'A' must have shape (..., 2, 3), got {tuple(A.shape)}")
    M, t = A[..., :2], A[..., 2:]
    det = torch.linalg.det(M.double())
    scale = M.double().abs().flatten(-2).amax(-1)
    if not torch.isfinite(A).all() or bool((det.abs() <= 1e-12 * scale.pow(2)).any()):
        raise ValueError("invert_alignment: argument 'A' has a singular or non-finite (2, 2) part")
    Minv = torch.linalg.inv(M)
    return torch.cat([Minv, -(Minv @ t)], -1)


def smooth_alignment(A: Tensor, window: int) -> Tensor:
    """Temporal smoothing of per-frame alignments, so that landmark jitter does not shake the crop: each
    frame's matrix becomes the mean of the matrices over a centred window of ``window`` frames, shrinking at
    the sequence's ends (``models.expression_editor.temporal_smooth``). A constant sequence is unchanged;
    scale + translation alignments stay scale + translation (with rotation, the mean of similarities is a
    close, not exact, similarity).

    Args:
        A: (T, 2, 3) floating.
        window: odd int >= 1 (1 returns A).

    Returns:
        (T, 2, 3) of A's dtype.
    """
    _check_alignment("smooth_alignment", A)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"smooth_alignment: argument 'window' must be an odd int >= 1, got {window!r}")
    from ..models.expression_editor import temporal_smooth  # lazy: models imports face3d
    return temporal_smooth(A.reshape(A.shape[0], 6), window, dim=0).reshape(A.shape)


# -------------------------------------------------------------------------------------------- resampling
def _sampling_grid(M: Tensor, out_hw: tuple[int, int], in_hw: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """(T, h, w, 2) grid_sample grid (align_corners=False) sampling an input of size in_hw at M (pixel centre
    of each output pixel), M (T, 2, 3) mapping output pixel coordinates to input pixel coordinates."""
    h, w = out_hw
    H, W = in_hw
    M = M.to(dtype)
    ys = torch.arange(h, dtype=dtype, device=M.device) + 0.5
    xs = torch.arange(w, dtype=dtype, device=M.device) + 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([xx, yy, torch.ones_like(xx)], -1)            # (h, w, 3) output pixel centres
    xy = torch.einsum("hwk,tck->thwc", centres, M)                       # (T, h, w, 2) input pixel coords
    # align_corners=False: -1 .. 1 spans the input's pixel edges 0 .. W, so coordinate x maps to 2 x / W - 1
    return xy * torch.tensor([2.0 / W, 2.0 / H], dtype=dtype, device=M.device) - 1.0


def _size_pair(fn: str, size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, Sequence) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size)):
        raise ValueError(f"{fn}: argument 'size' must be a positive int or (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def crop_faces(frames: Tensor, A: Tensor, size: Union[int, Sequence[int]]) -> Tensor:
    """Crops the aligned faces out of the frames.

    Crop pixel (i, j) is the bilinear sample of its frame at ``A^-1 (j + 0.5, i + 0.5)`` (border padding: the
    frame's edge pixels continue outside it). Differentiable in frames and A.

    Args:
        frames: (T, C, H, W) floating.
        A: (T, 2, 3) frame -> crop alignments (``estimate_alignment``).
        size: crop size, int or (h, w) (the model's ``image_size``, which ``alignment_template`` used).

    Returns:
        (T, C, h, w) of frames' dtype.
    """
    fn = "crop_faces"
    frames = _check_frames(fn, frames)
    _check_alignment(fn, A, frames.shape[0], finite=True)
    h, w = _size_pair(fn, size)
    gdt = torch.promote_types(frames.dtype, torch.float32)  # coordinates in >= float32, then the frames'
    Ainv = invert_alignment(A.to(device=frames.device, dtype=gdt))
    grid = _sampling_grid(Ainv, (h, w), tuple(frames.shape[2:]), gdt).to(frames.dtype)
    return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _feather_mask(mask: Tensor, feather: int) -> Tensor:
    """Erodes ``mask`` (T, 1, h, w) by ``feather`` pixels (square min filter, outside the crop counting as 0)
    and box-blurs it over 2 feather + 1 pixels: the result rises from 0 at the mask's edge to 1 at 2 feather
    + 1 pixels inside (along the axes; the square windows make it up to sqrt 2 wider on diagonals), and is 0
    wherever the mask is (the blur reaches no farther than the erosion)."""
    if feather == 0:
        return mask
    r, k = feather, 2 * feather + 1
    padded = F.pad(mask, (r, r, r, r), value=0.0)
    eroded = -F.max_pool2d(-padded, kernel_size=k, stride=1)
    blurred = F.avg_pool2d(F.pad(eroded, (r, r, 0, 0), value=0.0), kernel_size=(1, k), stride=1)
    return F.avg_pool2d(F.pad(blurred, (0, 0, r, r), value=0.0), kernel_size=(k, 1), stride=1)


def paste_faces(frames: Tensor, faces: Tensor, mask: Tensor, A: Tensor, feather: int = 3) -> Tensor:
    """Pastes faces rendered in crop space back into the frames.

    ``a``, the mask feathered in crop space (eroded by ``feather`` crop pixels and box-blurred over
    ``2 feather + 1``, so it rises from 0 at the mask's edge to 1 at ``2 feather + 1`` pixels inside; 0: the
    mask as given) and the faces are warped into each frame (frame pixel (i, j) samples the crop bilinearly
    at ``A (j + 0.5, i + 0.5)``, zero outside the crop); the result is ``frames (1 - a) + warped_faces a``.
    Frame pixels where the warped mask is 0 are returned bit-identical. Differentiable in frames, faces, mask
    and A.

    Args:
        frames: (T, C, H, W) floating.
        faces: (T, C, h, w) floating, e.g. ``BFM.render(coeffs)["image"]`` at the crop size.
        mask: (T, 1, h, w) floating in [0, 1], e.g. the render's ``mask``.
        A: (T, 2, 3) frame -> crop alignments (``estimate_alignment``).
        feather: int >= 0, in crop pixels.

    Returns:
        (T, C, H, W) of frames' dtype.

    Note: the composite multiplies the warped faces by ``a``; a rendered image is already 0 outside its mask,
    so with ``feather=0`` the bilinear warp darkens a sub-pixel fringe at the face's edge (``feather >= 1``
    keeps ``a`` at 0 there).
    """
    fn = "paste_faces"
    frames = _check_frames(fn, frames)
    T, C = frames.shape[:2]
    _float_tensor(fn, "faces", faces, "(T, C, h, w)")
    _float_tensor(fn, "mask", mask, "(T, 1, h, w)")
    if faces.dim() != 4 or faces.shape[0] != T or faces.shape[1] != C:
        raise ValueError(f"{fn}: argument 'faces' must have shape ({T}, {C}, h, w) (the frames' count and "
                         f"channels), got {tuple(faces.shape)}")
    h, w = faces.shape[2:]
    if tuple(mask.shape) != (T, 1, h, w):
        raise ValueError(f"{fn}: argument 'mask' must have shape ({T}, 1, {h}, {w}) (the faces' count and "
                         f"size), got {tuple(mask.shape)}")
    _check_alignment(fn, A, T, finite=True)
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
        raise ValueError(f"{fn}: argument 'feather' must be an int >= 0 (crop pixels), got {feather!r}")
    if mask.numel() and (float(mask.min()) < 0 or float(mask.max()) > 1):
        raise ValueError(f"{fn}: argument 'mask' must be in [0, 1], got values in [{float(mask.min()):.3g}, "
                         f"{float(mask.max()):.3g}]")
    dt = frames.dtype
    alpha = _feather_mask(mask.to(dt), feather)
    gdt = torch.promote_types(dt, torch.float32)
    grid = _sampling_grid(A.to(device=frames.device, dtype=gdt), tuple(frames.shape[2:]), (h, w), gdt).to(dt)
    warped = F.grid_sample(torch.cat([faces.to(dt), alpha], 1), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    wf, a = warped[:, :C], warped[:, C:]
    return torch.where(a > 0, frames * (1 - a) + wf * a, frames)

