"""chamfer_distance against a direct float64 computation of PyTorch3D's definition."""
import pytest
import torch

from op_harness import assert_close, check_compiled, gradcheck
from pyvision_fast import ops


def _chamfer_direct(x, y, xl, yl, point_reduction="mean", batch_reduction="mean", weights=None):
    total = []
    for b in range(x.shape[0]):
        xb, yb = x[b, : xl[b]], y[b, : yl[b]]
        d = ((xb[:, None] - yb[None]) ** 2).sum(-1)
        cx = d.min(1).values if len(yb) else torch.zeros(len(xb), dtype=x.dtype)
        cy = d.min(0).values if len(xb) else torch.zeros(len(yb), dtype=x.dtype)
        if point_reduction == "mean":
            v = cx.sum() / max(len(xb), 1) + cy.sum() / max(len(yb), 1)
        else:
            v = cx.sum() + cy.sum()
        total.append(v * (weights[b] if weights is not None else 1))
    total = torch.stack(total)
    if batch_reduction == "mean":
        return total.sum() / (weights.sum() if weights is not None else len(total))
    if batch_reduction == "sum":
        return total.sum()
    return total


@pytest.mark.parametrize("point_reduction", ["mean", "sum"])
@pytest.mark.parametrize("batch_reduction", ["mean", "sum", None])
def test_matches_definition(point_reduction, batch_reduction):
    torch.manual_seed(7)
    x = torch.rand(3, 40, 3, dtype=torch.float64)
    y = torch.rand(3, 30, 3, dtype=torch.float64)
    xl, yl = torch.tensor([40, 11, 25]), torch.tensor([30, 30, 5])
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got, normals = ops.chamfer_distance(x, y, xl, yl, weights=weights, batch_reduction=batch_reduction,
                                        point_reduction=point_reduction)
    assert normals is None
    assert_close(got, _chamfer_direct(x, y, xl, yl, point_reduction, batch_reduction, weights))


def test_normals_term_and_single_direction():
    torch.manual_seed(8)
    x, y = torch.rand(2, 20, 3, dtype=torch.float64), torch.rand(2, 25, 3, dtype=torch.float64)
    xn = torch.nn.functional.normalize(torch.randn(2, 20, 3, dtype=torch.float64), dim=-1)
    yn = torch.nn.functional.normalize(torch.randn(2, 25, 3, dtype=torch.float64), dim=-1)
    _, normals = ops.chamfer_distance(x, y, x_normals=xn, y_normals=yn)
    nn_xy = ((x[:, :, None] - y[:, None]) ** 2).sum(-1).argmin(2)
    nn_yx = ((y[:, :, None] - x[:, None]) ** 2).sum(-1).argmin(2)
    cos_x = (xn * torch.gather(yn, 1, nn_xy[..., None].expand(-1, -1, 3))).sum(-1).abs()
    cos_y = (yn * torch.gather(xn, 1, nn_yx[..., None].expand(-1, -1, 3))).sum(-1).abs()
    assert_close(normals, ((1 - cos_x).mean(1) + (1 - cos_y).mean(1)).mean())
    single, _ = ops.chamfer_distance(x, y, single_directional=True)
    assert_close(single, ((x[:, :, None] - y[:, None]) ** 2).sum(-1).min(2).values.mean())


def test_per_point_terms():
    x, y = torch.rand(2, 10, 3), torch.rand(2, 12, 3)
    (dx, dy), _ = ops.chamfer_distance(x, y, point_reduction=None, batch_reduction=None)
    assert dx.shape == (2, 10) and dy.shape == (2, 12)


def test_gradcheck():
    x = torch.rand(2, 7, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 9, 3, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda a, b: ops.chamfer_distance(a, b)[0], (x, y))


def test_torch_compile():
    x = torch.rand(2, 20, 3, requires_grad=True)
    y = torch.rand(2, 25, 3, requires_grad=True)
    check_compiled(lambda a, b: ops.chamfer_distance(a, b)[0], x, y)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm=1), "only norm=2"),
    (dict(batch_reduction="max"), "batch_reduction"),
    (dict(point_reduction="max"), "point_reduction"),
    (dict(point_reduction=None), "batch_reduction must be None"),
    (dict(weights=torch.tensor([1.0])), "weights must have shape"),
    (dict(weights=torch.tensor([1.0, -1.0])), "non-negative"),
    (dict(x_normals=torch.rand(2, 5, 3)), "both x_normals and y_normals"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ops.chamfer_distance(torch.rand(2, 5, 3), torch.rand(2, 6, 3), **kwargs)
