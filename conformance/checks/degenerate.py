"""Checks of degenerate input and invalid parameters (bn.degenerate.*, bn.params.*)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from normspec.conformance.checks import check
from normspec.conformance.checks.batchnorm import (
    expect_gradients,
    expect_running_update,
    expect_state_kept,
    expect_train_output,
)
from normspec.conformance.context import CheckContext
from normspec.conformance.guard import ImplementationError, ImplementationLost
from normspec.conformance.strategies import BatchNormCase, Sizes, Wanted
from normspec.reference.dialects import Dialect
from normspec.reference.state import RunningStatistics


def _feature_slice(case: BatchNormCase, feature: int) -> tuple[Any, ...]:
    index: list[Any] = [slice(None)] * case.x.ndim
    index[case.config.feature_axis] = feature
    return tuple(index)


def _finite_state(
    ctx: CheckContext, state: RunningStatistics | None, when: str, *, variance: bool = False
) -> None:
    """Require finite running statistics; with ``variance``, a non-negative variance too
    (bn.params.no_nan_state: the next inference takes its square root)."""
    if state is None:
        return
    ctx.require(
        bool(np.all(np.isfinite(state.mean)) and np.all(np.isfinite(state.var))),
        lambda: (
            f"{when} the running statistics hold NaN or infinity: "
            f"mean {state.mean.tolist()}, "
            f"variance {state.var.tolist()}"
        ),
    )
    if variance:
        ctx.require(
            not bool(np.any(state.var < 0)),
            lambda: f"{when} the running variance is negative: {state.var.tolist()}",
        )


@check("bn.degenerate.single_value", depends_on=("bn.train.output",))
def single_value(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(Sizes(min_count=1, max_batch=1, max_spatial=1)))
    layer = ctx.build(case)
    raised, y = ctx.attempt("train_step", layer.train_step, case.x)
    if raised:
        return
    expect_train_output(ctx, case, y)
    _finite_state(ctx, ctx.state_of(layer), "after a training step on one value per feature")
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        raised, grads = ctx.attempt("vjp", lambda: layer.vjp(case.x, case.dy, training=True))
        if not raised:
            expect_gradients(ctx, case, grads, training=True, which=("dx",))


@check("bn.degenerate.zero_variance", depends_on=("bn.train.output",))
def zero_variance(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    feature = data.draw(st.integers(0, case.config.num_features - 1), label="constant feature")
    x = case.x.copy()
    where = _feature_slice(case, feature)
    x[where] = x[where].flat[0]
    case = ctx.use_case(replace(case, x=x))
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
        expect_gradients(ctx, case, grads, training=True)


@check("bn.degenerate.empty_batch")
def empty_batch(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    shape = list(case.x.shape)
    shape[0] = 0
    empty = np.zeros(shape)
    case = ctx.use_case(replace(case, x=empty, dy=empty.copy()))
    layer = ctx.build(case)
    before = ctx.state_of(layer)
    raised, y = ctx.attempt("train_step", layer.train_step, case.x)
    if not raised:
        ctx.shape_of("training output y", y, tuple(shape))
    after = ctx.state_of(layer)
    if before is not None:
        expect_state_kept(ctx, before, after, "an empty batch")


@check(
    "bn.degenerate.nonfinite_isolated",
    depends_on=("bn.train.output", "bn.running.mean", "bn.running.var"),
)
def nonfinite_isolated(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(Sizes(features=(2, 4))))
    feature = data.draw(st.integers(0, case.config.num_features - 1), label="poisoned feature")
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    x = case.x.copy()
    where = _feature_slice(case, feature)
    poisoned = x[where]
    poisoned.flat[data.draw(st.integers(0, poisoned.size - 1), label="position")] = value
    x[where] = poisoned
    case = ctx.use_case(replace(case, x=x))
    clean = np.ones(case.config.num_features, bool)
    clean[feature] = False
    shape = [1] * x.ndim
    shape[case.config.feature_axis] = case.config.num_features
    mask = clean.reshape(shape)
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x), mask)
    if case.state is not None:
        expect_running_update(ctx, case, ctx.state_of(layer), ("mean", "var"), clean)
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
        expect_gradients(ctx, case, grads, training=True, mask=mask, feature_mask=clean)


@check("bn.params.shape", training=False)
def params_shape(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    extra = data.draw(st.integers(1, 3), label="extra features")
    shape = list(case.x.shape)
    shape[case.config.feature_axis] += extra
    wrong = np.zeros(shape)
    layer = ctx.build(case)
    calls = [("train_step", layer.train_step)] if ctx.capabilities.training else []
    for operation, function in [*calls, ("infer", layer.infer)]:
        raised, _ = ctx.attempt(operation, function, wrong)
        ctx.require(
            raised,
            f"{operation} accepted an input with {shape[case.config.feature_axis]} features "
            f"for a layer of {case.config.num_features}",
        )


INVALID_EPS = (0.0, -1e-5, -1.0)
INVALID_RATES = (-0.5, 1.5, -1e-3, 2.0)


def invalid_momenta(dialect: Dialect) -> tuple[float, ...]:
    """Momenta a library of the dialect rejects (bn.params.invalid): outside [0, 1], and
    the ends of [0, 1] its momentum domain leaves out."""
    return (*INVALID_RATES, *dialect.excluded_momenta())


@check("bn.params.invalid", needs=("chosen_settings",))
def params_invalid(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    which = data.draw(st.sampled_from(["eps", "momentum"]), label="invalid parameter")
    if which == "eps":
        value = data.draw(st.sampled_from(INVALID_EPS), label="eps")
        config = replace(case.config, eps=value)
    else:
        value = data.draw(st.sampled_from(invalid_momenta(ctx.dialect)), label="momentum")
        config = replace(case.config, momentum=value)
    case = ctx.use_case(replace(case, config=config))
    try:
        layer = ctx.call("build", ctx.implementation.build, config)
    except ImplementationLost:
        raise
    except ImplementationError:
        return
    raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    ctx.require(raised, f"{which}={value!r} was accepted without an error")


@check("bn.params.no_nan_state", needs=("chosen_settings",))
def params_no_nan_state(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    eps = data.draw(st.sampled_from([case.config.eps, *INVALID_EPS]), label="eps")
    momentum = data.draw(
        st.sampled_from([case.config.momentum, *invalid_momenta(ctx.dialect)]), label="momentum"
    )
    config = replace(case.config, eps=eps, momentum=momentum)
    case = ctx.use_case(replace(case, config=config))
    layer = ctx.attempt_build(case)
    if layer is None:
        return
    raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    if not raised:
        state = ctx.state_of(layer)
        _finite_state(ctx, state, f"with eps={eps!r} and momentum={momentum!r}", variance=True)
