"""The public op API as a whole: what every op in pyvision_fast.ops does with arguments that are not tensors."""
import inspect

import numpy as np
import pytest
import torch

from pyvision_fast import ops

OPS = [name for name in ops.__all__ if name != "KNN"]


@pytest.mark.parametrize("name", OPS)
def test_numpy_array_argument_is_one_clear_type_error(name):
    """A NumPy array where a tensor goes: a TypeError of one line that names the op, the argument and the
    conversion, not the dispatcher's message with the whole array printed in it."""
    fn = getattr(ops, name)
    first = next(iter(inspect.signature(fn).parameters))
    array = np.zeros((2, 16, 3), np.float32)
    with pytest.raises(TypeError) as info:
        fn(array)
    message = str(info.value)
    assert f"pyvision_fast.ops.{name}: argument {first!r} is a numpy.ndarray" in message
    assert "torch.from_numpy" in message and "\n" not in message and "0., 0." not in message
    from pyvision_fast import array  # the NumPy entry point is named where one exists

    assert (f"pyvision_fast.array.{name}" in message) == hasattr(array, name)


def test_tensor_arguments_pass_through_unchanged():
    p1, p2 = torch.rand(1, 8, 3, dtype=torch.float64), torch.rand(1, 9, 3, dtype=torch.float64)
    dists, idx, _ = ops.knn_points(p1, p2, K=2)
    expected = torch.cdist(p1, p2).square().topk(2, largest=False)
    torch.testing.assert_close(dists, expected.values)
    assert torch.equal(idx, expected.indices)
    assert ops.knn_points.__doc__ and "p1" in str(inspect.signature(ops.knn_points))
