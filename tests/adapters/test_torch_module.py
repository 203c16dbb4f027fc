"""The torch.nn module adapter: recognition with no glue, layouts, dtypes, checks, state."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from adapter_cases import FIXTURES, torch_layout_config
from thirdparty_bn import BufferAffineBatchNorm2d, BufferDtypeBatchNorm2d
from torch import nn

from normspec.adapters import Layer, UnsupportedConfig, WrongOutput
from normspec.adapters.registry import TargetError, load_target
from normspec.adapters.torch.module import (
    TorchModuleImplementation,
    TorchModuleLayer,
    recognise,
)
from normspec.cli import main
from normspec.conformance.dtypes import round_to
from normspec.conformance.runner import CheckOptions, check_implementation
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


# -- ranks probed with inputs that cannot broadcast -------------------------------------------


class _BroadcastingBatchNorm2d(_ProbedRanks):
    """Written for (N, C, H, W) with no _check_input_dim: it reduces over the flattened
    spatial axes and shapes its vectors (1, C, 1, 1), which broadcasts against a rank-5
    input whose sizes happen to fit (every size 2, say)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1, 1, 1)
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        mean, var = flat.mean(dim=1), flat.var(dim=1, unbiased=False)
        y = (x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + self.eps)
        return y * self.weight.reshape(view) + self.bias.reshape(view)


def test_ranks_are_probed_with_inputs_that_cannot_broadcast() -> None:
    impl = recognise(_BroadcastingBatchNorm2d, "torch")
    assert impl is not None and impl.capabilities().ranks == {4}
    assert _BroadcastingBatchNorm2d(2).train()(torch.ones(3, 2, 2, 2, 2)).shape == (3, 2, 2, 2, 2)


# -- the arrangement of half-precision layers ------------------------------------------------


def test_the_half_arrangement_a_module_supports_is_detected() -> None:
    """A module returning its output in its parameters' dtype gives float32 for a half input
    beside float32 parameters: it is checked after module.half(), and the report says so."""
    impl = load_target("thirdparty_bn:BufferDtypeBatchNorm2d", "torch")
    assert isinstance(impl, TorchModuleImplementation)
    caps = impl.capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert impl.policy("float16") == impl.policy("bfloat16") == "input"
    assert any(
        w.startswith(
            "float16 is checked with parameters and running statistics in the input's dtype (module.half()): with float32 parameters"
        )
        for w in caps.warnings
    )
    assert "float32 parameters" not in impl.name
    layer = impl.build(torch_layout_config(dtype="float16"))
    assert isinstance(layer, TorchModuleLayer) and layer.module.weight.dtype == torch.float16
    x = _input((4, 3, 2, 2), "float16")
    np.testing.assert_array_equal(round_to(layer.train_step(x), "float16"), layer.train_step(x))
    report = check_implementation(
        impl,
        CheckOptions(
            profile="torch",
            dtypes=["float16"],
            clauses="conv.io.*,bn.train.output,bn.running.var,bn.infer.output",
            max_examples=10,
        ),
    )
    assert {r.outcome for r in report.results} == {"pass"}
    assert report.warnings == list(caps.warnings)


def test_an_arrangement_given_or_working_is_kept() -> None:
    given = TorchModuleImplementation(BufferDtypeBatchNorm2d, parameters="float32")
    assert given.capabilities().dtypes == {"float64", "float32", "float16", "bfloat16"}
    with pytest.raises(WrongOutput, match=r"dtype torch\.float32, expected torch\.float16"):
        given.build(torch_layout_config(dtype="float16")).train_step(_input((4, 3, 2, 2)))
    builtin = load_target("torch.nn:BatchNorm2d", "torch")
    assert isinstance(builtin, TorchModuleImplementation)
    assert not builtin.capabilities().warnings and builtin.policy("float16") == "float32"


# -- frozen (inference-only) BatchNorm -------------------------------------------------------


def test_a_frozen_batchnorm_is_recognised_and_checked_for_what_it_promises() -> None:
    impl = load_target("thirdparty_bn:FrozenBatchNorm2d", "torch")
    assert isinstance(impl, TorchModuleImplementation) and impl.kind == "frozen"
    caps = impl.capabilities()
    assert not caps.training and not caps.untracked and not caps.without_affine
    assert caps.ranks == {4} and "float64" in caps.dtypes
    clauses = "conv.io.*,bn.infer.output,bn.backward.infer,bn.running.initial,bn.train.output,bn.running.mean,bn.backward.train.dx"
    report = check_implementation(
        impl,
        CheckOptions(
            profile="torch", dtypes=["float64", "float32"], clauses=clauses, max_examples=10
        ),
    )
    found = {r.clause_id: r for r in report.results}
    for clause in (
        "conv.io.shape_dtype",
        "bn.infer.output",
        "bn.backward.infer",
        "bn.running.initial",
    ):
        assert found[clause].outcome == "pass", found[clause].message
    for clause in ("bn.train.output", "bn.running.mean", "bn.backward.train.dx"):
        assert found[clause].outcome == "not_applicable"
        assert "training (a frozen BatchNorm" in found[clause].message


def test_a_frozen_layer_gives_the_gradients_in_its_buffers() -> None:
    impl = load_target("thirdparty_bn:FrozenBatchNorm2d", "torch")
    layer = impl.build(torch_layout_config())
    layer.set_parameters(np.array([2.0, -1.0, 0.5]), np.array([0.0, 1.0, 2.0]))
    layer.set_state(_state())
    x = _input((4, 3, 2, 2))
    grads = layer.vjp(x, x, training=False)
    reference = load_target("reference", "torch").build(torch_layout_config())
    reference.set_parameters(np.array([2.0, -1.0, 0.5]), np.array([0.0, 1.0, 2.0]))
    reference.set_state(_state())
    want = reference.vjp(x, x, training=False)
    for name in ("dx", "dgamma", "dbeta"):
        np.testing.assert_allclose(getattr(grads, name), getattr(want, name), rtol=1e-12)
    assert isinstance(layer, TorchModuleLayer) and not layer.module.weight.requires_grad


# -- why a class is not recognised; constructor arguments ------------------------------------


class _StatisticsAsParameters(nn.BatchNorm2d):
    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.running_var = nn.Parameter(torch.ones(num_features))
        del self.running_mean


@pytest.mark.parametrize(
    ("cls", "reasons"),
    [
        (
            BufferAffineBatchNorm2d,
            [
                "as a BatchNorm",
                "its constructor takes no momentum, affine, track_running_stats; weight is a buffer; bias is a buffer;",
                "as a frozen BatchNorm",
                "it has a training mode: a training-mode call returned another output",
            ],
        ),
        (_StatisticsAsParameters, ["it has no running_mean", "weight is a parameter"]),
        (nn.Linear, ["its constructor takes no num_features, eps, momentum"]),
    ],
)
def test_an_unrecognised_class_says_which_requirement_failed_and_what_to_do(
    cls: type, reasons: list[str]
) -> None:
    with pytest.raises(TargetError) as raised:
        load_target(f"{cls.__module__}:{cls.__qualname__}", "torch")
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    for reason in [*reasons, "Pass other constructor arguments in the target", "FrameworkAdapter"]:
        assert reason in message


def test_a_target_passes_constructor_arguments_and_unset_ones_are_a_warning() -> None:
    plain = load_target("thirdparty_bn:BatchNormAct2d", "torch")
    (warning,) = plain.capabilities().warnings
    assert "apply_act=True, inplace=False" in warning
    assert "'thirdparty_bn:BatchNormAct2d(apply_act=...)'" in warning
    impl = load_target("thirdparty_bn:BatchNormAct2d(apply_act=False, inplace=True)", "torch")
    assert isinstance(impl, TorchModuleImplementation)
    assert impl.arguments == {"apply_act": False, "inplace": True}
    assert "BatchNormAct2d(apply_act=False, inplace=True)" in impl.name
    assert not impl.capabilities().warnings
    layer = impl.build(torch_layout_config())
    assert isinstance(layer, TorchModuleLayer) and isinstance(layer.module.act, nn.Identity)
    options = CheckOptions(
        profile="torch", dtypes=["float32"], clauses="bn.train.output", max_examples=10
    )
    assert check_implementation(plain, options).results[0].outcome == "fail"  # the ReLU
    assert check_implementation(impl, options).results[0].outcome == "pass"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("thirdparty_bn:BatchNormAct2d(eps=0.1)", "eps is set by normspec for every layer"),
        ("thirdparty_bn:BatchNormAct2d(True)", "keyword arguments"),
        ("thirdparty_bn:BatchNormAct2d(**{'apply_act': False})", "keyword arguments"),
        (
            "thirdparty_bn:BatchNormAct2d(apply_act=__import__('os').getcwd())",
            "not a Python literal",
        ),
        ("thirdparty_bn:BatchNormAct2d(apply_act=False", "keyword arguments"),
        ("thirdparty_bn:BatchNormAct2d(colour='red')", "unexpected keyword argument 'colour'"),
    ],
)
def test_bad_constructor_arguments_are_a_usage_error(target: str, message: str) -> None:
    with pytest.raises(TargetError, match=re.escape(message)):
        load_target(target, "torch")


def test_the_command_line_says_why_in_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "thirdparty_bn:BufferAffineBatchNorm2d"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "weight is a buffer" in err and "it has a training mode" in err
