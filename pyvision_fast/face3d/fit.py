"""Analysis-by-synthesis fitting of per-frame 3DMM coefficients to video frames with 68-point landmarks, and
the reader of the common 68-point landmark text files.

``fit_3dmm(model, frames, landmarks)`` minimises, over all frames at once (one batch),

    w_landmark * L_lm + w_photo * L_photo + w_id |id|^2 + w_exp |exp|^2 + w_tex |tex|^2 + w_gamma L_gamma
    + w_smooth * L_smooth

* L_lm: mean over frames and landmarks of ``landmark_weights`` x squared pixel distance / W^2 (so the weight
  does not depend on the resolution);
* L_photo: per-pixel Euclidean RGB distance between the rendered face and the frame, averaged over the
  rendered face mask (Deep3DFaceRecon's photometric loss without its skin-probability weights);
* L_gamma: the variance of the SH coefficients across colour channels (Deep3DFaceRecon's monochromatic
  lighting prior);
* L_smooth: mean squared difference of consecutive frames' expression, angles, translation and lighting
  *(ours: the paper smooths edited coefficients by averaging; smoothing the fit keeps its input steady)*.

The identity and albedo are shared by all frames (``share_identity=True``, *ours*: one person per video);
expression, pose and lighting are per frame. Optimisation *(ours)*, in three stages: L-BFGS on the landmark
and regularisation terms (shape and pose; the landmark-only forward evaluates 68 vertices, so hundreds of
iterations are cheap), L-BFGS on the photometric term over albedo and light with the geometry fixed (one
raster), then a short Adam refinement of everything. The translation starts from the landmarks' centroid and
spread (a closed-form similarity against the mean face), angles and the rest from 0.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops import rasterize_triangles
from .basis import COEFF_SLICES, N_COEFFS, N_ID, N_TEX
from .render import rasterize_mesh

__all__ = ["read_landmarks", "write_landmarks", "read_landmark_sequence", "fit_3dmm", "fit_losses",
           "fit_video"]


def read_landmarks(path: Union[str, Path], n_points: int = 68) -> Tensor:
    """Reads a landmark text file: ``n_points`` lines of "x y" (whitespace- or comma-separated numbers, pixel
    coordinates x right, y down; blank lines and lines starting with ``#`` are skipped) -> (n_points, 2)
    float32. Coordinates are taken as they are: the fitting's pixel (row i, column j) has its centre at
    (j + 0.5, i + 0.5), so add 0.5 to a detector's integer-centred output where a half pixel matters.
    Raises FileNotFoundError naming the file; ValueError naming the file and line for a malformed line, a
    non-finite value or a wrong number of points."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_landmarks: landmark file {str(path)!r} not found")
    pts = []
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.replace(",", " ").split()
            if len(parts) != 2:
                raise ValueError(f"read_landmarks: {path}, line {lineno}: expected two numbers 'x y', got "
                                 f"{text[:60]!r}")
            try:
                x, y = float(parts[0]), float(parts[1])
            except ValueError:
                raise ValueError(f"read_landmarks: {path}, line {lineno}: not numbers: "
                                 f"{text[:60]!r}") from None
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError(f"read_landmarks: {path}, line {lineno}: non-finite coordinate "
                                 f"{text[:60]!r}")
            pts.append((x, y))
    if len(pts) != n_points:
        raise ValueError(f"read_landmarks: {path} has {len(pts)} points, expected {n_points} (one 'x y' line "
                         f"each)")
    return torch.tensor(pts, dtype=torch.float32)


def write_landmarks(path: Union[str, Path], landmarks: Tensor) -> None:
    """Writes (n, 2) landmarks as ``read_landmarks`` reads them (one "x y" line each)."""
    lm = torch.as_tensor(landmarks).detach().cpu().double()
    if lm.dim() != 2 or lm.shape[1] != 2:
        raise ValueError(f"write_landmarks: argument 'landmarks' must have shape (n, 2), got "
                         f"{tuple(lm.shape)}")
    Path(path).write_text("".join(f"{x:.4f} {y:.4f}\n" for x, y in lm.tolist()))


def read_landmark_sequence(paths: Union[str, Path, Sequence[Union[str, Path]]]) -> Tensor:
    """(T, 68, 2) float32 landmarks of a frame sequence: ``paths`` is a directory (its ``*.txt`` files, sorted
    by name: one file per frame, e.g. ``000000.txt``, ``000001.txt``...) or a list of files in frame order;
    each is read by ``read_landmarks``. ValueError for an empty directory or list."""
    if isinstance(paths, (str, Path)):
        folder = Path(paths)
        if not folder.is_dir():
            raise FileNotFoundError(f"read_landmark_sequence: landmark directory {str(folder)!r} not found")
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise ValueError(f"read_landmark_sequence: {folder} holds no *.txt landmark file")
    else:
        files = [Path(p) for p in paths]
        if not files:
            raise ValueError("read_landmark_sequence: argument 'paths' is an empty list")
    return torch.stack([read_landmarks(f) for f in files])


def _check_inputs(model, frames, landmarks) -> tuple[int, int, int]:
    if not hasattr(model, "geometry") or not hasattr(model, "render"):
        raise TypeError(f"fit_3dmm: argument 'model' must be a BFM model, got {type(model).__name__}")
    H, W = model.image_size
    if not isinstance(frames, Tensor) or not frames.is_floating_point():
        raise TypeError(f"fit_3dmm: argument 'frames' must be a floating tensor (T, 3, H, W), got "
                        f"{getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.dim() != 4 or frames.shape[1] != 3 or tuple(frames.shape[2:]) != (H, W) or frames.shape[0] < 1:
        raise ValueError(f"fit_3dmm: argument 'frames' must have shape (T, 3, {H}, {W}) (the model's "
                         f"image_size), got {tuple(frames.shape)}")
    T = frames.shape[0]
    if not isinstance(landmarks, Tensor) or not landmarks.is_floating_point():
        raise TypeError(f"fit_3dmm: argument 'landmarks' must be a floating tensor ({T}, 68, 2)")
    if tuple(landmarks.shape) != (T, 68, 2):
        raise ValueError(f"fit_3dmm: argument 'landmarks' must have shape ({T}, 68, 2), got "
                         f"{tuple(landmarks.shape)}")
    if not torch.isfinite(landmarks).all():
        raise ValueError("fit_3dmm: argument 'landmarks' has non-finite values")
    if not torch.isfinite(frames).all():
        raise ValueError("fit_3dmm: argument 'frames' has non-finite values")
    return T, H, W


def _initial_translation(model, landmarks: Tensor) -> Tensor:
    """(T, 3) translations putting the mean face's landmarks at the given landmarks' centroid and spread."""
    T = landmarks.shape[0]
    zero = torch.zeros(1, N_COEFFS, dtype=landmarks.dtype, device=landmarks.device)
    with torch.no_grad():
        g = model.geometry(zero)
    lm0 = g["landmarks"][0]
    Z0 = g["verts"][0, model.landmark_idx, 2].mean()
    spread = lambda p: (p - p.mean(-2, keepdim=True)).norm(dim=-1).pow(2).mean(-1).sqrt()  # noqa: E731
    scale = spread(landmarks) / spread(lm0)
    Z = Z0 / scale
    d = landmarks.mean(1) - lm0.mean(0)
    tx = d[:, 0] * Z / model.focal
    ty = -d[:, 1] * Z / model.focal
    return torch.stack([tx, ty, Z0 - Z], 1).reshape(T, 3)


def fit_losses(model, coeffs: Tensor, frames: Tensor, landmarks: Tensor, photometric: bool = True,
               landmark_weights: Optional[Tensor] = None, weights: Optional[dict] = None,
               rast: Optional[Tensor] = None) -> dict[str, Tensor]:
    """The unweighted loss terms of ``fit_3dmm`` for (T, 257) ``coeffs`` (dict: ``landmark``, ``photo``,
    ``id``, ``exp``, ``tex``, ``gamma``, ``smooth``) and ``total`` weighted by ``weights`` (fit_3dmm's
    defaults for missing keys). ``rast`` reuses a raster of the same geometry (the appearance stage)."""
    w = dict(_DEFAULT_WEIGHTS, **(weights or {}))
    T = coeffs.shape[0]
    W = model.image_size[1]
    out = model.geometry(coeffs) if photometric else {"landmarks": model.landmarks(coeffs)}
    if photometric:
        out["image"], out["mask"], _ = rasterize_mesh(out["verts_clip"], model.faces, out["vertex_colors"],
                                                      model.image_size, rast)
    d2 = (out["landmarks"] - landmarks).pow(2).sum(-1) / (W * W)
    lw = landmark_weights if landmark_weights is not None else torch.ones_like(d2[0])
    terms = {"landmark": (d2 * lw).sum(-1).mean() / lw.sum() * lw.numel()}
    if photometric:
        mask = out["mask"]
        diff = ((out["image"] - frames * mask).pow(2).sum(1, keepdim=True) + 1e-8).sqrt() * mask
        terms["photo"] = diff.sum() / mask.sum().clamp_min(1.0)
    else:
        terms["photo"] = coeffs.new_zeros(())
    terms["id"] = coeffs[:, COEFF_SLICES["id"]].pow(2).sum(-1).mean()
    terms["exp"] = coeffs[:, COEFF_SLICES["exp"]].pow(2).sum(-1).mean()
    terms["tex"] = coeffs[:, COEFF_SLICES["tex"]].pow(2).sum(-1).mean()
    gamma = coeffs[:, COEFF_SLICES["gamma"]].reshape(T, 3, 9)
    terms["gamma"] = (gamma - gamma.mean(1, keepdim=True)).pow(2).sum((1, 2)).mean()
    if T > 1:
        dyn = torch.cat([coeffs[:, COEFF_SLICES[k]] for k in ("exp", "angle", "trans", "gamma")], 1)
        terms["smooth"] = (dyn[1:] - dyn[:-1]).pow(2).sum(-1).mean()
    else:
        terms["smooth"] = coeffs.new_zeros(())
    key = {"landmark": "w_landmark", "photo": "w_photo", "id": "w_id", "exp": "w_exp", "tex": "w_tex",
           "gamma": "w_gamma", "smooth": "w_smooth"}
    terms["total"] = sum(w[key[k]] * v for k, v in terms.items())
    return terms


# Deep3DFaceRecon's weights are w_lm 1.6e-3 (pixels at 224, i.e. ~80 on our /W^2 scale), w_color 1.92,
# w_id 1e-4 ... ours are tuned on the synthetic face (tests/test_face3d_fit.py) and kept in the same spirit:
# landmarks dominate the pose, the photometric term refines shape and fixes albedo and light.
_DEFAULT_WEIGHTS = {"w_landmark": 100.0, "w_photo": 1.0, "w_id": 1e-4, "w_exp": 1e-4, "w_tex": 1e-4,
                    "w_gamma": 1e-2, "w_smooth": 1e-3}


def fit_3dmm(model, frames: Tensor, landmarks: Tensor, iterations: int = 50, landmark_iterations: int = 500,
             appearance_iterations: int = 30, lr: float = 0.005, share_identity: bool = True,
             landmark_weights: Optional[Tensor] = None, init: Optional[Tensor] = None,
             return_history: bool = False, **weights):
    """Fits (T, 257) coefficients of ``model`` (a ``BFM``) to ``frames`` (T, 3, H, W) in [0, 1] (H, W = the
    model's image_size) with ``landmarks`` (T, 68, 2) pixels (x right, y down, as ``read_landmarks``).

    Three stages, all frames in one batch:

    1. ``landmark_iterations`` (default 500) L-BFGS iterations on the landmark and regularisation terms over
       identity, expression, angles and translation;
    2. ``appearance_iterations`` (default 30) L-BFGS iterations on the photometric term over albedo and
       lighting, the geometry (hence the raster) held fixed;
    3. ``iterations`` (default 50) Adam steps (``lr``, default 0.005, cosine-decayed to lr / 20) on all terms
       over all coefficients.

    Args:
        share_identity: one identity and albedo for all frames (default) or per-frame ones.
        landmark_weights: (68,) per-landmark weights (default all 1).
        init: (T, 257) starting coefficients (default: translation from the landmarks, the rest 0).
        return_history: also return the list of per-evaluation loss dicts (floats).
        **weights: ``w_landmark`` (100), ``w_photo`` (1), ``w_id`` / ``w_exp`` / ``w_tex`` (1e-4), ``w_gamma``
            (1e-2), ``w_smooth`` (1e-3): see the module docstring.

    Returns: (T, 257) detached coefficients of the frames' dtype (and the history when asked).
    """
    T, H, W = _check_inputs(model, frames, landmarks)
    unknown = set(weights) - set(_DEFAULT_WEIGHTS)
    if unknown:
        raise TypeError(f"fit_3dmm: unknown weight argument(s) {sorted(unknown)}; known: "
                        f"{sorted(_DEFAULT_WEIGHTS)}")
    for k, v in weights.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"fit_3dmm: weight '{k}' must be a non-negative number, got {v!r}")
    for name, v in (("iterations", iterations), ("landmark_iterations", landmark_iterations),
                    ("appearance_iterations", appearance_iterations)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"fit_3dmm: argument '{name}' must be a non-negative int, got {v!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"fit_3dmm: argument 'lr' must be positive, got {lr!r}")
    if landmark_weights is not None:
        landmark_weights = torch.as_tensor(landmark_weights, dtype=frames.dtype, device=frames.device)
        lw = landmark_weights
        if tuple(lw.shape) != (68,) or (lw < 0).any() or lw.sum() <= 0 or not torch.isfinite(lw).all():
            raise ValueError("fit_3dmm: argument 'landmark_weights' must be 68 finite non-negative values, "
                             "not all 0")
    dtype, device = frames.dtype, frames.device
    landmarks = landmarks.to(dtype)
    if init is None:
        init = torch.zeros(T, N_COEFFS, dtype=dtype, device=device)
        init[:, COEFF_SLICES["trans"]] = _initial_translation(model, landmarks)
    elif not isinstance(init, Tensor) or tuple(init.shape) != (T, N_COEFFS):
        raise ValueError(f"fit_3dmm: argument 'init' must be a tensor of shape ({T}, {N_COEFFS})")
    init = init.detach().to(dtype=dtype, device=device)
    n_shared = 1 if share_identity else T
    idp = init[:n_shared, COEFF_SLICES["id"]].clone().requires_grad_(True)
    texp = init[:n_shared, COEFF_SLICES["tex"]].clone().requires_grad_(True)
    dyn = {k: init[:, COEFF_SLICES[k]].clone().requires_grad_(True)
           for k in ("exp", "angle", "gamma", "trans")}

    def assemble() -> Tensor:
        return torch.cat([idp.expand(T, N_ID), dyn["exp"], texp.expand(T, N_TEX), dyn["angle"], dyn["gamma"],
                          dyn["trans"]], 1)

    history = []

    def closure_for(opt, photometric, rast=None):
        def closure():
            opt.zero_grad(set_to_none=True)
            terms = fit_losses(model, assemble(), frames, landmarks, photometric, landmark_weights, weights,
                               rast)
            terms["total"].backward()
            if return_history:
                history.append({k: float(v.detach()) for k, v in terms.items()})
            return terms["total"]
        return closure

    def lbfgs(params, steps, photometric, rast=None):
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, max_eval=2 * steps, history_size=30,
                                tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
        opt.step(closure_for(opt, photometric, rast))

    # 1. landmarks only: a smooth least-squares problem in (shape, pose); quasi-Newton converges in far fewer
    #    evaluations than Adam
    if landmark_iterations:
        lbfgs([idp] + [dyn[k] for k in ("exp", "angle", "trans")], landmark_iterations, False)
    # 2. appearance (albedo, light) on the fixed geometry: one raster, smooth in the colours
    if appearance_iterations:
        with torch.no_grad():
            geo = model.geometry(assemble())
            rast = rasterize_triangles(geo["verts_clip"], model.faces, model.image_size)
        lbfgs([texp, dyn["gamma"]], appearance_iterations, True, rast)
    # 3. everything together, photometric included (the raster changes: Adam, small steps)
    if iterations:
        opt = torch.optim.Adam([idp, texp] + list(dyn.values()), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations, eta_min=lr / 20)
        closure = closure_for(opt, True)
        for _ in range(iterations):
            opt.step(closure)
            sched.step()
    with torch.no_grad():
        coeffs = assemble().detach().clone()
    return (coeffs, history) if return_history else coeffs



def fit_video(model, video: Union[str, Path], landmarks, **fit_kwargs) -> Tensor:
    """Fits the frames of a video file: frames read with PyAV (``data.video.read_video``) and resized to the
    model's image_size; ``landmarks`` (a directory or list of 68-point files, see ``read_landmark_sequence``,
    or a (T, 68, 2) tensor) in the video's own pixel coordinates, scaled with the frames. The face should
    fill the frame about as the model's camera expects (Deep3DFaceRecon fits 224 x 224 crops aligned on the
    face; crop first otherwise). ``fit_kwargs`` go to ``fit_3dmm``. Returns (T, 257) float32 coefficients
    of the resized frames."""
    from ..data.video import probe_video, read_video

    info = probe_video(video)
    if not isinstance(landmarks, Tensor):
        landmarks = read_landmark_sequence(landmarks)
    H, W = model.image_size
    frames = read_video(video, size=(H, W))
    if frames.shape[0] != landmarks.shape[0]:
        raise ValueError(f"fit_video: {video} has {frames.shape[0]} frames but {landmarks.shape[0]} landmark "
                         f"sets were given (one per frame)")
    scale = torch.tensor([W / info.width, H / info.height], dtype=torch.float32)
    frames = frames.permute(0, 3, 1, 2).float() / 255.0
    return fit_3dmm(model, frames, landmarks.float() * scale, **fit_kwargs)
