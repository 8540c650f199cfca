"""chamfer_distance against a direct float64 computation of PyTorch3D's definition."""
import pytest
import torch

from op_harness import BadInput, assert_close, check_compiled, gradcheck, run_bad_input
from pyvision_fast import ops, use_backend
from pyvision_fast.reference import pointcloud as ref


def _chamfer_direct(x, y, xl, yl, point_reduction="mean", batch_reduction="mean", weights=None, norm=2):
    """PyTorch3D's definition, one cloud at a time with Python loops (independent of the library's code)."""
    total = []
    for b in range(x.shape[0]):
        xb, yb = x[b, : xl[b]], y[b, : yl[b]]
        diff = xb[:, None] - yb[None]
        d = diff.abs().sum(-1) if norm == 1 else (diff ** 2).sum(-1)
        cx = d.min(1).values if len(yb) else torch.zeros(len(xb), dtype=x.dtype)
        cy = d.min(0).values if len(xb) else torch.zeros(len(yb), dtype=x.dtype)
        w = weights[b] if weights is not None else 1
        if point_reduction == "mean":
            v = cx.sum() / max(len(xb), 1) + cy.sum() / max(len(yb), 1)
        elif point_reduction == "max":  # the Hausdorff distance: each direction's largest term, then the larger
            v = torch.maximum(cx.max() if len(cx) else x.new_zeros(()), cy.max() if len(cy) else x.new_zeros(()))
        else:
            v = cx.sum() + cy.sum()
        total.append(v * w)
    total = torch.stack(total)
    if batch_reduction == "mean":
        return total.sum() / (weights.sum() if weights is not None else len(total))
    if batch_reduction == "sum":
        return total.sum()
    return total


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("point_reduction", ["mean", "sum", "max"])
@pytest.mark.parametrize("batch_reduction", ["mean", "sum", None])
def test_matches_definition(point_reduction, batch_reduction, norm):
    torch.manual_seed(7)
    x = torch.rand(3, 40, 3, dtype=torch.float64)
    y = torch.rand(3, 30, 3, dtype=torch.float64)
    xl, yl = torch.tensor([40, 11, 25]), torch.tensor([30, 30, 5])
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got, normals = ops.chamfer_distance(x, y, xl, yl, weights=weights, batch_reduction=batch_reduction,
                                        point_reduction=point_reduction, norm=norm)
    assert normals is None
    expected = _chamfer_direct(x, y, xl, yl, point_reduction, batch_reduction, weights, norm)
    assert_close(got, expected)
    assert_close(ref.chamfer_distance(x, y, xl, yl, weights, batch_reduction, point_reduction, norm), expected)


def test_norm1_and_max_by_hand():
    """x = {(0,0), (3,0)}, y = {(1,1)}: L1 terms x->y 2 and 3, y->x 2; squared: 2, 5 and 2."""
    x = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    assert ops.chamfer_distance(x, y, norm=1)[0].item() == pytest.approx(2.5 + 2.0)
    assert ops.chamfer_distance(x, y, norm=1, point_reduction="sum")[0].item() == pytest.approx(5.0 + 2.0)
    assert ops.chamfer_distance(x, y, norm=1, point_reduction="max")[0].item() == pytest.approx(3.0)
    assert ops.chamfer_distance(x, y, point_reduction="max")[0].item() == pytest.approx(5.0)
    assert ops.chamfer_distance(x, y, point_reduction="max", single_directional=True)[0].item() == pytest.approx(5.0)
    assert ops.chamfer_distance(y, x, point_reduction="max", single_directional=True)[0].item() == pytest.approx(2.0)


def test_max_reduction_gradcheck_and_norm1_gradcheck():
    torch.manual_seed(3)
    x = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 7, 3, dtype=torch.float64, requires_grad=True)
    gradcheck(lambda a, b: ops.chamfer_distance(a, b, point_reduction="max")[0], (x, y))
    gradcheck(lambda a, b: ops.chamfer_distance(a, b, norm=1)[0], (x, y))


@pytest.mark.parametrize("batch_reduction", ["mean", "sum", None])
def test_all_zero_weights_give_zero_not_none(batch_reduction):
    """PyTorch3D returns zeros for both the distance and the normal term when every weight is 0."""
    x = torch.rand(3, 5, 3, requires_grad=True)
    y = torch.rand(3, 4, 3)
    dist, normals = ops.chamfer_distance(x, y, weights=torch.zeros(3), batch_reduction=batch_reduction)
    shape = () if batch_reduction else (3,)
    for t in (dist, normals):
        assert t is not None and t.shape == shape and (t == 0).all()
    dist.sum().backward()
    assert (x.grad == 0).all()
    (dx, dy), (nx, ny) = ops.chamfer_distance(x, y, weights=torch.zeros(3), point_reduction=None,
                                              batch_reduction=None)
    assert dx.shape == nx.shape == (3, 5) and dy.shape == ny.shape == (3, 4)
    assert (dx == 0).all() and (dy == 0).all()


def test_pointclouds_object_is_used():
    """A PyTorch3D Pointclouds (duck-typed: points_padded / num_points_per_cloud / normals_padded)."""

    class Clouds:
        def __init__(self, pts, lengths):
            self.pts, self.lengths = pts, lengths

        def points_padded(self):
            return self.pts

        def num_points_per_cloud(self):
            return self.lengths

        def normals_padded(self):
            return None

    x, y = torch.rand(2, 8, 3, dtype=torch.float64), torch.rand(2, 6, 3, dtype=torch.float64)
    xl, yl = torch.tensor([8, 3]), torch.tensor([2, 6])
    got, _ = ops.chamfer_distance(Clouds(x, xl), Clouds(y, yl))
    assert_close(got, _chamfer_direct(x, y, xl, yl))


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
    (dict(norm=3), "norm must be 1"),
    (dict(batch_reduction="max"), "batch_reduction"),
    (dict(point_reduction="median"), "point_reduction"),
    (dict(point_reduction=None), "batch_reduction must be None"),
    (dict(weights=torch.tensor([1.0])), "weights must have shape"),
    (dict(weights=torch.ones(2, 1)), "'weights' must have 1 dimensions"),
    (dict(weights=torch.tensor([1.0, -1.0])), "non-negative"),
    (dict(x_normals=torch.rand(2, 5, 3)), "both x_normals and y_normals"),
    (dict(x_normals=torch.rand(2, 5, 3), y_normals=torch.rand(2, 5, 3)), "'y_normals' must have the shape"),
    (dict(x_normals=torch.rand(2, 5, 3), y_normals=torch.rand(2, 6, 3), point_reduction="max"),
     "normals must be None when point_reduction is 'max'"),
    (dict(x_lengths=torch.tensor([6, 1])), "'x_lengths' has a length 6 outside"),
    (dict(y_lengths=torch.tensor([1, 2, 3])), "'y_lengths' has size 3 in dimension 0 but the batch size is 2"),
])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_arguments(kwargs, match, backend):
    with use_backend(backend), pytest.raises(ValueError, match=match):
        ops.chamfer_distance(torch.rand(2, 5, 3), torch.rand(2, 6, 3), **kwargs)


def _bad_cases():
    x, y = torch.rand(2, 5, 3), torch.rand(2, 6, 3)
    return [
        BadInput("list input", lambda: ops.chamfer_distance([x[0], x[1]], y), ValueError,
                 "x must be a torch.Tensor of shape"),
        BadInput("list y", lambda: ops.chamfer_distance(x, y.tolist()), ValueError, "y must be a torch.Tensor"),
        BadInput("rank", lambda: ops.chamfer_distance(x[0], y), ValueError, "'x' must have 3 dimensions"),
        BadInput("batch mismatch", lambda: ops.chamfer_distance(x, y[:1]), ValueError, "batch size of x"),
        BadInput("D mismatch", lambda: ops.chamfer_distance(x, y[..., :2]), ValueError, "point dimension D of x"),
        BadInput("dtype mix", lambda: ops.chamfer_distance(x, y.double()), TypeError, "same dtype"),
        BadInput("int points", lambda: ops.chamfer_distance(x.long(), y.long()), TypeError, "float32 or float64"),
        BadInput("weights int", lambda: ops.chamfer_distance(x, y, weights=torch.ones(2, dtype=torch.long)),
                 TypeError, "'weights' must be float32 or float64"),
    ]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("case", _bad_cases(), ids=str)
def test_bad_inputs(case, backend):
    with use_backend(backend):
        run_bad_input(case)
