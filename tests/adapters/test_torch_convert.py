"""The shared torch machinery: layouts, dtype round trips, output checks, state helpers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
import torch

from normspec.adapters import ALL_DTYPES, DTypeName, WrongOutput
from normspec.adapters._torch import (
    BatchNormTensors,
    from_torch,
    parameter_dtype,
    read_state,
    restored,
    to_torch,
    torch_dtype,
    write_state,
)
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics

CPU = torch.device("cpu")


def _values(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 0.25 - 3.0


def _views() -> dict[str, np.ndarray]:
    base = _values((4, 3, 5, 6))
    return {
        "contiguous": base,
        "strided": _values((8, 3, 5, 12))[::2, :, :, ::2],
        "channels_last": np.ascontiguousarray(base.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
        "fortran": np.asfortranarray(base),
        "offset": _values((5, 4, 5, 6))[1:, 1:],
        "broadcast": np.broadcast_to(_values((1, 3, 1, 6)), (4, 3, 5, 6)),
    }


@pytest.mark.parametrize("layout", list(_views()))
def test_to_torch_keeps_strides_and_values(layout: str) -> None:
    array = _views()[layout]
    tensor = to_torch(array, torch.float64, CPU)
    assert tensor.stride() == tuple(s // 8 for s in array.strides)
    assert tensor.is_contiguous() == array.flags.c_contiguous
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_channels_last_arrives_in_channels_last_memory_format() -> None:
    array = _views()["channels_last"]
    for name in ALL_DTYPES:
        tensor = to_torch(array, torch_dtype(name), CPU)
        assert tensor.is_contiguous(memory_format=torch.channels_last)
        assert not tensor.is_contiguous()


def test_negative_strides_give_a_dense_copy_in_the_same_axis_order() -> None:
    array = np.asfortranarray(_values((4, 3, 5)))[::-1, :, ::-1]
    tensor = to_torch(array, torch.float32, CPU)
    assert tensor.stride() == (1, 4, 12)
    np.testing.assert_array_equal(tensor.double().numpy(), array)


def test_to_torch_never_shares_memory_with_the_array() -> None:
    array = _values((4, 3))
    tensor = to_torch(array, torch.float64, CPU)
    tensor.add_(1.0)
    np.testing.assert_array_equal(array, _values((4, 3)))


def test_empty_arrays_convert() -> None:
    tensor = to_torch(np.zeros((0, 3, 2)), torch.float16, CPU)
    assert tuple(tensor.shape) == (0, 3, 2) and tensor.dtype == torch.float16


@pytest.mark.parametrize("name", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "channels_last"])
def test_dtype_round_trip_is_exact(name: DTypeName, layout: str) -> None:
    rng = np.random.default_rng(7)
    dense = round_to(rng.standard_normal((4, 3, 5, 6)) * 100.0, name)
    array = {
        "contiguous": dense,
        "strided": np.repeat(dense, 2, axis=3)[..., ::2],
        "channels_last": np.ascontiguousarray(dense.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
    }[layout]
    tensor = to_torch(array, torch_dtype(name), CPU)
    assert tensor.dtype == torch_dtype(name)
    back = from_torch(tensor, shape=array.shape, dtype=torch_dtype(name), what="x")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, array)


def test_from_torch_rejects_wrong_dtype_shape_and_type() -> None:
    tensor = torch.zeros(4, 3, dtype=torch.float32)
    with pytest.raises(WrongOutput, match=r"dtype torch\.float32, expected torch\.float64"):
        from_torch(tensor, shape=(4, 3), dtype=torch.float64, what="the output")
    with pytest.raises(WrongOutput, match=r"shape \(4, 3\), expected \(4, 3, 1\)"):
        from_torch(tensor, shape=(4, 3, 1), dtype=torch.float32, what="the output")
    with pytest.raises(WrongOutput, match=r"tuple, not a torch\.Tensor"):
        from_torch((tensor,), shape=(4, 3), dtype=torch.float32, what="the output")


def test_parameter_dtype_policies() -> None:
    assert parameter_dtype("float16", "float32") == torch.float32
    assert parameter_dtype("bfloat16", "float32") == torch.float32
    assert parameter_dtype("bfloat16", "input") == torch.bfloat16
    assert parameter_dtype("float64", "float32") == torch.float64
    with pytest.raises(ValueError, match="policy"):
        parameter_dtype("float16", "half")  # type: ignore[arg-type]


def _tensors(counter: bool = True) -> BatchNormTensors:
    return BatchNormTensors(
        weight=None,
        bias=None,
        running_mean=torch.zeros(3, dtype=torch.float32),
        running_var=torch.ones(3, dtype=torch.float32),
        num_batches_tracked=torch.tensor(0) if counter else None,
    )


def test_state_round_trip_through_buffers() -> None:
    tensors = _tensors()
    state = RunningStatistics(np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, 4.0]), 7)
    write_state(tensors, state, 3)
    assert tensors.running_mean is not None and tensors.running_mean.dtype == torch.float32
    assert tensors.num_batches_tracked is not None and int(tensors.num_batches_tracked) == 7
    back = read_state(tensors, 3, steps=0)
    np.testing.assert_array_equal(back.mean, state.mean)
    np.testing.assert_array_equal(back.var, state.var)
    assert back.steps == 7


def test_state_without_a_counter_reports_the_given_steps() -> None:
    tensors = _tensors(counter=False)
    assert read_state(tensors, 3, steps=4).steps == 4


def test_malformed_state_is_wrong_output() -> None:
    tensors = _tensors()
    assert tensors.running_var is not None
    tensors.running_var.fill_(-1.0)
    with pytest.raises(WrongOutput, match="non-negative"):
        read_state(tensors, 3, steps=0)
    with pytest.raises(WrongOutput, match=r"expected a floating-point vector of shape \(4,\)"):
        read_state(tensors, 4, steps=0)
    with pytest.raises(WrongOutput, match="no running_mean"):
        read_state(BatchNormTensors(None, None, None, None, None), 3, steps=0)


def test_restored_puts_tensors_back_even_after_an_error() -> None:
    tensor = torch.arange(3.0)
    with pytest.raises(RuntimeError), restored([tensor]):
        tensor.mul_(10.0)
        raise RuntimeError("boom")
    assert tensor.tolist() == [0.0, 1.0, 2.0]
