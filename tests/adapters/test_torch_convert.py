"""The shared torch machinery: layouts, dtype round trips, output checks, state helpers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
import torch

from normspec.adapters import ALL_DTYPES, DTypeName, LayerConfig, WrongOutput
from normspec.adapters.torch._torch import (
    BatchNormTensors,
    TorchLayer,
    differentiable,
    from_torch,
    parameter_dtype,
    restored,
    to_torch,
    torch_dtype,
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


class _Held(TorchLayer):
    """A layer over given tensors (its state only: no forward)."""

    def __init__(self, tensors: BatchNormTensors, num_features: int = 3) -> None:
        config = LayerConfig(num_features, 2, 1, "float64", 1e-5, 0.1)
        super().__init__(config, CPU, torch.float32)
        self.held = tensors

    def tensors(self) -> BatchNormTensors:
        return self.held

    def forward(self, x: torch.Tensor, *, training: bool) -> object:
        raise NotImplementedError


def test_state_round_trip_through_buffers() -> None:
    tensors = _tensors()
    layer = _Held(tensors)
    state = RunningStatistics(np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, 4.0]), 7)
    layer.set_state(state)
    assert tensors.running_mean is not None and tensors.running_mean.dtype == torch.float32
    assert tensors.num_batches_tracked is not None and int(tensors.num_batches_tracked) == 7
    back = layer.state()
    assert back is not None
    np.testing.assert_array_equal(back.mean, state.mean)
    np.testing.assert_array_equal(back.var, state.var)
    assert back.steps == 7


def test_state_without_a_counter_reports_the_steps_last_set() -> None:
    layer = _Held(_tensors(counter=False))
    layer.set_state(RunningStatistics(np.zeros(3), np.ones(3), 4))
    back = layer.state()
    assert back is not None and back.steps == 4


def test_the_state_is_reported_as_held_and_malformed_tensors_are_wrong_output() -> None:
    """A negative or NaN variance is the clauses' to judge (bn.params.no_nan_state), never
    a malformed state; a tensor of the wrong shape, or none, is."""
    tensors = _tensors()
    assert tensors.running_var is not None
    tensors.running_var.copy_(torch.tensor([-1.0, float("nan"), 2.0]))
    back = _Held(tensors).state()
    assert back is not None and back.var[0] == -1.0 and np.isnan(back.var[1])
    with pytest.raises(WrongOutput, match=r"expected a floating-point vector of shape \(4,\)"):
        _Held(tensors, num_features=4).state()
    with pytest.raises(WrongOutput, match="no running_mean"):
        _Held(BatchNormTensors(None, None, None, None, None)).state()


def test_buffers_are_differentiated_and_given_back_as_they_were() -> None:
    buffer, parameter = torch.ones(2), torch.nn.Parameter(torch.ones(2))
    with differentiable([buffer, parameter]):
        assert buffer.requires_grad and parameter.requires_grad
        (grad,) = torch.autograd.grad((buffer * 3.0).sum(), [buffer])
    assert grad.tolist() == [3.0, 3.0]
    assert not buffer.requires_grad and parameter.requires_grad


def test_restored_puts_tensors_back_even_after_an_error() -> None:
    tensor = torch.arange(3.0)
    with pytest.raises(RuntimeError), restored([tensor]):
        tensor.mul_(10.0)
        raise RuntimeError("boom")
    assert tensor.tolist() == [0.0, 1.0, 2.0]
