"""Double backward of the torch adapters (bn.backward.second_order): the capability probe,
agreement with the reference's closed form, conformance of BatchNorm2d and F.batch_norm, and
known-bad modules whose first-order gradients are right and second-order ones wrong."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from torch import nn

from normspec.adapters import DTypeName, LayerConfig
from normspec.adapters.protocol import SecondOrderLayer
from normspec.adapters.torch.functional import FunctionalBatchNorm
from normspec.adapters.torch.module import TorchModuleImplementation
from normspec.conformance.dtypes import round_to
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.tolerance import Precision, second_order_bounds
from normspec.reference.second_order import (
    train_double_backward,
    train_second_order_differences,
)

CLAUSE = "bn.backward.second_order"
FIRST_ORDER = "bn.train.output,bn.backward.train.dx,bn.backward.train.dparams"


class _Statistics(torch.autograd.Function):
    """BN's training output with a hand-written backward that is correct to first order.

    ``detach``: what its backward treats as constants when it is differentiated again:
    ``statistics`` (the batch mean and variance it recomputes from the saved input),
    ``dgamma`` (the parameter gradient), ``saved`` (everything: dx from detached tensors).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, detach: str
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.eps, ctx.detach = eps, detach
        return _normalized(x, eps) * _channel(weight) + _channel(bias)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        if ctx.detach == "saved":
            x, weight = x.detach(), weight.detach()
        axes = (0, 2, 3)
        mean = x.mean(axes, keepdim=True)
        var = x.var(axes, unbiased=False, keepdim=True)
        if ctx.detach == "statistics":
            mean, var = mean.detach(), var.detach()
        xhat = (x - mean) * torch.rsqrt(var + ctx.eps)
        mean_dy = dy.mean(axes, keepdim=True)
        mean_dy_xhat = (dy * xhat).mean(axes, keepdim=True)
        scale = _channel(weight) * torch.rsqrt(var + ctx.eps)
        dx = scale * (dy - mean_dy - xhat * mean_dy_xhat)
        dgamma = (dy * xhat).sum(axes)
        if ctx.detach == "dgamma":
            dgamma = dgamma.detach()
        return dx, dgamma, dy.sum(axes), None, None


def _channel(vector: torch.Tensor) -> torch.Tensor:
    return vector.reshape(1, -1, 1, 1)


def _normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    axes = (0, 2, 3)
    mean = x.mean(axes, keepdim=True)
    return (x - mean) * torch.rsqrt(x.var(axes, unbiased=False, keepdim=True) + eps)


class _CustomBatchNorm2d(nn.BatchNorm2d):
    """torch's BatchNorm2d (state, inference) with the training output of :class:`_Statistics`."""

    detach = "nothing"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.affine:
            return super().forward(x)
        with torch.no_grad():
            super().forward(x)  # the running statistics, as torch updates them
        return _Statistics.apply(x, self.weight, self.bias, self.eps, self.detach)


class DetachedStatistics(_CustomBatchNorm2d):
    """Double backward treats the batch statistics as constants."""

    detach = "statistics"


class DetachedDgamma(_CustomBatchNorm2d):
    """Double backward drops the path through dgamma."""

    detach = "dgamma"


class OnceDifferentiable(_CustomBatchNorm2d):
    """A backward autograd cannot differentiate at all (run under no_grad)."""

    detach = "nothing"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.affine:
            return super().forward(x)
        with torch.no_grad():
            nn.BatchNorm2d.forward(self, x)
        return _Frozen.apply(x, self.weight, self.bias, self.eps, "saved")


class _Frozen(_Statistics):
    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        with torch.no_grad():
            return _Statistics.backward(ctx, dy)


def _check(impl: Any, clauses: str, dtypes: tuple[str, ...], examples: int = 25) -> Any:
    return check_implementation(
        impl, CheckOptions(profile="torch", clauses=clauses, dtypes=dtypes, max_examples=examples)
    )


def test_the_capability_is_probed() -> None:
    for impl in (TorchModuleImplementation(nn.BatchNorm2d), FunctionalBatchNorm()):
        assert impl.capabilities().double_backward
    frozen = TorchModuleImplementation(OnceDifferentiable).capabilities()
    assert not frozen.double_backward
    assert "not differentiable" in frozen.notes["double_backward"]


def test_a_backward_that_cannot_be_differentiated_is_not_applicable() -> None:
    report = _check(TorchModuleImplementation(OnceDifferentiable), CLAUSE, ("float64",))
    result = report.results[0]
    assert result.outcome == "not_applicable"
    assert "double backward" in result.message and "not differentiable" in result.message


@pytest.mark.parametrize(
    "make", [lambda: TorchModuleImplementation(nn.BatchNorm2d), FunctionalBatchNorm]
)
def test_torch_double_backward_matches_the_closed_form(make: Any) -> None:
    """One float64 case, three features, against the reference's closed form."""
    layer = make().build(LayerConfig(3, 4, 1, "float64", 1e-3, 0.1))
    assert isinstance(layer, SecondOrderLayer)
    rng = np.random.default_rng(5)
    x, dy, v = (rng.standard_normal((3, 3, 2, 2)) for _ in range(3))
    gamma, beta, v_gamma, v_beta = (rng.standard_normal(3) for _ in range(4))
    layer.set_parameters(gamma, beta)
    got = layer.second_order_vjp(x, dy, v, v_gamma, v_beta)
    want = train_double_backward(x, dy, v, v_gamma, v_beta, gamma, eps=1e-3)
    for name in ("dx", "dgamma", "ddy"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda: TorchModuleImplementation(nn.BatchNorm2d), FunctionalBatchNorm]
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_batchnorm_passes(make: Any, dtype: str) -> None:
    report = _check(make(), CLAUSE, (dtype,))
    assert report.conformant, [(r.clause_id, r.message) for r in report.results]


@pytest.mark.parametrize("bad", [DetachedStatistics, DetachedDgamma])
def test_a_wrong_double_backward_is_caught_under_its_clause_only(bad: type) -> None:
    """First-order gradients pass; the second-order clause fails."""
    impl = TorchModuleImplementation(bad)
    assert impl.capabilities().double_backward
    report = _check(impl, f"{FIRST_ORDER},{CLAUSE}", ("float32",), examples=10)
    outcomes = {r.clause_id: r.outcome for r in report.results}
    assert outcomes == {
        "bn.train.output": "pass",
        "bn.backward.train.dx": "pass",
        "bn.backward.train.dparams": "pass",
        CLAUSE: "fail",
    }
    assert report.results[-1].details["comparison"]["quantity"].startswith("second order")


def worst_ratio(impl: Any, dtype: DTypeName, cases: int = 12) -> float:
    """The largest error-to-bound ratio of the clause over random cases (one to two
    features, n = 2 to 32, affine, v_gamma and v_beta drawn)."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for index in range(cases):
        features = 1 + index % 2
        shape = (1 + index % 4, features, 1 + index % 3, 2)
        x = round_to(
            rng.standard_normal(shape) * 2.0 + rng.uniform(-4, 4, (1, features, 1, 1)), dtype
        )
        dy, v = (round_to(rng.uniform(-1, 1, shape), dtype) for _ in range(2))
        gamma, beta, v_gamma, v_beta = (
            round_to(rng.uniform(-2, 2, features), dtype) for _ in range(4)
        )
        eps = (1e-5, 1e-3, 1.0)[index % 3]
        layer = impl.build(LayerConfig(features, 4, 1, dtype, eps, 0.1))
        layer.set_parameters(gamma, beta)
        got = layer.second_order_vjp(x, dy, v, v_gamma, v_beta)
        args = (x, dy, v, v_gamma, v_beta, gamma)
        expected = train_second_order_differences(*args, eps=eps)
        bounds = second_order_bounds(Precision.storage(dtype), *args, eps, 1, expected)
        for name in ("dx", "dgamma", "ddy"):
            error = np.abs(getattr(got, name) - getattr(expected.values, name))
            worst = max(worst, float(np.max(error / getattr(bounds, name))))
    return worst


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_margins_of_the_bound(dtype: DTypeName) -> None:
    """torch is well within the bound; a missing term exceeds it by orders of magnitude."""
    for good in (TorchModuleImplementation(nn.BatchNorm2d), FunctionalBatchNorm()):
        assert worst_ratio(good, dtype) < 0.1
    for bad in (DetachedStatistics, DetachedDgamma):
        assert worst_ratio(TorchModuleImplementation(bad), dtype) > 1e3
