"""ONNX translations of the point-cloud ops, made of standard ONNX operators only (opset 18).

Each function receives the custom op's arguments as ONNX values (optional tensors as None, ints and floats
as Python numbers) and builds the equivalent subgraph:

* ``knn_points``: pairwise squared distances, masked by the lengths, then TopK (smallest, sorted; ONNX TopK
  breaks ties by lower index, as the kernels do).
* ``ball_query``: distances, the in-radius mask, and TopK on index keys (inside points keyed by their index,
  outside points by index + P2), so the first K inside points come out in index order.
* ``sample_farthest_points``: a Loop of K iterations with ArgMax. Its single loop-carried value packs the
  running distances and the selected indices (stored as floats: exact below 2^24 points in float32).
* ``gather_points`` / ``three_interpolate``: GatherElements on expanded indices (+ Mul and ReduceSum).

The distance matrices are O(P1 * P2): fine for inference graphs, and what TensorRT fuses well.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

_INT64_MAX = np.iinfo(np.int64).max


def _static_dim(value, axis: int):
    """The size of ``value`` along ``axis`` if it is static, else None."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def _sq_dists(p1, p2):
    diff = op.Sub(op.Unsqueeze(p1, [2]), op.Unsqueeze(p2, [1]))
    return op.ReduceSum(op.Mul(diff, diff), [-1], keepdims=0)  # (B, P1, P2)


def _arange_like(x, axis: int):
    """int64 [0, x.shape[axis])."""
    n = op.Squeeze(op.Shape(x, start=axis, end=axis + 1), [0])
    return op.Range(op.Constant(value_int=0), n, op.Constant(value_int=1))


def _valid_mask(p1, p2, lengths1, lengths2):
    """(B, P1, P2) bool: both points inside their cloud's length, or None without lengths."""
    mask = None
    if lengths2 is not None:
        j = op.Unsqueeze(_arange_like(p2, 1), [0, 1])
        mask = op.Less(j, op.Unsqueeze(lengths2, [1, 2]))
    if lengths1 is not None:
        i = op.Unsqueeze(_arange_like(p1, 1), [0, 2])
        m1 = op.Less(i, op.Unsqueeze(lengths1, [1, 2]))
        mask = m1 if mask is None else op.And(mask, m1)
    return mask


def _pad_last(x, pad: int, value):
    """Appends ``pad`` entries of ``value`` along the last axis."""
    shape = op.Concat(op.Shape(x, start=0, end=2), op.Constant(value_ints=[pad]), axis=0)
    return op.Concat(x, op.Expand(op.CastLike(op.Constant(value_float=float(value)), x), shape), axis=2)


def knn_points(p1, p2, lengths1, lengths2, K: int):
    d = _sq_dists(p1, p2)
    if lengths2 is not None:
        j = op.Unsqueeze(_arange_like(p2, 1), [0, 1])
        d = op.Where(op.Less(j, op.Unsqueeze(lengths2, [1, 2])), d, op.CastLike(op.Constant(value_float=np.inf), d))
    P2 = _static_dim(p2, 1)
    k = K if P2 is None else min(K, P2)
    dists, idx = op.TopK(d, op.Constant(value_ints=[k]), axis=-1, largest=0, sorted=1)
    if k < K:
        dists, idx = _pad_last(dists, K - k, 0.0), _pad_last(idx, K - k, 0)
    if lengths1 is not None or lengths2 is not None:
        keep = None
        kk = op.Unsqueeze(_arange_like(dists, 2), [0, 1])
        if lengths2 is not None:
            keep = op.Less(kk, op.Unsqueeze(lengths2, [1, 2]))
        if lengths1 is not None:
            i = op.Unsqueeze(_arange_like(p1, 1), [0, 2])
            m1 = op.Less(i, op.Unsqueeze(lengths1, [1, 2]))
            keep = m1 if keep is None else op.And(keep, m1)
        dists = op.Where(keep, dists, op.CastLike(op.Constant(value_float=0.0), dists))
        idx = op.Where(keep, idx, op.Constant(value_int=0))
    return dists, idx


def ball_query(p1, p2, lengths1, lengths2, K: int, radius: float):
    d = _sq_dists(p1, p2)
    inside = op.Less(d, op.CastLike(op.Constant(value_float=float(radius) ** 2), d))
    valid = _valid_mask(p1, p2, lengths1, lengths2)
    if valid is not None:
        inside = op.And(inside, valid)
    # Keys as float32 (exact below 2^24 points): TensorRT's TopK takes floating-point inputs.
    j = op.Cast(op.Unsqueeze(_arange_like(p2, 1), [0, 1]), to=ir.DataType.FLOAT)
    n2 = op.Cast(op.Shape(p2, start=1, end=2), to=ir.DataType.FLOAT)
    keys = op.Where(inside, j, op.Add(j, n2))
    P2 = _static_dim(p2, 1)
    k = K if P2 is None else min(K, P2)
    vals, order = op.TopK(keys, op.Constant(value_ints=[k]), axis=-1, largest=0, sorted=1)
    found = op.Less(vals, n2)
    idx = op.Where(found, order, op.Constant(value_int=-1))
    dists = op.Where(found, op.GatherElements(d, order, axis=2), op.CastLike(op.Constant(value_float=0.0), d))
    if k < K:
        dists, idx = _pad_last(dists, K - k, 0.0), _pad_last(idx, K - k, -1)
    return dists, idx


def gather_points(features, idx):
    shape = op.Concat(op.Shape(features, start=0, end=2), op.Shape(idx, start=1, end=2), axis=0)
    return op.GatherElements(features, op.Expand(op.Unsqueeze(idx, [1]), shape), axis=2)


def three_interpolate(features, idx, weight):
    B_C = op.Shape(features, start=0, end=2)
    flat = op.Reshape(idx, op.Constant(value_ints=[0, 1, -1]))  # (B, 1, N*3)
    gathered = op.GatherElements(features, op.Expand(flat, op.Concat(B_C, op.Shape(flat, start=2, end=3), axis=0)),
                                 axis=2)
    gathered = op.Reshape(gathered, op.Concat(B_C, op.Constant(value_ints=[-1, 3]), axis=0))  # (B, C, N, 3)
    return op.ReduceSum(op.Mul(gathered, op.Unsqueeze(weight, [1])), [-1], keepdims=0)


# -------------------------------------------------------------------- farthest point sampling

def _const(array) -> ir.Node:
    return ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.asarray(array)))])


_loop_ids = itertools.count()


def _fps_body(points, n1, state_type: ir.DataType) -> ir.Graph:
    """Loop body: state (B, N + K) = [distances | selected indices as floats]; select, record, update.

    Every value gets a name unique in the model (ONNX requires single assignment across subgraphs too)."""
    prefix = f"pvf_fps{next(_loop_ids)}_"
    k = ir.Value(name=prefix + "k", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape([]))
    cond = ir.Value(name=prefix + "cond_in", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    state_in = ir.Value(name=prefix + "state_in", type=ir.TensorType(state_type), shape=ir.Shape([None, None]))
    nodes: list[ir.Node] = []

    def add(node: ir.Node) -> ir.Node:
        for out in node.outputs:
            out.name = f"{prefix}{len(nodes)}"
        nodes.append(node)
        return node

    def call(op_type, *inputs, **attrs):
        attributes = [ir.convenience.convert_attribute(name, value) for name, value in attrs.items()]
        return add(ir.Node("", op_type, list(inputs), attributes)).outputs[0]

    c0 = add(_const(np.array([0], dtype=np.int64))).outputs[0]
    c1 = add(_const(np.array([1], dtype=np.int64))).outputs[0]
    c11 = add(_const(np.array([1, 1], dtype=np.int64))).outputs[0]
    cend = add(_const(np.array([_INT64_MAX], dtype=np.int64))).outputs[0]
    cneg = add(_const(np.array([-1], dtype=np.int64))).outputs[0]
    dist = call("Slice", state_in, c0, n1, c1)  # (B, N)
    sel = call("ArgMax", dist, axis=1, keepdims=1)  # (B, 1): the first farthest point
    b1 = call("Concat", call("Shape", state_in, start=0, end=1), c1, axis=0)
    col = call("Expand", call("Reshape", call("Add", k, n1), c11), b1)
    state = call("ScatterElements", state_in, col, call("Cast", sel, to=state_type), axis=1)
    d_dim = call("Shape", points, start=2, end=3)
    gidx = call("Expand", call("Unsqueeze", sel, cneg), call("Concat", b1, d_dim, axis=0))
    last = call("GatherElements", points, gidx, axis=1)  # (B, 1, D)
    diff = call("Sub", points, last)
    d = call("ReduceSum", call("Mul", diff, diff), cneg, keepdims=0)
    new_dist = call("Min", dist, d)  # padded points stay at -1
    rest = call("Slice", state, n1, cend, c1)
    state_out = call("Concat", new_dist, rest, axis=1)
    cond_out = call("Identity", cond)
    return ir.Graph([k, cond, state_in], [cond_out, state_out], nodes=nodes, name="fps_body")


def _record_loop(trip_count, state, body: ir.Graph, state_type: ir.DataType):
    """Appends ``Loop(trip_count, "", state)`` with ``body`` to the graph being recorded; returns its output.

    ``op.Loop`` cannot be used here: torch's ONNX recorder binds every positional argument to the variadic
    ``v_initial`` input (so M and cond would be carried too) and assumes one output for variadic ops. The node
    is therefore built directly and appended to the recorder's node list, which is how the recorder itself
    records every other op.
    """
    import onnxscript.evaluator

    recorder = onnxscript.evaluator.default()
    if not hasattr(recorder, "nodes"):
        raise RuntimeError("sample_farthest_points: ONNX translation must run inside torch.onnx.export(dynamo=True)")
    node = ir.Node("", "Loop", [trip_count, None, state], [ir.AttrGraph("body", body)], num_outputs=1)
    recorder.nodes.append(node)
    out = node.outputs[0]
    out.dtype = state_type
    return out


def sample_farthest_points(points, lengths, start, K: int):
    if points.dtype == ir.DataType.DOUBLE:
        state_type = ir.DataType.DOUBLE
    else:
        state_type = ir.DataType.FLOAT
        points = op.Cast(points, to=state_type)
    B = op.Shape(points, start=0, end=1)
    n1 = op.Shape(points, start=1, end=2)
    j = op.Unsqueeze(_arange_like(points, 1), [0])  # (1, N)
    # Initial distances: +inf at the start point so that ArgMax picks it first, the largest finite value
    # elsewhere (min() with any real distance replaces it), -1 for padded points (never selected).
    big = op.CastLike(op.Constant(value_float=float(np.finfo(np.float32).max)), points)
    inf = op.CastLike(op.Constant(value_float=np.inf), points)
    start_col = op.Constant(value_int=0) if start is None else op.Unsqueeze(start, [1])
    dist = op.Where(op.Equal(j, start_col), inf, big)
    dist = op.Expand(dist, op.Concat(B, n1, axis=0))
    if lengths is not None:
        dist = op.Where(op.Less(j, op.Unsqueeze(lengths, [1])), dist,
                        op.CastLike(op.Constant(value_float=-1.0), points))
    state = op.Concat(dist, op.Expand(op.CastLike(op.Constant(value_float=0.0), points),
                                      op.Concat(B, op.Constant(value_ints=[K]), axis=0)), axis=1)
    final = _record_loop(op.Constant(value_int=K), state, _fps_body(points, n1, state_type), state_type)
    idx = op.Cast(op.Slice(final, n1, op.Constant(value_ints=[_INT64_MAX]), op.Constant(value_ints=[1])),
                  to=ir.DataType.INT64)
    if lengths is not None:
        kk = op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Constant(value_int=K), op.Constant(value_int=1)), [0])
        idx = op.Where(op.Less(kk, op.Unsqueeze(lengths, [1])), idx, op.Constant(value_int=-1))
    return idx


def translations() -> dict:
    """{torch op overload: ONNX translation} for ``torch.onnx.export(custom_translation_table=...)``."""
    ops = torch.ops.pvf
    return {
        ops.knn_points.default: knn_points,
        ops.ball_query.default: ball_query,
        ops.sample_farthest_points.default: sample_farthest_points,
        ops.gather_points.default: gather_points,
        ops.three_interpolate.default: three_interpolate,
    }
