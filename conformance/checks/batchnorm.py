"""Checks of the BN chapter: training and inference forward, running statistics, backward."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normspec import reference
from normspec.adapters.protocol import Capabilities, DTypeName, SecondOrderLayer
from normspec.conformance.checks import check
from normspec.conformance.context import CheckContext, reference_config, reference_params
from normspec.conformance.dtypes import round_to
from normspec.conformance.strategies import (
    LONG_SIZES,
    BatchNormCase,
    Case,
    Sizes,
    Wanted,
    standard_values,
)
from normspec.conformance.tolerance import (
    Debias,
    Moments,
    StateBounds,
    StatisticsUpdate,
    backward_bounds,
    compare,
    inference_output_bound,
    running_bounds,
    second_order_bounds,
    train_output_bound,
)
from normspec.reference.dialects import Dialect
from normspec.reference.second_order import train_second_order_differences

Array = np.ndarray


def rate_allowed(rate: float) -> Any:
    """Applicability of a clause observed through the update rate ``rate`` alone: not
    applicable where the dialect's momentum domain leaves that rate out."""

    def applies(
        capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
    ) -> str | None:
        if dialect.allows_rate(rate):
            return None
        return (
            f"the check observes it through the update rate alpha = {rate:g}, outside the "
            f"profile's momentum domain {dialect.momentum_domain}"
        )

    return applies


def counter_read(
    capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> str | None:
    """Applicability of a clause of inference from the running statistics: a zero-debiased
    average is read through the step counter, which the implementation must keep."""
    if dialect.running_average == "zero_debiased" and not capabilities.step_counter:
        return (
            "the zero-debiased running average is read through the step counter, which the "
            "implementation does not keep"
        )
    return None


def inference_statistics(
    ctx: CheckContext, case: BatchNormCase
) -> tuple[reference.RunningStatistics, Debias | None]:
    """The statistics inference reads from the case's state (bn.infer.output) as a state
    value, and their debias factor where the dialect's running average is zero-debiased."""
    assert case.state is not None
    config = reference_config(case, ctx.dialect)
    mean, var = config.inference_statistics(case.state)
    debias = None
    if config.running_average == "zero_debiased" and config.rate is not None:
        debias = Debias(config.rate, case.state.steps)
    return reference.RunningStatistics(mean, var, case.state.steps), debias


def _gamma_beta(case: BatchNormCase) -> tuple[Any, Any]:
    return (None, None) if case.params is None else case.params


def expect_train_output(ctx: CheckContext, case: Case[Any], y: Any, mask: Any = None) -> None:
    """y against the reference training output under bn.accuracy.forward's bound."""
    gamma, beta = _gamma_beta(case)
    cfg = case.config
    expected, _ = reference.train_forward(
        case.x, gamma, beta, eps=cfg.eps, feature_axis=cfg.feature_axis
    )
    bound = train_output_bound(
        ctx.precision(cfg.dtype), case.x, gamma, beta, cfg.eps, cfg.feature_axis
    )
    ctx.expect(
        compare(
            "training output y",
            ctx.shape_of("y", y, case.x.shape),
            expected,
            bound,
            cfg.dtype,
            mask,
        )
    )


def expect_inference_output(ctx: CheckContext, case: BatchNormCase, y: Any) -> None:
    """y against the reference inference output under bn.accuracy.inference's bound."""
    gamma, beta = _gamma_beta(case)
    cfg = case.config
    read, debias = inference_statistics(ctx, case)
    mean, var = read.mean, read.var
    expected = reference.inference_forward(
        case.x, mean, var, gamma, beta, eps=cfg.eps, feature_axis=cfg.feature_axis
    )
    bound = inference_output_bound(
        ctx.precision(cfg.dtype),
        case.x,
        mean,
        var,
        gamma,
        beta,
        cfg.eps,
        cfg.feature_axis,
        debias,
    )
    ctx.expect(
        compare(
            "inference output y", ctx.shape_of("y", y, case.x.shape), expected, bound, cfg.dtype
        )
    )


def update_bounds(
    ctx: CheckContext, case: BatchNormCase, x: Any, expected: reference.RunningStatistics
) -> StateBounds:
    """bn.accuracy.running's bounds for one update of ``case.state`` from the batch ``x``
    to ``expected``."""
    assert case.state is not None
    update = StatisticsUpdate(
        x,
        case.config.feature_axis,
        alpha=reference.step_rate(case.state, case.rate),
        before=Moments(case.state.mean, case.state.var),
        after=Moments(expected.mean, expected.var),
    )
    unbiased = ctx.dialect.running_variance == "unbiased"
    return running_bounds(ctx.precision(case.config.dtype), update, unbiased=unbiased)


def expect_running_update(
    ctx: CheckContext,
    case: BatchNormCase,
    after: reference.RunningStatistics | None,
    which: tuple[str, ...],
    mask: Any = None,
) -> None:
    """The state after one training step against the reference update (bn.running.*)."""
    ctx.require(after is not None, "the layer reports no running statistics after a training step")
    assert after is not None and case.state is not None
    _, expected = reference.training_step(
        reference_config(case, ctx.dialect), reference_params(case), case.state, case.x
    )
    assert expected is not None
    features = (case.config.num_features,)
    bounds = update_bounds(ctx, case, case.x, expected)
    if "mean" in which:
        actual = ctx.shape_of("running mean", after.mean, features)
        ctx.expect(
            compare("running mean", actual, expected.mean, bounds.mean, case.config.dtype, mask)
        )
    if "var" in which:
        actual = ctx.shape_of("running variance", after.var, features)
        ctx.expect(
            compare("running variance", actual, expected.var, bounds.var, case.config.dtype, mask)
        )


def expect_gradients(
    ctx: CheckContext,
    case: Case[Any],
    grads: reference.Gradients,
    *,
    training: bool,
    which: tuple[str, ...] = ("dx", "dgamma", "dbeta"),
    mask: Any = None,
    feature_mask: Any = None,
) -> None:
    """dx, dgamma, dbeta against the reference under bn.accuracy.backward's bound."""
    cfg = case.config
    gamma, _ = _gamma_beta(case)
    expected = reference.backward(
        reference_config(case, ctx.dialect),
        reference_params(case),
        case.state,
        case.x,
        case.dy,
        training=training,
    )
    stats: dict[str, Any] = {}
    if not training and case.state is not None:
        read, debias = inference_statistics(ctx, case)
        stats = {"mean": read.mean, "var": read.var, "debias": debias}
    bounds = backward_bounds(
        ctx.precision(cfg.dtype),
        case.x,
        case.dy,
        gamma,
        cfg.eps,
        cfg.feature_axis,
        expected,
        **stats,
    )
    features = (cfg.num_features,)
    if "dx" in which:
        dx = ctx.shape_of("dx", grads.dx, case.x.shape)
        ctx.expect(compare("dx", dx, expected.dx, bounds.dx, cfg.dtype, mask))
    if "dgamma" in which and cfg.affine:
        dgamma = ctx.shape_of("dgamma", grads.dgamma, features)
        ctx.expect(
            compare("dgamma", dgamma, expected.dgamma, bounds.dgamma, cfg.dtype, feature_mask)
        )
    if "dbeta" in which and cfg.affine:
        dbeta = ctx.shape_of("dbeta", grads.dbeta, features)
        ctx.expect(compare("dbeta", dbeta, expected.dbeta, bounds.dbeta, cfg.dtype, feature_mask))


@check("bn.train.output", depends_on=("conv.io.shape_dtype",))
def train_output(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))


@check(
    "bn.train.statistics",
    needs=("chosen_settings",),
    depends_on=("conv.io.shape_dtype",),
    applies=rate_allowed(1.0),
)
def train_statistics(ctx: CheckContext, data: Any) -> None:
    """Observed through the running statistics of a step with alpha = 1: mu_B, and var_B up to
    the estimator factor n / (n - 1), which is the business of bn.running.var, as the rate
    convention is that of bn.running.mean: a state that did not move is inconclusive here."""
    case = ctx.draw_case(data, wanted=Wanted(rate=1.0))
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    after = ctx.state_of(layer)
    ctx.require(after is not None, "the layer reports no running statistics after a training step")
    assert after is not None and case.state is not None
    if np.array_equal(after.mean, case.state.mean) and np.array_equal(after.var, case.state.var):
        reject()
    batch = reference.batch_statistics(case.x, case.config.feature_axis)
    n = batch.count
    factors = {"biased": 1.0, "unbiased": n / (n - 1) if n > 1 else 1.0}
    readings = []
    for estimator in ("biased", "unbiased"):
        expected_var = batch.var * factors[estimator]
        update = StatisticsUpdate(
            case.x,
            case.config.feature_axis,
            alpha=1.0,
            before=Moments(case.state.mean, case.state.var),
            after=Moments(batch.mean, expected_var),
        )
        bounds = running_bounds(
            ctx.precision(case.config.dtype), update, unbiased=estimator == "unbiased"
        )
        features = (case.config.num_features,)
        mean = compare(
            "running mean",
            ctx.shape_of("running mean", after.mean, features),
            batch.mean,
            bounds.mean,
            case.config.dtype,
        )
        var = compare(
            "running variance",
            ctx.shape_of("running variance", after.var, features),
            expected_var,
            bounds.var,
            case.config.dtype,
        )
        readings.append((mean, var))
    ctx.expect_one_of(readings)


def _affine_applies(
    caps: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> str | None:
    """bn.train.affine checks a fresh layer's parameters, or a layer without them."""
    if caps.fresh_layers or caps.without_affine:
        return None
    note = caps.notes.get("fresh_layers", "it starts from no library's initial values")
    return f"a layer always has affine parameters, and {note}"


@check("bn.train.affine", depends_on=("bn.train.output",), applies=_affine_applies)
def train_affine(ctx: CheckContext, data: Any) -> None:
    caps = ctx.capabilities
    fresh = caps.fresh_layers and (
        not caps.without_affine or data.draw(st.booleans(), label="fresh layer")
    )
    case = ctx.draw_case(data, wanted=Wanted(affine=fresh))
    if fresh:
        ctx.notes["parameters"] = "initial (not set)"
        layer = ctx.build(case, set_parameters=False)
        identity = (np.ones(case.config.num_features), np.zeros(case.config.num_features))
        case = ctx.use_case(_with_params(case, identity))
    else:
        layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))


def _with_params(case: BatchNormCase, params: tuple[Array, Array]) -> BatchNormCase:
    return replace(case, params=params)


@check("bn.running.initial", needs=("fresh_layers",), training=False)
def running_initial(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case, set_parameters=False, set_state=False)
    state = ctx.state_of(layer)
    ctx.require(
        state is not None, "a new layer that tracks statistics reports no running statistics"
    )
    assert state is not None
    expected = reference.RunningStatistics.initial(
        case.config.num_features, ctx.dialect.running_average
    )
    hidden = "hidden " if ctx.dialect.running_average == "zero_debiased" else ""
    ctx.require(
        np.array_equal(state.mean, expected.mean),
        lambda: (
            f"initial {hidden}running mean is {state.mean.tolist()}, "
            f"expected {expected.mean.tolist()}"
        ),
    )
    ctx.require(
        np.array_equal(state.var, expected.var),
        lambda: (
            f"initial {hidden}running variance is {state.var.tolist()}, expected "
            f"{expected.var.tolist()} ({ctx.dialect.running_average} running average)"
        ),
    )
    if ctx.capabilities.step_counter:
        ctx.require(state.steps == 0, f"initial step counter is {state.steps}, expected 0")


@check("bn.running.mean", depends_on=("conv.io.shape_dtype",))
def running_mean(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    expect_running_update(ctx, case, ctx.state_of(layer), ("mean",))


@check("bn.running.var", depends_on=("conv.io.shape_dtype",))
def running_var(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    expect_running_update(ctx, case, ctx.state_of(layer), ("var",))


@check(
    "bn.running.cumulative",
    needs=("cumulative_average", "step_counter"),
    depends_on=("bn.running.mean", "bn.running.var"),
)
def running_cumulative(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(rate="cumulative"))
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    expect_running_update(ctx, case, ctx.state_of(layer), ("mean", "var"))


@check("bn.running.steps", needs=("step_counter",))
def running_steps(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    assert case.state is not None
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    after_train = ctx.state_of(layer)
    ctx.require(after_train is not None, "no running statistics after a training step")
    assert after_train is not None
    ctx.require(
        after_train.steps == case.state.steps + 1,
        f"step counter went from {case.state.steps} to {after_train.steps} in one training step",
    )
    ctx.call("infer", layer.infer, case.x)
    after_infer = ctx.state_of(layer)
    assert after_infer is not None
    ctx.require(
        after_infer.steps == after_train.steps,
        f"inference changed the step counter from {after_train.steps} to {after_infer.steps}",
    )


@check("bn.running.untracked", needs=("untracked",))
def running_untracked(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(track=False))
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    state = ctx.state_of(layer)
    ctx.require(
        state is None,
        lambda: f"a layer without tracked statistics reports a state after training: {state}",
    )


def same_state(
    before: reference.RunningStatistics, after: reference.RunningStatistics | None
) -> bool:
    """Whether ``after`` is ``before`` exactly (NaN equal to NaN, the step counter included)."""
    return (
        after is not None
        and np.array_equal(before.mean, after.mean, equal_nan=True)
        and np.array_equal(before.var, after.var, equal_nan=True)
        and before.steps == after.steps
    )


def expect_state_kept(
    ctx: CheckContext,
    before: reference.RunningStatistics,
    after: reference.RunningStatistics | None,
    what: str,
) -> None:
    """Require that ``what`` (a sentence's subject: "an empty batch") left the running
    statistics as they were, the step counter included where the implementation keeps one."""
    ctx.require(after is not None, f"the running statistics disappeared after {what}")
    assert after is not None
    same = (
        np.array_equal(before.mean, after.mean)
        and np.array_equal(before.var, after.var)
        and (not ctx.capabilities.step_counter or before.steps == after.steps)
    )
    ctx.require(
        same,
        lambda: (
            f"{what} changed the state from mean {before.mean.tolist()}, variance "
            f"{before.var.tolist()}, steps {before.steps} to mean {after.mean.tolist()}, "
            f"variance {after.var.tolist()}, steps {after.steps}"
        ),
    )


@check("bn.running.no_inference_update", training=False)
def running_no_inference_update(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    before = ctx.state_of(layer)
    ctx.call("infer", layer.infer, case.x)
    after = ctx.state_of(layer)
    assert before is not None
    ctx.require(
        same_state(before, after),
        lambda: f"inference changed the state from {before} to {after}",
    )


@check("bn.infer.output", depends_on=("conv.io.shape_dtype",), applies=counter_read, training=False)
def infer_output(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))


@check("bn.infer.untracked", needs=("untracked",), depends_on=("bn.train.output",), training=False)
def infer_untracked(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(track=False))
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("infer", layer.infer, case.x))
    ctx.require(ctx.state_of(layer) is None, "inference of an untracked layer created a state")


@check("bn.backward.train.dx", needs=("backward",), depends_on=("bn.train.output",))
def backward_train_dx(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
    expect_gradients(ctx, case, grads, training=True, which=("dx",))


@check("bn.backward.train.dparams", needs=("backward",), depends_on=("bn.train.output",))
def backward_train_dparams(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
    expect_gradients(ctx, case, grads, training=True, which=("dgamma", "dbeta"))


@check(
    "bn.backward.infer",
    needs=("backward",),
    depends_on=("bn.infer.output",),
    applies=counter_read,
    training=False,
)
def backward_infer(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data)
    layer = ctx.build(case)
    grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=False)
    expect_gradients(ctx, case, grads, training=False)


@check(
    "bn.backward.second_order",
    needs=("backward", "double_backward"),
    depends_on=("bn.backward.train.dx",),
)
def backward_second_order(ctx: CheckContext, data: Any) -> None:
    """Small cases (at most 64 values): the expected values are central differences of the
    reference's training backward, four backward evaluations per element."""
    case = ctx.draw_case(
        data, wanted=Wanted(Sizes(max_batch=4, max_spatial=2, features=(1, 2)), affine=None)
    )
    cfg = case.config
    features = cfg.num_features
    v = round_to(data.draw(standard_values(case.x.shape, stream=2), label="v"), cfg.dtype)
    if cfg.affine:
        vector = hnp.arrays(np.float64, features, elements=st.floats(-1.0, 1.0), fill=st.nothing())
        v_gamma = round_to(data.draw(vector, label="v_gamma"), cfg.dtype)
        v_beta = round_to(data.draw(vector, label="v_beta"), cfg.dtype)
    else:
        v_gamma = v_beta = np.zeros(features)
    ctx.notes.update(v=v.tolist(), v_gamma=v_gamma.tolist(), v_beta=v_beta.tolist())
    layer = ctx.build(case)
    ctx.require(
        isinstance(layer, SecondOrderLayer),
        "the implementation declares double_backward, but its layer has no second_order_vjp",
    )
    assert isinstance(layer, SecondOrderLayer)
    got = ctx.call("second_order_vjp", layer.second_order_vjp, case.x, case.dy, v, v_gamma, v_beta)
    gamma, _ = _gamma_beta(case)
    expected = train_second_order_differences(
        case.x, case.dy, v, v_gamma, v_beta, gamma, eps=cfg.eps, feature_axis=cfg.feature_axis
    )
    bounds = second_order_bounds(
        ctx.precision(cfg.dtype),
        case.x,
        case.dy,
        v,
        v_gamma,
        v_beta,
        gamma,
        cfg.eps,
        cfg.feature_axis,
        expected,
    )
    names = ("d_x", "d_gamma", "d_dy") if cfg.affine else ("d_x", "d_dy")
    shapes = {"d_x": case.x.shape, "d_gamma": (features,), "d_dy": case.x.shape}
    for name in names:
        field = {"d_x": "dx", "d_gamma": "dgamma", "d_dy": "ddy"}[name]
        actual = ctx.shape_of(name, getattr(got, field, None), shapes[name])
        want, bound = getattr(expected.values, field), getattr(bounds, field)
        ctx.expect(compare(f"second order {name}", actual, want, bound, cfg.dtype))


@check("bn.accuracy.forward", depends_on=("bn.train.output",))
def accuracy_forward(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(LONG_SIZES), conditioning="ill")
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))


@check(
    "bn.accuracy.inference", depends_on=("bn.infer.output",), applies=counter_read, training=False
)
def accuracy_inference(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(LONG_SIZES), conditioning="ill")
    layer = ctx.build(case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))


@check("bn.accuracy.backward", needs=("backward",), depends_on=("bn.backward.train.dx",))
def accuracy_backward(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(LONG_SIZES), conditioning="ill")
    layer = ctx.build(case)
    grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
    expect_gradients(ctx, case, grads, training=True)


@check("bn.accuracy.running", depends_on=("bn.running.mean", "bn.running.var"))
def accuracy_running(ctx: CheckContext, data: Any) -> None:
    case = ctx.draw_case(data, wanted=Wanted(LONG_SIZES), conditioning="ill")
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    expect_running_update(ctx, case, ctx.state_of(layer), ("mean", "var"))


@check(
    "bn.accuracy.no_gross_error",
    depends_on=(
        "bn.train.output",
        "bn.running.mean",
        "bn.running.var",
        "bn.backward.train.dx",
        "bn.backward.train.dparams",
    ),
    bounds="gross",
)
def no_gross_error(ctx: CheckContext, data: Any) -> None:
    """The accuracy clauses' cases, held to the gross line (conventions: gross error)."""
    case = ctx.draw_case(data, wanted=Wanted(LONG_SIZES), conditioning="ill")
    layer = ctx.build(case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))
    if case.state is not None:
        expect_running_update(ctx, case, ctx.state_of(layer), ("mean", "var"))
    if ctx.capabilities.backward:
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
        expect_gradients(ctx, case, grads, training=True)
