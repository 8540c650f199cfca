"""Point-cloud cases, with the shapes of PointNet++-style workloads (PointCAT's backbones)."""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch

from pyvision_fast import ops
from pyvision_fast.reference import pointcloud as ref

from .harness import Case, Impl, candidate_impl


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _candidate(name: str, op_names: list[str], fn) -> Optional[Impl]:
    """The GPU candidates' row, ``name`` + " (candidate)", while op_names have one (a peer of ours)."""
    return candidate_impl(name + " (candidate)", op_names, fn)


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
    if _has("torch_cluster"):
        import torch_cluster

        flat, batch = pts.reshape(-1, 3), torch.arange(B, device=device).repeat_interleave(N)
        impls.append(Impl("torch_cluster.fps", lambda: torch_cluster.fps(flat, batch, ratio=K / N,
                                                                          random_start=False)))
    if _has("pytorch3d"):
        from pytorch3d.ops import sample_farthest_points as p3d_fps

        impls.append(Impl("pytorch3d.sample_farthest_points", lambda: p3d_fps(pts, K=K)))
    return Case("pointcloud", "sample_farthest_points", dict(B=B, N=N, K=K, D=3), impls,
                   flops=B * K * N * 3 * 3.0, bound="compute",
                   goals=[("reference (vectorised loop)", 100.0 if device == "cuda" else 50.0)],
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
    if _has("torch_cluster"):
        import torch_cluster

        bx = torch.arange(B, device=device).repeat_interleave(P)
        impls.append(Impl("torch_cluster.knn", lambda: torch_cluster.knn(p2.reshape(-1, 3), p1.reshape(-1, 3), K,
                                                                          bx, bx)))
    if _has("pytorch3d"):
        from pytorch3d.ops import knn_points as p3d_knn

        impls.append(Impl("pytorch3d.knn_points", lambda: p3d_knn(p1, p2, K=K)))
    return Case("pointcloud", "knn_points", dict(B=B, P1=P, P2=P, K=K, D=3), impls,
                   flops=B * P * P * 3 * 3.0, bound="compute", goals=[("torch.cdist + topk", 12.0)],
                   measure_memory=True,
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
    if _has("torch_cluster"):
        import torch_cluster

        bq = torch.arange(B, device=device).repeat_interleave(P1)
        bp = torch.arange(B, device=device).repeat_interleave(P2)
        impls.append(Impl("torch_cluster.radius", lambda: torch_cluster.radius(p.reshape(-1, 3), q.reshape(-1, 3), r,
                                                                               bp, bq, max_num_neighbors=K)))
    if _has("pytorch3d"):
        from pytorch3d.ops import ball_query as p3d_ball

        impls.append(Impl("pytorch3d.ball_query", lambda: p3d_ball(q, p, K=K, radius=r)))
    return Case("pointcloud", "ball_query", dict(B=B, P1=P1, P2=P2, K=K, radius=r), impls,
                   flops=B * P1 * P2 * 3 * 3.0, bound="compute",
                   goals=[("reference (cdist, mask, sort)", 80.0 if device == "cuda" else 60.0)],
                   note="Includes the neighbour coordinates (return_nn=True). FLOPs brute-force equivalent.")


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
                   goals=[("reference (diff^2 + sort, gather)", 5.0)],
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
