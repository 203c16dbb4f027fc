"""The torch.nn module adapter: recognition with no glue, layouts, dtypes, checks, state."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from adapter_cases import FIXTURES, torch_layout_config
from torch import nn

from normspec.adapters import Layer, UnsupportedConfig, WrongOutput
from normspec.adapters.registry import load_target
from normspec.adapters.torch_module import (
    TorchModuleImplementation,
    TorchModuleLayer,
    recognise,
)
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")


def _input(shape: tuple[int, ...], dtype: str = "float64") -> np.ndarray:
    rng = np.random.default_rng(3)
    return round_to(rng.standard_normal(shape) * 2.0 + 1.0, dtype)


# -- recognition ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "ranks"),
    [(nn.BatchNorm1d, {2, 3}), (nn.BatchNorm2d, {4}), (nn.BatchNorm3d, {5})],
)
def test_torch_batchnorm_classes_are_recognised(cls: type, ranks: set[int]) -> None:
    impl = recognise(cls, "torch")
    assert isinstance(impl, TorchModuleImplementation)
    caps = impl.capabilities()
    assert caps.ranks == ranks
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.cumulative_average and caps.untracked and caps.without_affine
    assert caps.step_counter and caps.strided_input and caps.feature_axes == ("first",)


@pytest.mark.parametrize(
    "obj", [nn.Linear, nn.LayerNorm, nn.BatchNorm2d(3), nn.LazyBatchNorm2d, "BatchNorm2d", 3]
)
def test_other_objects_are_not_recognised(obj: object) -> None:
    assert recognise(obj, "torch") is None


def test_target_resolves_through_the_registry_with_no_glue() -> None:
    impl = load_target("torch.nn:BatchNorm2d", "torch")
    assert isinstance(impl, TorchModuleImplementation)
    assert impl.module_class is nn.BatchNorm2d
    assert torch.__version__ in impl.name and "cpu" in impl.name
    assert impl.versions()["torch"] == torch.__version__
    assert impl.versions()["device"] == "cpu"


def test_thirdparty_clone_is_recognised_with_no_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    impl = load_target("thirdparty_bn:ThirdPartyBatchNorm2d", "torch")
    assert isinstance(impl, TorchModuleImplementation)
    assert impl.module_class.__name__ == "ThirdPartyBatchNorm2d"
    assert not issubclass(impl.module_class, nn.modules.batchnorm._NormBase)
    caps = impl.capabilities()
    assert caps.ranks == {4}  # from its _check_input_dim
    assert caps.step_counter and caps.cumulative_average
    # ... and it computes what torch.nn.BatchNorm2d computes.
    x = _input((4, 3, 2, 5))
    torch_impl = recognise(nn.BatchNorm2d, "torch")
    assert torch_impl is not None
    clone, torch_bn = (i.build(torch_layout_config(momentum=None)) for i in (impl, torch_impl))
    np.testing.assert_allclose(clone.train_step(x), torch_bn.train_step(x), rtol=1e-13, atol=1e-13)
    got, want = clone.state(), torch_bn.state()
    assert got is not None and want is not None and got.steps == want.steps == 1
    np.testing.assert_allclose(got.var, want.var, rtol=1e-13)


class _ProbedRanks(nn.Module):
    """A BatchNorm-like module over F.batch_norm: no _check_input_dim, no step counter."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    normspec_ranks: ClassVar[tuple[int, ...] | None] = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum or 0.0,
            self.eps,
        )


class _DeclaredRanks(_ProbedRanks):
    """The same, declaring the ranks it takes."""

    normspec_ranks = (3,)


def test_ranks_are_declared_or_probed_and_the_step_counter_is_optional() -> None:
    declared = recognise(_DeclaredRanks, "torch")
    probed = recognise(_ProbedRanks, "torch")
    assert declared is not None and probed is not None
    assert declared.capabilities().ranks == {3}
    assert probed.capabilities().ranks == {2, 3, 4, 5}  # F.batch_norm takes them all
    caps = declared.capabilities()
    assert not caps.step_counter and not caps.cumulative_average
    assert "num_batches_tracked" in caps.notes["step_counter"]


def test_unsupported_configurations_are_refused() -> None:
    impl = load_target("torch.nn:BatchNorm2d", "torch")
    with pytest.raises(UnsupportedConfig, match="rank 3"):
        impl.build(torch_layout_config(rank=3))
    with pytest.raises(UnsupportedConfig, match="feature axis 3"):
        impl.build(torch_layout_config(feature_axis=3))
    with pytest.raises(UnsupportedConfig, match="renormalization"):
        impl.build(torch_layout_config(renorm=object()))


def test_no_cumulative_average_under_a_profile_without_it() -> None:
    impl = load_target("torch.nn:BatchNorm2d", "keras")
    assert not impl.capabilities().cumulative_average
    with pytest.raises(UnsupportedConfig, match="momentum=None"):
        impl.build(torch_layout_config(momentum=None))


# -- layouts --------------------------------------------------------------------------------


class RecordingBatchNorm2d(nn.BatchNorm2d):
    """torch's BatchNorm2d, recording the strides and dtype of every input it is given."""

    seen: ClassVar[list[tuple[tuple[int, ...], torch.dtype, bool]]] = []

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        type(self).seen.append((input.stride(), input.dtype, input.is_contiguous()))
        return super().forward(input)


@pytest.mark.parametrize("layout", ["strided", "channels_last"])
def test_strided_inputs_arrive_with_their_strides(layout: str) -> None:
    dense = _input((4, 3, 5, 6))
    if layout == "strided":
        x = np.repeat(dense, 2, axis=0)[::2]
    else:
        x = np.ascontiguousarray(dense.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    strides = tuple(s // 8 for s in x.strides)
    impl = recognise(RecordingBatchNorm2d, "torch")
    assert impl is not None
    layer = impl.build(torch_layout_config(dtype="float32"))
    RecordingBatchNorm2d.seen.clear()
    layer.train_step(x)
    layer.infer(x)
    layer.vjp(x, x, training=True)
    assert RecordingBatchNorm2d.seen == [(strides, torch.float32, False)] * 3


# -- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("parameters", ["float32", "input"])
def test_every_dtype_round_trips(dtype: str, parameters: Any) -> None:
    impl = TorchModuleImplementation(nn.BatchNorm2d, parameters=parameters)
    layer = impl.build(torch_layout_config(dtype=dtype))
    assert isinstance(layer, TorchModuleLayer)
    expected_params = (
        torch.float32
        if dtype in ("float16", "bfloat16") and parameters == "float32"
        else getattr(torch, dtype)
    )
    assert layer.module.weight.dtype == expected_params
    assert layer.module.running_var.dtype == expected_params
    x = _input((4, 3, 2, 2), dtype)
    y = layer.train_step(x)
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_array_equal(round_to(y, dtype), y)  # values of the layer's dtype
    grads = layer.vjp(x, x, training=True)
    np.testing.assert_array_equal(round_to(grads.dx, dtype), grads.dx)


# -- malformed outputs ----------------------------------------------------------------------


class _BatchNorm2dThat(nn.BatchNorm2d):
    def wrong(self, y: torch.Tensor) -> Any:
        raise NotImplementedError

    def forward(self, input: torch.Tensor) -> Any:
        return self.wrong(super().forward(input))


class PromotingBatchNorm2d(_BatchNorm2dThat):
    def wrong(self, y: torch.Tensor) -> Any:
        return y.float()


class SqueezingBatchNorm2d(_BatchNorm2dThat):
    def wrong(self, y: torch.Tensor) -> Any:
        return y.sum(dim=0)


class TupleBatchNorm2d(_BatchNorm2dThat):
    def wrong(self, y: torch.Tensor) -> Any:
        return (y,)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (PromotingBatchNorm2d, "dtype torch.float32, expected torch.float64"),
        (SqueezingBatchNorm2d, r"shape \(3, 2, 2\), expected \(4, 3, 2, 2\)"),
        (TupleBatchNorm2d, "tuple, not a torch.Tensor"),
    ],
)
def test_malformed_outputs_are_wrong_output(cls: type, message: str) -> None:
    impl = recognise(cls, "torch")
    assert impl is not None
    assert impl.capabilities().dtypes == {"float64", "float32", "float16", "bfloat16"}
    layer = impl.build(torch_layout_config())
    x = _input((4, 3, 2, 2))
    for call in (layer.train_step, layer.infer, lambda x: layer.vjp(x, x, training=True)):
        with pytest.raises(WrongOutput, match=message):
            call(x)


# -- state ----------------------------------------------------------------------------------


def _state() -> RunningStatistics:
    return RunningStatistics(np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, 4.0]), 5)


def _assert_state(layer: Layer, expected: RunningStatistics) -> None:
    got = layer.state()
    assert got is not None
    np.testing.assert_array_equal(got.mean, expected.mean)
    np.testing.assert_array_equal(got.var, expected.var)
    assert got.steps == expected.steps


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_vjp_leaves_the_state_as_it_was(momentum: float | None, training: bool) -> None:
    layer = load_target("torch.nn:BatchNorm2d", "torch").build(
        torch_layout_config(momentum=momentum)
    )
    layer.set_state(_state())
    x = _input((4, 3, 2, 2))
    layer.vjp(x, x, training=training)
    _assert_state(layer, _state())
    layer.train_step(x)
    after = layer.state()
    assert after is not None and after.steps == 6


def test_state_and_parameters_are_written_to_the_module() -> None:
    layer = load_target("torch.nn:BatchNorm2d", "torch").build(torch_layout_config())
    assert isinstance(layer, TorchModuleLayer)
    _assert_state(layer, RunningStatistics.initial(3))
    layer.set_state(_state())
    layer.set_parameters(np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0]))
    module = layer.module
    assert isinstance(module, nn.BatchNorm2d) and module.num_batches_tracked is not None
    assert module.num_batches_tracked.item() == 5
    assert module.weight.tolist() == [1.0, 2.0, 3.0]
    assert module.bias.tolist() == [-1.0, 0.0, 1.0]
    _assert_state(layer, _state())


def test_untracked_and_non_affine_layers() -> None:
    impl = load_target("torch.nn:BatchNorm1d", "torch")
    layer = impl.build(torch_layout_config(rank=2, affine=False, track_running_stats=False))
    x = _input((6, 3))
    assert layer.state() is None
    np.testing.assert_allclose(layer.infer(x), layer.train_step(x), rtol=1e-15)
    grads = layer.vjp(x, x, training=True)
    assert grads.dgamma.shape == grads.dbeta.shape == (3,)
    assert not np.any(grads.dgamma) and not np.any(grads.dbeta)
    with pytest.raises(ValueError, match="no state"):
        layer.set_state(_state())


# -- devices --------------------------------------------------------------------------------


def test_an_unavailable_device_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=r"torch\.cuda is not available"):
        TorchModuleImplementation(nn.BatchNorm2d, device="cuda")
    monkeypatch.setenv("NORMSPEC_TORCH_DEVICE", "cuda")
    with pytest.raises(ValueError, match=r"torch\.cuda is not available"):
        load_target("torch.nn:BatchNorm2d", "torch")


@CUDA
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_cuda_layers_run_in_every_dtype(dtype: str) -> None:
    impl = TorchModuleImplementation(RecordingBatchNorm2d, device="cuda")
    assert impl.versions()["device"].startswith("cuda") and "gpu" in impl.versions()
    assert dtype in impl.capabilities().dtypes
    layer = impl.build(torch_layout_config(dtype=dtype))
    assert isinstance(layer, TorchModuleLayer)
    assert layer.module.weight.device.type == "cuda"
    x = _input((4, 5, 6, 3), dtype).transpose(0, 3, 1, 2)  # channels last
    RecordingBatchNorm2d.seen.clear()
    y = layer.train_step(x)
    assert RecordingBatchNorm2d.seen[0][0] == tuple(s // 8 for s in x.strides)
    np.testing.assert_array_equal(round_to(y, dtype), y)
    layer.vjp(x, x, training=True)
