"""Point clouds of simple solids that a person can check by eye, and writers of tiny ModelNet40 fixtures in
the two real formats (shared by the PointNet/DGCNN and PointCAT tests).

* ``sample_solid(name, n, rng)``: n points (n, 6) float32 ``x, y, z, nx, ny, nz`` uniformly on the surface of
  a unit-size solid (sphere, cube, cylinder, cone, torus, plane: a flat square), each with its outward unit
  normal, randomly scaled (0.8-1.2) and rotated about the vertical axis so that no two samples are the same.
* ``write_modelnet40_normal(root, ...)``: the ``modelnet40_normal_resampled`` layout (shape names, train/test
  lists, ``<class>/<class>_0001.txt`` with ``x,y,z,nx,ny,nz`` lines written ``%.6f``).
* ``write_modelnet40_h5(root, ...)``: the ``modelnet40_ply_hdf5_2048`` layout (``ply_data_{train,test}{i}.h5``
  with ``data`` (B, P, 3) float32 and ``label`` (B, 1) uint8, ``shape_names.txt``, ``{train,test}_files.txt``
  listing the files as ``data/modelnet40_ply_hdf5_2048/<file>``, as in the released archive).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

SOLIDS = ("sphere", "cube", "cylinder", "cone", "torus", "plane")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _sphere(n, rng):
    p = _unit(rng.normal(size=(n, 3)))
    return p, p.copy()


def _cube(n, rng):
    face = rng.integers(0, 6, n)
    axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
    p = rng.uniform(-1, 1, size=(n, 3))
    p[np.arange(n), axis] = sign
    normal = np.zeros((n, 3))
    normal[np.arange(n), axis] = sign
    return 0.6 * p, normal


def _cylinder(n, rng):
    # side area 2*pi*r*h (r=0.5, h=2) against two caps pi*r^2: pick the part by area
    side = rng.uniform(size=n) < (2 * 0.5 * 2) / (2 * 0.5 * 2 + 2 * 0.25)
    t = rng.uniform(0, 2 * np.pi, n)
    r = np.where(side, 0.5, 0.5 * np.sqrt(rng.uniform(size=n)))
    z = np.where(side, rng.uniform(-1, 1, n), np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0))
    p = np.stack([r * np.cos(t), r * np.sin(t), z], 1)
    normal = np.where(side[:, None], np.stack([np.cos(t), np.sin(t), np.zeros(n)], 1),
                      np.stack([np.zeros(n), np.zeros(n), np.sign(z)], 1))
    return p, normal


def _cone(n, rng):
    # apex (0, 0, 1), base radius 0.8 at z = -1; lateral area pi*r*s against the base pi*r^2
    r0, h = 0.8, 2.0
    s = np.hypot(r0, h)
    lateral = rng.uniform(size=n) < s / (s + r0)
    t = rng.uniform(0, 2 * np.pi, n)
    frac = np.sqrt(rng.uniform(size=n))  # uniform on the surface: radius grows linearly from the apex
    r = np.where(lateral, r0 * frac, r0 * np.sqrt(rng.uniform(size=n)))
    z = np.where(lateral, 1.0 - h * frac, -1.0)
    p = np.stack([r * np.cos(t), r * np.sin(t), z], 1)
    side_normal = _unit(np.stack([h * np.cos(t), h * np.sin(t), np.full(n, r0)], 1))
    normal = np.where(lateral[:, None], side_normal, np.array([[0.0, 0.0, -1.0]]))
    return p, normal


def _torus(n, rng):
    R, r = 0.7, 0.25
    u = rng.uniform(0, 2 * np.pi, n)
    v = np.empty(0)
    while len(v) < n:  # rejection sampling of the area density, proportional to R + r cos v
        cand = rng.uniform(0, 2 * np.pi, 2 * n)
        v = np.concatenate([v, cand[rng.uniform(size=2 * n) < (R + r * np.cos(cand)) / (R + r)]])
    v = v[:n]
    centre = np.stack([R * np.cos(u), R * np.sin(u), np.zeros(n)], 1)
    normal = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], 1)
    return centre + r * normal, normal


def _plane(n, rng):
    p = np.stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), np.zeros(n)], 1)
    normal = np.tile(np.array([[0.0, 0.0, 1.0]]), (n, 1))
    return p, normal


_MAKERS = {"sphere": _sphere, "cube": _cube, "cylinder": _cylinder, "cone": _cone, "torus": _torus,
           "plane": _plane}


def sample_solid(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n surface points of solid ``name`` with normals, (n, 6) float32, random scale and rotation about z."""
    p, normal = _MAKERS[name](n, rng)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    p = (p @ rot.T) * rng.uniform(0.8, 1.2)
    normal = normal @ rot.T
    return np.concatenate([p, normal], 1).astype(np.float32)


def write_modelnet40_normal(root, classes: Sequence[str] = SOLIDS[:4], train_per_class: int = 4,
                            test_per_class: int = 2, num_points: int = 1200, seed: int = 0) -> Path:
    """Writes a ``modelnet40_normal_resampled`` fixture under ``root``; returns ``root``. Shape ``<c>_0001``
    ... are numbered across train then test, as in the release."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "modelnet40_shape_names.txt").write_text("".join(f"{c}\n" for c in classes))
    lists = {"train": [], "test": []}
    for c in classes:
        (root / c).mkdir(exist_ok=True)
        for i in range(train_per_class + test_per_class):
            name = f"{c}_{i + 1:04d}"
            lists["train" if i < train_per_class else "test"].append(name)
            np.savetxt(root / c / f"{name}.txt", sample_solid(c, num_points, rng), fmt="%.6f", delimiter=",")
    for split, names in lists.items():
        (root / f"modelnet40_{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def write_modelnet40_h5(root, classes: Sequence[str] = SOLIDS[:4], train_per_class: int = 4,
                        test_per_class: int = 2, num_points: int = 2048, seed: int = 0,
                        shapes_per_file: int = 6) -> Path:
    """Writes a ``modelnet40_ply_hdf5_2048`` fixture under ``root`` (shuffled shapes, ``shapes_per_file`` per
    .h5 file); returns ``root``."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (root / "shape_names.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(len(classes)), per_class)
        rng.shuffle(labels)
        data = np.stack([sample_solid(classes[k], num_points, rng)[:, :3] for k in labels]) if len(labels) else \
            np.zeros((0, num_points, 3), np.float32)
        files = []
        for i, start in enumerate(range(0, max(len(labels), 1), shapes_per_file)):
            name = f"ply_data_{split}{i}.h5"
            with h5py.File(root / name, "w") as f:
                f.create_dataset("data", data=data[start:start + shapes_per_file])
                f.create_dataset("label", data=labels[start:start + shapes_per_file, None].astype(np.uint8))
            files.append(f"data/modelnet40_ply_hdf5_2048/{name}")
        (root / f"{split}_files.txt").write_text("".join(f"{f}\n" for f in files))
    return root
