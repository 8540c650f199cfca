"""Point-cloud cases, with the shapes of PointNet++-style workloads (PointCAT's backbones)."""
from __future__ import annotations

from typing import Optional

import torch

from pyvision_fast import ops
from pyvision_fast.reference import pointcloud as ref

from .harness import Case, Impl, candidate_impl, peer


def _candidate(name: str, op_names: list[str], fn) -> Optional[Impl]:
    """The GPU candidates' row, ``name`` + " (candidate)", while op_names have one (a peer of ours)."""
    return candidate_impl(name + " (candidate)", op_names, fn)


# PyPI has no PyTorch3D distribution for CPython 3.11, and its source (0.7.9) does not build against torch 2.14
# (see requirements-peers.txt)
_P3D_INSTALL = ("no PyPI release for this Python; its source builds with -std=c++17, which torch >= 2.14's "
                "headers reject")


def _cluster_goal(peer: str, device: str) -> list:
    """CPU: ours at least 3x the torch_cluster peer (issue 22's goal; no verdict where it is not installed)."""
    return [(peer, 3.0)] if device == "cpu" else []


def _cluster_unusable(device: str):
    """Why torch_cluster cannot run on ``device`` (a build without CUDA on a GPU case), or None."""
    def why(tc) -> Optional[str]:
        if device == "cuda" and getattr(tc, "cuda_version", -1) == -1:
            return "torch_cluster was built without CUDA (CPU only)"
        return None
    return why


def _keops_unusable(device: str):
    def why(pykeops) -> Optional[str]:
        if device == "cuda" and not getattr(pykeops.config, "gpu_available", False):
            return "pykeops found no CUDA libraries (CPU only)"
        return None
    return why


def _differ(name: str, ours, theirs) -> Optional[str]:
    """None when two index tensors are equal, else how many entries differ."""
    if ours.shape != theirs.shape:
        return f"{name} shape {tuple(theirs.shape)}, ours {tuple(ours.shape)}"
    bad = int((ours != theirs).sum())
    return None if bad == 0 else f"{bad} of {ours.numel()} {name} differ"


def _flat_to_batched(flat_idx, B: int, n: int, per: int):
    """Indices into a flat (B * n) cloud, ``per`` consecutive ones per cloud -> (B, per) indices into each cloud."""
    offsets = torch.arange(B, device=flat_idx.device)[:, None] * n
    return flat_idx.view(B, per) - offsets


def _interp_weights(dist):
    w = 1.0 / (dist + 1e-8)
    return w / w.sum(-1, keepdim=True)


def _fps_case(device: str, quick: bool, cloud, g) -> Case:
    """Farthest point sampling (PointNet++ sampling layer sizes)."""
    gpu = device == "cuda"
    B, N, K = (4, 1024, 256) if quick else ((32, 8192, 2048) if gpu else (16, 4096, 1024))
    pts = cloud(B, N, 3)
    impls = [Impl("pvf.sample_farthest_points", lambda: ops.sample_farthest_points(pts, K=K), "ours"),
             _candidate("pvf.sample_farthest_points", ["sample_farthest_points"],
                        lambda: ops.sample_farthest_points(pts, K=K)),
             Impl("reference (vectorised loop)", lambda: ref.sample_farthest_points_idx(pts, None, None, K),
                  "reference")]
    skipped: list = []
    flat, batch = pts.reshape(-1, 3), torch.arange(B, device=device).repeat_interleave(N)

    def ours_idx():
        return ops.sample_farthest_points(pts, K=K)[1]

    def cluster_rows(tc):
        def run():
            return tc.fps(flat, batch, ratio=K / N, random_start=False, batch_size=B)

        def check():
            out = run()
            per = out.numel() // B  # ceil(ratio * N) per cloud: K, or K + 1 where K / N rounds up in float32
            return _differ("idx", ours_idx(), _flat_to_batched(out, B, N, per)[:, :K])
        return Impl("torch_cluster.fps", run, check=check,
                    semantics="flat (B*N, 3) layout with a batch vector; samples ceil(ratio*N) per cloud "
                              "(ratio=K/N; the first K compared); random_start=False starts at point 0 as ours "
                              "(its default random_start=True would not)")

    def p3d_rows(p3d):
        def check():
            return _differ("idx", ours_idx(), p3d.sample_farthest_points(pts, K=K)[1])
        return Impl("pytorch3d.sample_farthest_points", lambda: p3d.sample_farthest_points(pts, K=K), check=check)

    impls += peer(skipped, "torch_cluster.fps", "torch_cluster", cluster_rows, unusable=_cluster_unusable(device))
    impls += peer(skipped, "pytorch3d.sample_farthest_points", "pytorch3d.ops", p3d_rows, install=_P3D_INSTALL)
    return Case("pointcloud", "sample_farthest_points", dict(B=B, N=N, K=K, D=3), impls,
                   flops=B * K * N * 3 * 3.0, bound="compute", skipped=skipped,
                   goals=[("reference (vectorised loop)", 100.0)] + _cluster_goal("torch_cluster.fps", device),
                   note="FLOPs: one 3-D distance update (3 sub, 3 mul/add) per point per sample.")


def _knn_case(device: str, quick: bool, cloud, g) -> Case:
    """k nearest neighbours, and the cdist + topk idiom it replaces."""
    gpu = device == "cuda"
    B, P, K = (2, 1024, 16) if quick else ((16, 8192, 16) if gpu else (8, 4096, 16))
    p1, p2 = cloud(B, P, 3), cloud(B, P, 3)
    impls = [Impl("pvf.knn_points", lambda: ops.knn_points(p1, p2, K=K), "ours"),
             _candidate("pvf.knn_points", ["knn_points"], lambda: ops.knn_points(p1, p2, K=K)),
             Impl("torch.cdist + topk", lambda: torch.cdist(p1, p2).topk(K, dim=2, largest=False)),
             Impl("reference (diff^2 + sort)", lambda: ref.knn_points_idx(p1, p2, None, None, K), "reference")]
    skipped: list = []
    bx = torch.arange(B, device=device).repeat_interleave(P)

    def ours_knn():
        return ops.knn_points(p1, p2, K=K)

    def cluster_rows(tc):
        def run():
            return tc.knn(p2.reshape(-1, 3), p1.reshape(-1, 3), K, bx, bx, batch_size=B)

        def check():
            row, col = run()
            if not torch.equal(row, torch.arange(B * P, device=device).repeat_interleave(K)):
                return "neighbours not grouped by query point"
            return _differ("idx", ours_knn().idx, _flat_to_batched(col, B, P, P * K).view(B, P, K))
        return Impl("torch_cluster.knn", run, check=check,
                    semantics="indices only (no distances), flat (B*P, 3) layout with batch vectors, as an "
                              "edge list (2, B*P1*K)")

    def keops_rows(pykeops):
        from pykeops.torch import LazyTensor

        def run():
            d2 = ((LazyTensor(p1[:, :, None, :]) - LazyTensor(p2[:, None, :, :])) ** 2).sum(-1)
            return d2.Kmin_argKmin(K, dim=2)

        def check():
            dists, idx = run()
            ours = ours_knn()
            diff = _differ("idx", ours.idx, idx)
            if diff is None and not torch.allclose(dists, ours.dists, rtol=1e-5, atol=1e-6):
                diff = f"dists differ by up to {float((dists - ours.dists).abs().max()):.3g}"
            return diff
        return Impl("pykeops LazyTensor.Kmin_argKmin", run, check=check,
                    semantics="the same values as ours (squared distances, indices); brute force over all "
                              "pairs, JIT-compiled on first use (the warm-up call)")

    def p3d_rows(p3d):
        def check():
            return _differ("idx", ours_knn().idx, p3d.knn_points(p1, p2, K=K).idx)
        return Impl("pytorch3d.knn_points", lambda: p3d.knn_points(p1, p2, K=K), check=check)

    impls += peer(skipped, "torch_cluster.knn", "torch_cluster", cluster_rows, unusable=_cluster_unusable(device))
    impls += peer(skipped, "pykeops LazyTensor.Kmin_argKmin", "pykeops", keops_rows, dtype=p1.dtype,
                  dtypes=(torch.float32, torch.float64), unusable=_keops_unusable(device))
    impls += peer(skipped, "pytorch3d.knn_points", "pytorch3d.ops", p3d_rows, install=_P3D_INSTALL)
    return Case("pointcloud", "knn_points", dict(B=B, P1=P, P2=P, K=K, D=3), impls,
                   flops=B * P * P * 3 * 3.0, bound="compute",
                   goals=[("torch.cdist + topk", 12.0 if device == "cuda" else 25.0)]
                   + _cluster_goal("torch_cluster.knn", device),
                   measure_memory=True, skipped=skipped,
                   note="FLOPs are brute-force equivalent (B*P1*P2*9); a spatial index does less work, so "
                        "the share of the matmul ceiling can exceed what brute force could reach.")


def _ball_query_case(device: str, quick: bool, cloud, g) -> Case:
    """Ball query with neighbour coordinates."""
    gpu = device == "cuda"
    B, P1, P2, K, r = (2, 256, 1024, 32, 0.2) if quick else ((16, 2048, 8192, 32, 0.2) if gpu else
                                                              (8, 1024, 4096, 32, 0.2))
    q, p = cloud(B, P1, 3), cloud(B, P2, 3)
    impls = [Impl("pvf.ball_query", lambda: ops.ball_query(q, p, K=K, radius=r), "ours"),
             _candidate("pvf.ball_query", ["ball_query"], lambda: ops.ball_query(q, p, K=K, radius=r)),
             Impl("reference (cdist, mask, sort)", lambda: ref.ball_query_idx(q, p, None, None, K, r), "reference")]
    skipped: list = []
    bq = torch.arange(B, device=device).repeat_interleave(P1)
    bp = torch.arange(B, device=device).repeat_interleave(P2)

    def ours_idx():
        return ops.ball_query(q, p, K=K, radius=r).idx

    def cluster_rows(tc):
        def run():
            return tc.radius(p.reshape(-1, 3), q.reshape(-1, 3), r, bp, bq, max_num_neighbors=K, batch_size=B)

        def check():
            return _same_balls(ours_idx(), run(), B, P1, P2, K)
        return Impl("torch_cluster.radius", run, check=check,
                    semantics="indices only (no neighbour coordinates or distances), as an edge list; where a "
                              "ball holds more than K points it keeps K of them in its KD-tree's order, not the "
                              "first K in index order (compared: the neighbour count of every query, and the "
                              "neighbour sets of the balls that hold fewer than K points)")

    def p3d_rows(p3d):
        def check():
            return _differ("idx", ours_idx(), p3d.ball_query(q, p, K=K, radius=r).idx)
        return Impl("pytorch3d.ball_query", lambda: p3d.ball_query(q, p, K=K, radius=r), check=check)

    impls += peer(skipped, "torch_cluster.radius", "torch_cluster", cluster_rows, unusable=_cluster_unusable(device))
    impls += peer(skipped, "pytorch3d.ball_query", "pytorch3d.ops", p3d_rows, install=_P3D_INSTALL)
    return Case("pointcloud", "ball_query", dict(B=B, P1=P1, P2=P2, K=K, radius=r), impls,
                   flops=B * P1 * P2 * 3 * 3.0, bound="compute", skipped=skipped,
                   goals=[("reference (cdist, mask, sort)", 80.0 if device == "cuda" else 120.0)]
                   + _cluster_goal("torch_cluster.radius", device),
                   note="Includes the neighbour coordinates (return_nn=True). FLOPs brute-force equivalent.")


def _same_balls(ours_idx, edges, B: int, P1: int, P2: int, K: int) -> Optional[str]:
    """Compares a (2, E) edge list (query, point) over flat clouds with ours (B, P1, K) -1-padded: the same
    number of neighbours for every query, the same neighbours for every query with fewer than K."""
    row, col = edges
    counts = torch.bincount(row, minlength=B * P1)
    ours_counts = (ours_idx >= 0).sum(-1).reshape(-1)
    if not torch.equal(counts, ours_counts):
        return f"{int((counts != ours_counts).sum())} of {B * P1} queries have another neighbour count"
    partial = ours_counts < K
    keep = partial[row]
    theirs = torch.sort(row[keep] * (B * P2) + col[keep]).values
    query = torch.arange(B * P1, device=row.device).view(B, P1, 1).expand(B, P1, K)
    flat = ours_idx + (torch.arange(B, device=row.device) * P2).view(B, 1, 1)
    mine = (ours_idx >= 0) & partial.view(B, P1, 1)
    ours_keys = torch.sort((query * (B * P2) + flat)[mine]).values
    if not torch.equal(theirs, ours_keys):
        return "the neighbours of balls with fewer than K points differ"
    return None


def _feature_propagation_case(device: str, quick: bool, cloud, g) -> Case:
    """Feature propagation: three_nn + inverse-distance weights + three_interpolate."""
    gpu = device == "cuda"
    B, n, m, C = (2, 1024, 256, 32) if quick else ((16, 8192, 2048, 128) if gpu else (8, 4096, 1024, 128))
    unknown, known = cloud(B, n, 3), cloud(B, m, 3)
    feats = torch.randn(B, C, m, generator=g).to(device)

    def ours_fp():
        d, i = ops.three_nn(unknown, known)
        return ops.three_interpolate(feats, i, _interp_weights(d))

    def ref_fp():
        d, i = ref.knn_points_idx(unknown, known, None, None, 3)
        return ref.three_interpolate(feats, i, _interp_weights(d.sqrt()))

    def cdist_fp():
        d, i = torch.cdist(unknown, known).topk(3, dim=2, largest=False)
        w = _interp_weights(d)
        gathered = torch.gather(feats, 2, i.reshape(B, 1, n * 3).expand(B, C, n * 3)).view(B, C, n, 3)
        return (gathered * w[:, None]).sum(-1)

    return Case("pointcloud", "three_nn+three_interpolate", dict(B=B, n=n, m=m, C=C),
                   [Impl("pvf.three_nn + three_interpolate", ours_fp, "ours"),
                    _candidate("pvf.three_nn + three_interpolate", ["knn_points", "three_interpolate"],
                               ours_fp),
                    Impl("reference (diff^2 + sort, gather)", ref_fp, "reference"),
                    Impl("torch.cdist + topk + gather", cdist_fp)],
                   bytes=4.0 * B * C * (m + n) + 4.0 * B * (n + m) * 3, bound="memory",
                   goals=[("reference (diff^2 + sort, gather)", 5.0)]
                   + ([("torch.cdist + topk + gather", 20.0)] if device == "cpu" else []),
                   note="Bytes: features in, interpolated features out, both clouds.")


def _grouping_case(device: str, quick: bool, cloud, g) -> Case:
    """grouping_operation: memory bound."""
    gpu = device == "cuda"
    B, C, N, M, S = (2, 32, 1024, 256, 16) if quick else ((16, 128, 8192, 2048, 32) if gpu else (8, 64, 4096, 1024, 32))
    feats = torch.randn(B, C, N, generator=g).to(device)
    gidx = torch.randint(0, N, (B, M, S), generator=g).to(device)
    return Case("pointcloud", "grouping_operation", dict(B=B, C=C, N=N, M=M, S=S),
                   [Impl("pvf.grouping_operation", lambda: ops.grouping_operation(feats, gidx), "ours"),
                    _candidate("pvf.grouping_operation", ["gather_points"],
                               lambda: ops.grouping_operation(feats, gidx)),
                    Impl("torch.gather", lambda: torch.gather(feats, 2, gidx.view(B, 1, M * S).expand(B, C, M * S))
                         .view(B, C, M, S), "reference")],
                   bytes=4.0 * B * C * M * S * 2 + 8.0 * B * M * S, bound="memory",
                   goals=[("torch.gather", 1.0)] if device == "cuda" else [])


def _chamfer_case(device: str, quick: bool, cloud, g) -> Case:
    """Chamfer distance as a training loss (forward + backward)."""
    gpu = device == "cuda"
    B, P = (2, 1024) if quick else ((16, 8192) if gpu else (8, 4096))
    x = cloud(B, P, 3).requires_grad_()
    y = cloud(B, P, 3).requires_grad_()

    def ours_chamfer():
        ops.chamfer_distance(x, y)[0].backward()

    def cdist_chamfer():
        d = torch.cdist(x, y) ** 2
        (d.min(2).values.mean(1) + d.min(1).values.mean(1)).mean().backward()

    return Case("pointcloud", "chamfer_distance fwd+bwd", dict(B=B, P=P),
                   [Impl("pvf.chamfer_distance", ours_chamfer, "ours"),
                    _candidate("pvf.chamfer_distance", ["knn_points"], ours_chamfer),
                    Impl("torch.cdist chamfer", cdist_chamfer, "reference")],
                   flops=2 * B * P * P * 9.0, bound="compute", measure_memory=True,
                   goals=[("torch.cdist chamfer", 10.0)] if device == "cuda" else [])


def cases(device: str, quick: bool) -> list[Case]:
    g = torch.Generator().manual_seed(0)

    def cloud(*shape):
        return torch.rand(*shape, generator=g).to(device)

    # One function per case, so that every implementation closes over its own case's tensors and sizes.
    return [make(device, quick, cloud, g) for make in (_fps_case, _knn_case, _ball_query_case,
                                                       _feature_propagation_case, _grouping_case, _chamfer_case)]
