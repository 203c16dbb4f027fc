"""Checks of the renorm chapter (renorm.*): Batch Renormalization layers.

Split along the chapter's sections as the BN chapter's checks are: this module holds the
training, moving-statistics, inference, backward and accuracy sections and what every
section shares (applicability, drawing and building, the expectations);
:mod:`renorm_schedules` the schedules (renorm.schedule.*, with the state machine of
renorm.schedule.step) and :mod:`renorm_degenerate` the degenerate inputs and invalid
parameters (renorm.degenerate.*, renorm.params.*).

Every check needs the capability ``renorm``, so a batch-norm-only implementation reports
them not applicable. Cases are drawn by :func:`strategies_renorm.renorm_cases` under the
profile's renorm dialect, expectations come from :mod:`normspec.reference.renorm` and the
tolerances from renorm.accuracy.* (:mod:`normspec.conformance.tolerance`).

The schedule clauses apply to the schedules the dialect's warm-up form can express
(:func:`strategies_renorm.offered_schedules`: constant bounds always, a switch under a switch
or a ramp warm-up, the paper's ramps under a ramp warm-up). An implementation declares a
configuration it cannot express by raising :class:`UnsupportedConfig` when a layer is
built: that example is discarded, and a check left without a usable example is inconclusive
(a schedule check says so after ``context.UNSUPPORTED_IN_A_ROW`` refusals).

Attribution. The clauses that define one ingredient are checked first, on cases where the
other ingredients cannot show: renorm.train.statistics and renorm.train.correction with
update rates 0 (a correction taken after the update is then the same), and, under
``statistics = separate``, every check up to renorm.moving.separate with the correction set
equal to the inference set and one rate for both (so which set is read or moved with which
rate cannot show). Later checks draw distinct sets and depend on the earlier clauses.
renorm.train.statistics accepts the moving spread read as either kind of spread (which kind
it holds is renorm.moving.average's business), and renorm.train.correction observes ``r`` and
``d`` through the training output only (the gradients are renorm.backward.*'s).

The clauses that set or read the step counter (renorm.moving.steps, the warm-up schedules,
renorm.schedule.step) need the capability ``step_counter``; without it the others ignore
the counter a layer reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from normspec.adapters.protocol import Capabilities, DTypeName, Layer
from normspec.conformance.checks import Body, check
from normspec.conformance.checks import batchnorm as bn_checks
from normspec.conformance.context import CheckContext, Violation
from normspec.conformance.strategies import LONG_SIZES, Conditioning, Sizes, Wanted
from normspec.conformance.strategies_renorm import (
    ONE_BOUND,
    Counter,
    Moving,
    RenormCase,
    ScheduleKind,
    offered_schedules,
    schedules,
)
from normspec.conformance.tolerance import (
    Moments,
    StatisticsUpdate,
    compare,
    renorm_backward_bounds,
    renorm_inference_backward_bounds,
    renorm_inference_output_bound,
    renorm_moving_bounds,
    renorm_train_output_bound,
)
from normspec.reference import Affine, Gradients, renorm
from normspec.reference.dialects import Dialect
from normspec.reference.renorm import RenormAverage, RenormStatistics
from normspec.reference.schedules import RenormBounds, Schedule

Array = np.ndarray
T = TypeVar("T")

RENORM = ("renorm",)
RENORM_BACKWARD = ("renorm", "backward")
#: Clauses that set or read the step counter (an implementation without one: not applicable).
RENORM_COUNTER = ("renorm", "step_counter")

#: Rates that make a correction taken after the update differ from one taken before.
LARGE_RATES = st.one_of(st.sampled_from([1.0, 0.5]), st.floats(0.5, 1.0))


def large_rate(rate: float) -> float:
    """The rate of 0.5 to 1 (:data:`LARGE_RATES`' range) paired with a menu entry's: its own
    where it lies there, else ``1 - rate`` (one program per entry)."""
    return rate if rate >= 0.5 else 1.0 - rate


#: The moving statistics of a case with one set (under ``statistics = separate``, the
#: correction set equal to the inference set): checks that read one set only.
SAME_SETS = Moving(same_sets=True)


# --------------------------------------------------------------------------------------
# Applicability

Applies = Callable[[Capabilities, Dialect, tuple[DTypeName, ...]], "str | None"]

SCHEDULE_NAMES: dict[str, str] = {
    "constant": "constant bounds",
    "paper": "the paper's ramps",
    "switch": "a switch schedule",
}


def renorm_profile(
    capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> str | None:
    """Not applicable under a profile without a renorm dialect."""
    if dialect.renorm is None:
        return f"profile {dialect.name} has no batch renormalization"
    return None


def offers(kind: ScheduleKind) -> Applies:
    """A schedule clause applies to the schedules the dialect's warm-up form can express."""

    def applies(
        capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
    ) -> str | None:
        reason = renorm_profile(capabilities, dialect, dtypes)
        if reason is None and kind not in offered_schedules(dialect):
            assert dialect.renorm is not None
            reason = (
                f"the {dialect.name} dialect's warm-up ({dialect.renorm.warmup}) cannot "
                f"express {SCHEDULE_NAMES[kind]}"
            )
        return reason

    return applies


def separate_sets(
    capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> str | None:
    """renorm.moving.separate applies under ``statistics = separate`` only."""
    reason = renorm_profile(capabilities, dialect, dtypes)
    if reason is None and dialect.renorm is not None and dialect.renorm.statistics != "separate":
        reason = f"profile {dialect.name} keeps one set of moving statistics"
    return reason


def renorm_check(
    clause_id: str,
    *,
    needs: tuple[str, ...] = RENORM,
    depends_on: tuple[str, ...] = (),
    stateful: bool = False,
    applies: Applies = renorm_profile,
) -> Callable[[Body], Body]:
    """:func:`check` with the renorm capability and profile required."""
    return check(clause_id, needs=needs, depends_on=depends_on, stateful=stateful, applies=applies)


# --------------------------------------------------------------------------------------
# Drawing, building, reading the state


def draw_renorm(
    ctx: CheckContext,
    data: Any,
    wanted: Wanted | None = None,
    *,
    schedule: SearchStrategy[tuple[Schedule, int]] | None = None,
    moving: Moving | None = None,
    conditioning: Conditioning = "well",
) -> RenormCase:
    """Draw a renorm case for this implementation (see :func:`renorm_cases`), its setting
    from the run's menu where it has one.

    ``schedule`` defaults to :func:`run_schedules` with a step counter where the bounds of
    this step and the next agree: a schedule evaluated at the wrong counter is
    renorm.schedule.step's business, and shows there first.
    """
    case = ctx.draw_case(
        data,
        "renorm",
        wanted=wanted,
        schedule=run_schedules(ctx) if schedule is None else schedule,
        moving=moving,
        conditioning=conditioning,
    )
    assert isinstance(case, RenormCase)
    return case


def run_schedules(
    ctx: CheckContext,
    kinds: Sequence[ScheduleKind] | None = None,
    *,
    batchnorm: bool = False,
    bounds: RenormBounds | None = None,
    counter: Counter = "steady",
) -> SearchStrategy[tuple[Schedule, int]]:
    """:func:`schedules` of the profile for this run (the menu's bounds and switch steps
    where it has one), the step counter ``steady`` unless ``counter`` says otherwise."""
    return schedules(
        ctx.dialect, kinds, batchnorm=batchnorm, bounds=bounds, counter=counter, menu=ctx.menu
    )


def build(
    ctx: CheckContext,
    case: RenormCase,
    *,
    set_parameters: bool = True,
    set_state: bool = True,
    offered: str | None = None,
) -> Layer:
    """A layer for the case with its parameters and moving statistics; the implementation
    may refuse the configuration (:meth:`CheckContext.build`: ``may_refuse``, ``offered``)."""
    layer = ctx.build(
        case, set_parameters=set_parameters, set_state=False, may_refuse=True, offered=offered
    )
    if set_state:
        ctx.call("set_state", layer.set_state, case.state)
    return layer


def moving_state(ctx: CheckContext, layer: Layer, when: str) -> RenormStatistics:
    """The layer's moving statistics, which a renorm layer always has."""
    state = ctx.call("state", layer.state)
    if not isinstance(state, RenormStatistics):
        raise Violation(
            f"{when} the layer reports {type(state).__name__} as its state, not the moving "
            "statistics (RenormStatistics) of a renorm layer"
        )
    return state


def unchecked(cls: type[T], **fields: Any) -> T:
    """An instance of a frozen dataclass built without its validation (invalid values)."""
    value = object.__new__(cls)
    for name, field_value in fields.items():
        object.__setattr__(value, name, field_value)
    return value


def unchecked_replace(value: T, **changes: Any) -> T:
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]
    return unchecked(type(value), **{**fields, **changes})


# --------------------------------------------------------------------------------------
# Expectations


def reference_params(case: RenormCase) -> Affine | None:
    return None if case.params is None else Affine(*case.params)


def _gamma_beta(case: RenormCase) -> tuple[Any, Any]:
    return (None, None) if case.params is None else case.params


def correction_statistics(case: RenormCase) -> tuple[Array, Array]:
    """``(mu, sigma)`` the correction of a training step from ``case.state`` uses."""
    cfg = case.renorm
    mean, spread = case.state.correction_statistics()
    sigma = renorm.moving_std(spread, average=cfg.average, eps=cfg.eps, sigma_floor=cfg.sigma_floor)
    return mean, sigma


def inference_statistics(case: RenormCase) -> tuple[Array, Array]:
    """``(mu, sigma)`` of the inference set of ``case.state``."""
    cfg = case.renorm
    sigma = renorm.moving_std(
        case.state.spread, average=cfg.average, eps=cfg.eps, sigma_floor=cfg.sigma_floor
    )
    return case.state.mean, sigma


def expect_train_output(
    ctx: CheckContext, case: RenormCase, y: Any, mask: Any = None, *, sigma: Any = None
) -> None:
    """y against the reference training output under renorm.accuracy.forward's bound.

    ``sigma`` replaces the correction set's moving standard deviation (a state the
    reference's layer API rejects, renorm.params.sigma).
    """
    cfg = case.renorm
    gamma, beta = _gamma_beta(case)
    if sigma is None:
        mean, sigma = correction_statistics(case)
    else:
        mean = case.state.correction_statistics()[0]
    bounds = case.bounds
    expected, _ = renorm.train_forward(
        case.x, mean, sigma, gamma, beta, bounds=bounds, eps=cfg.eps, feature_axis=cfg.feature_axis
    )
    bound = renorm_train_output_bound(
        ctx.precision(case.config.dtype),
        case.x,
        gamma,
        beta,
        cfg.eps,
        cfg.feature_axis,
        mean,
        sigma,
        bounds,
    )
    actual = ctx.shape_of("training output y", y, case.x.shape)
    ctx.expect(compare("training output y", actual, expected, bound, case.config.dtype, mask))


def other_reading(case: RenormCase) -> Array | None:
    """The correction set's moving sigma with its spread read as the other kind of spread (a
    standard deviation as a variance, or the reverse); ``None`` where that is no valid sigma.

    Which kind the spread holds is renorm.moving.average's business (``average``).
    """
    cfg = case.renorm
    other: RenormAverage = "variance_biased" if cfg.average == "std" else "std"
    spread = case.state.correction_statistics()[1]
    try:
        return renorm.moving_std(spread, average=other, eps=cfg.eps, sigma_floor=cfg.sigma_floor)
    except ValueError:
        return None


def _meets(expectation: Callable[[], None]) -> bool:
    try:
        expectation()
    except Violation:
        return False
    return True


def expect_train_output_either_reading(ctx: CheckContext, case: RenormCase, y: Any) -> None:
    """:func:`expect_train_output`, accepting the moving spread read as either kind of spread
    (:func:`other_reading`), for checks of another ingredient; the violation reported is
    that of the dialect's reading."""
    if _meets(lambda: expect_train_output(ctx, case, y)):
        return
    sigma = other_reading(case)
    if sigma is not None and _meets(lambda: expect_train_output(ctx, case, y, sigma=sigma)):
        return
    expect_train_output(ctx, case, y)


def expect_inference_output(
    ctx: CheckContext, case: RenormCase, y: Any, mask: Any = None, *, sigma: Any = None
) -> None:
    """y against the reference inference output under renorm.accuracy.inference's bound."""
    cfg = case.renorm
    gamma, beta = _gamma_beta(case)
    if sigma is None:
        mean, sigma = inference_statistics(case)
    else:
        mean = case.state.mean
    expected = renorm.inference_forward(
        case.x, mean, sigma, gamma, beta, feature_axis=cfg.feature_axis
    )
    bound = renorm_inference_output_bound(
        ctx.precision(case.config.dtype), case.x, mean, sigma, gamma, beta, cfg.feature_axis
    )
    actual = ctx.shape_of("inference output y", y, case.x.shape)
    ctx.expect(compare("inference output y", actual, expected, bound, case.config.dtype, mask))


def expect_moving_update(
    ctx: CheckContext,
    case: RenormCase,
    after: RenormStatistics,
    which: tuple[str, ...] = ("mean", "spread"),
    mask: Any = None,
) -> None:
    """Every set of moving statistics after one training step (renorm.moving.*) against the
    reference update, under renorm.accuracy.moving's bounds."""
    cfg = case.renorm
    _, expected = renorm.training_step(cfg, reference_params(case), case.state, case.x)
    ctx.require(
        after.separate == expected.separate,
        f"the layer reports {'two sets' if after.separate else 'one set'} of moving "
        f"statistics; the {cfg.statistics} dialect has "
        f"{'two' if expected.separate else 'one'}",
    )
    spread_name = "standard deviation" if cfg.average == "std" else "variance"
    sets: list[tuple[str, Array, Array, Array, Array, Any, Any, float]] = [
        (
            "moving",
            case.state.mean,
            case.state.spread,
            expected.mean,
            expected.spread,
            after.mean,
            after.spread,
            cfg.rate,
        )
    ]
    if expected.separate:
        before_c = case.state.correction_statistics()
        expected_c = expected.correction_statistics()
        after_c = after.correction_statistics()
        assert cfg.correction_rate is not None
        sets.append(("correction", *before_c, *expected_c, *after_c, cfg.correction_rate))
    features = (cfg.num_features,)
    dtype = case.config.dtype
    for name, b_mean, b_spread, e_mean, e_spread, a_mean, a_spread, alpha in sets:
        update = StatisticsUpdate(
            case.x,
            cfg.feature_axis,
            alpha=alpha,
            before=Moments(b_mean, b_spread),
            after=Moments(e_mean, e_spread),
        )
        bounds = renorm_moving_bounds(
            ctx.precision(dtype), update, eps=cfg.eps, average=cfg.average
        )
        if "mean" in which:
            actual = ctx.shape_of(f"{name} mean", a_mean, features)
            ctx.expect(compare(f"{name} mean", actual, e_mean, bounds.mean, dtype, mask))
        if "spread" in which:
            label = f"{name} {spread_name}"
            actual = ctx.shape_of(label, a_spread, features)
            ctx.expect(compare(label, actual, e_spread, bounds.var, dtype, mask))


def expect_gradients(
    ctx: CheckContext,
    case: RenormCase,
    grads: Gradients,
    *,
    training: bool,
    which: tuple[str, ...] = ("dx", "dgamma", "dbeta"),
    mask: Any = None,
    feature_mask: Any = None,
) -> None:
    """dx, dgamma, dbeta against the reference under renorm.accuracy.backward's bounds."""
    cfg = case.renorm
    gamma, _ = _gamma_beta(case)
    dtype = case.config.dtype
    if training:
        mean, sigma = correction_statistics(case)
        bounds = case.bounds
        _, corr = renorm.train_forward(
            case.x, mean, sigma, bounds=bounds, eps=cfg.eps, feature_axis=cfg.feature_axis
        )
        expected = renorm.train_backward(
            case.dy, case.x, corr.r, corr.d, gamma, eps=cfg.eps, feature_axis=cfg.feature_axis
        )
        limits = renorm_backward_bounds(
            ctx.precision(dtype),
            case.x,
            case.dy,
            gamma,
            cfg.eps,
            cfg.feature_axis,
            expected,
            mean,
            sigma,
            bounds,
        )
    else:
        mean, sigma = inference_statistics(case)
        expected = renorm.inference_backward(
            case.dy, case.x, mean, sigma, gamma, feature_axis=cfg.feature_axis
        )
        limits = renorm_inference_backward_bounds(
            ctx.precision(dtype), case.x, case.dy, gamma, cfg.feature_axis, expected, mean, sigma
        )
    features = (cfg.num_features,)
    if "dx" in which:
        dx = ctx.shape_of("dx", grads.dx, case.x.shape)
        ctx.expect(compare("dx", dx, expected.dx, limits.dx, dtype, mask))
    if "dgamma" in which and case.config.affine:
        dgamma = ctx.shape_of("dgamma", grads.dgamma, features)
        ctx.expect(compare("dgamma", dgamma, expected.dgamma, limits.dgamma, dtype, feature_mask))
    if "dbeta" in which and case.config.affine:
        dbeta = ctx.shape_of("dbeta", grads.dbeta, features)
        ctx.expect(compare("dbeta", dbeta, expected.dbeta, limits.dbeta, dtype, feature_mask))


def train_once(ctx: CheckContext, case: RenormCase) -> tuple[Layer, Any]:
    layer = build(ctx, case)
    return layer, ctx.call("train_step", layer.train_step, case.x)


def fresh_vjp(ctx: CheckContext, case: RenormCase, *, training: bool) -> Gradients:
    """The gradients of a fresh layer set to the case (the state after a call is unspecified)."""
    layer = build(ctx, case)
    grads: Gradients = ctx.call("vjp", layer.vjp, case.x, case.dy, training=training)
    return grads


# --------------------------------------------------------------------------------------
# Training forward


#: Bounds that clip nothing in the ``near`` regime (``r`` within a factor 1.6 of 1, ``|d| <= 1``).
WIDE_BOUNDS = RenormBounds.symmetric(5.0, 5.0)


@renorm_check("renorm.train.statistics")
def train_statistics(ctx: CheckContext, data: Any) -> None:
    """Observed through the output, with rates 0 (the update cannot show) and moving
    statistics placed so that the clipping's own correctness cannot show either:

    * batch-norm bounds and moving statistics equal to the batch's (``r = 1``, ``d = 0``
      however r and d are clipped): the output is batch norm's, ``mu_B`` and ``sigma_B``
      show fully;
    * wide bounds and moving statistics near the batch (nothing clipped): ``r != 1``, so
      ``eps`` scaled by ``r^2`` shows. The output then depends on how the moving spread is
      read, which is renorm.moving.average's business: either reading is accepted. Wide
      bounds are :data:`WIDE_BOUNDS`, under a menu its constant bounds (each clips nothing
      near the batch, :data:`menu.RENORM_BOUNDS`): the programs renorm.train.correction
      runs.
    """
    batchnorm = data.draw(st.booleans(), label="batch-norm bounds")
    wide = WIDE_BOUNDS if ctx.menu is None else None
    case = draw_renorm(
        ctx,
        data,
        Wanted(rate=0.0, affine=None),
        schedule=run_schedules(
            ctx,
            None if batchnorm else ("constant",),
            batchnorm=batchnorm,
            bounds=None if batchnorm else wide,
        ),
        moving=Moving("exact" if batchnorm else "near", correction_rate=0.0, same_sets=True),
    )
    _, y = train_once(ctx, case)
    expect_train_output_either_reading(ctx, case, y)


@renorm_check("renorm.train.correction", depends_on=("renorm.train.statistics",))
def train_correction(ctx: CheckContext, data: Any) -> None:
    """Observed through the training output only (the gradients are renorm.backward.*'s),
    with two to four features whose moving statistics each lie near the batch (clipping
    mostly inactive), far from it (clipped on either side) or just beyond one bound, rates
    0, and affine parameters
    only where the implementation needs them (a ``gamma`` of 0 hides ``r`` and ``d``).
    ``y = gamma * (zhat * r + d) + beta`` shows ``r`` and ``d`` each: ``zhat`` has mean 0
    and is not 0 where the feature varies."""
    case = draw_renorm(
        ctx,
        data,
        Wanted(Sizes(features=(2, 4)), rate=0.0, affine=None),
        moving=Moving(("far", "near", *ONE_BOUND), correction_rate=0.0, same_sets=True),
    )
    _, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)


@renorm_check("renorm.train.pre_update", depends_on=("renorm.train.correction",))
def train_pre_update(ctx: CheckContext, data: Any) -> None:
    """Rates of 0.5 to 1: a correction from the updated statistics gives another output
    (under a menu, :func:`large_rate` of the entry's)."""
    moving = Moving(rates=LARGE_RATES, menu_rate=large_rate, same_sets=True)
    case = draw_renorm(ctx, data, Wanted(affine=None), moving=moving)
    _, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)


@renorm_check(
    "renorm.train.output",
    depends_on=("renorm.train.statistics", "renorm.train.correction", "renorm.train.pre_update"),
)
def train_output(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(affine=None), moving=SAME_SETS)
    _, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)


@renorm_check("renorm.train.affine", depends_on=("renorm.train.output",))
def train_affine(ctx: CheckContext, data: Any) -> None:
    fresh = not ctx.capabilities.without_affine or data.draw(st.booleans(), label="fresh layer")
    case = draw_renorm(ctx, data, Wanted(affine=fresh), moving=SAME_SETS)
    if fresh:
        ctx.notes["parameters"] = "initial (not set)"
        layer = build(ctx, case, set_parameters=False)
        features = case.config.num_features
        case = replace(case, params=(np.ones(features), np.zeros(features)))
        ctx.use_case(case)
    else:
        layer = build(ctx, case)
    expect_train_output(ctx, case, ctx.call("train_step", layer.train_step, case.x))


@renorm_check("renorm.train.reduces_to_bn", depends_on=("renorm.train.statistics",))
def train_reduces_to_bn(ctx: CheckContext, data: Any) -> None:
    """Bounds that force ``r = 1, d = 0`` (constant, or a warm-up before it ends): batch
    norm's output and gradients within bn.accuracy.*; the moving statistics still move."""
    case = draw_renorm(
        ctx,
        data,
        Wanted(affine=None),
        schedule=run_schedules(ctx, batchnorm=True),
        moving=SAME_SETS,
    )
    layer, y = train_once(ctx, case)
    bn_checks.expect_train_output(ctx, case, y)
    expect_moving_update(ctx, case, moving_state(ctx, layer, "after a training step"))
    if ctx.capabilities.backward:
        grads = fresh_vjp(ctx, case, training=True)
        bn_checks.expect_gradients(ctx, case, grads, training=True)


# --------------------------------------------------------------------------------------
# Moving statistics


@renorm_check("renorm.moving.initial")
def moving_initial(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data)
    layer = build(ctx, case, set_parameters=False, set_state=False)
    state = moving_state(ctx, layer, "a new layer:")
    features = case.config.num_features
    zeros, ones = np.zeros(features), np.ones(features)
    sets = [("moving", state.mean, state.spread)]
    if case.renorm.statistics == "separate":
        ctx.require(state.separate, "a new layer has no correction set of moving statistics")
        mean, spread = state.correction_statistics()
        sets.append(("correction", mean, spread))
    spread_name = "standard deviation" if case.renorm.average == "std" else "variance"
    for name, mean, spread in sets:
        ctx.require(
            np.array_equal(mean, zeros),
            f"initial {name} mean is {np.asarray(mean).tolist()}, expected zeros",
        )
        ctx.require(
            np.array_equal(spread, ones),
            f"initial {name} {spread_name} is {np.asarray(spread).tolist()}, expected ones",
        )
    if ctx.capabilities.step_counter:
        ctx.require(state.steps == 0, f"initial step counter is {state.steps}, expected 0")


@renorm_check("renorm.moving.mean", depends_on=("renorm.train.statistics",))
def moving_mean(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, moving=SAME_SETS)
    layer, _ = train_once(ctx, case)
    expect_moving_update(ctx, case, moving_state(ctx, layer, "after a training step"), ("mean",))


@renorm_check("renorm.moving.average", depends_on=("renorm.train.statistics",))
def moving_average(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, moving=SAME_SETS)
    layer, _ = train_once(ctx, case)
    state = moving_state(ctx, layer, "after a training step")
    expect_moving_update(ctx, case, state, ("spread",))


@renorm_check(
    "renorm.moving.separate",
    depends_on=(
        "renorm.train.output",
        "renorm.infer.output",
        "renorm.moving.mean",
        "renorm.moving.average",
    ),
    applies=separate_sets,
)
def moving_separate(ctx: CheckContext, data: Any) -> None:
    """Two different sets with different rates: the training output reads the correction
    set, inference the inference set, and each set moves with its own rate."""
    rates = [0.5, 0.1, 1.0, 0.01, 0.9]
    rate = data.draw(st.sampled_from(rates), label="rate")
    correction_rate = data.draw(st.sampled_from([r for r in rates if r != rate]), label="alpha_c")
    case = draw_renorm(ctx, data, Wanted(rate=rate), moving=Moving(correction_rate=correction_rate))
    layer, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)
    expect_moving_update(ctx, case, moving_state(ctx, layer, "after a training step"))
    layer = build(ctx, case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))


@renorm_check("renorm.moving.steps", needs=RENORM_COUNTER)
def moving_steps(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, moving=SAME_SETS)
    layer = build(ctx, case)
    start = case.state.steps
    counts = [("after set_state", start)]
    seen = [moving_state(ctx, layer, "after set_state").steps]
    ctx.call("train_step", layer.train_step, case.x)
    counts.append(("after a training step", start + 1))
    seen.append(moving_state(ctx, layer, "after a training step").steps)
    ctx.call("infer", layer.infer, case.x)
    counts.append(("after an inference call", start + 1))
    seen.append(moving_state(ctx, layer, "after an inference call").steps)
    ctx.call("train_step", layer.train_step, case.x)
    counts.append(("after a second training step", start + 2))
    seen.append(moving_state(ctx, layer, "after a second training step").steps)
    for (when, wanted), got in zip(counts, seen, strict=True):
        ctx.require(
            got == wanted,
            f"step counter {got} {when}, expected {wanted} (set to {start}; calls: set_state, "
            "train, infer, train)",
        )


def same_moving_state(
    before: RenormStatistics, after: RenormStatistics, *, counter: bool = True
) -> bool:
    """Whether two states are equal (NaN equal to NaN), the step counter only if ``counter``."""

    def same(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return bool(np.array_equal(a, b, equal_nan=True))

    return (
        same(before.mean, after.mean)
        and same(before.spread, after.spread)
        and same(before.correction_mean, after.correction_mean)
        and same(before.correction_spread, after.correction_spread)
        and (not counter or before.steps == after.steps)
    )


@renorm_check("renorm.moving.no_inference_update")
def moving_no_inference_update(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, moving=SAME_SETS)
    layer = build(ctx, case)
    before = moving_state(ctx, layer, "before inference")
    ctx.call("infer", layer.infer, case.x)
    after = moving_state(ctx, layer, "after inference")
    ctx.require(
        same_moving_state(before, after, counter=ctx.capabilities.step_counter),
        lambda: f"inference changed the state from {before} to {after}",
    )


# --------------------------------------------------------------------------------------
# Inference and backward


@renorm_check("renorm.infer.output")
def infer_output(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(affine=None), moving=SAME_SETS)
    layer = build(ctx, case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))


@renorm_check(
    "renorm.backward.train.dx",
    needs=RENORM_BACKWARD,
    depends_on=("renorm.train.output", "renorm.moving.separate"),
)
def backward_train_dx(ctx: CheckContext, data: Any) -> None:
    """Moving statistics near the batch leave the clipping inactive wherever the bounds are
    not batch norm's: a gradient through ``r`` and ``d`` differs there."""
    case = draw_renorm(ctx, data, Wanted(affine=None), moving=Moving("near"))
    grads = fresh_vjp(ctx, case, training=True)
    expect_gradients(ctx, case, grads, training=True, which=("dx",))


@renorm_check(
    "renorm.backward.train.dparams",
    needs=RENORM_BACKWARD,
    depends_on=("renorm.train.output", "renorm.moving.separate"),
)
def backward_train_dparams(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data)
    grads = fresh_vjp(ctx, case, training=True)
    expect_gradients(ctx, case, grads, training=True, which=("dgamma", "dbeta"))


@renorm_check(
    "renorm.backward.infer",
    needs=RENORM_BACKWARD,
    depends_on=("renorm.infer.output", "renorm.moving.separate"),
)
def backward_infer(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data)
    grads = fresh_vjp(ctx, case, training=False)
    expect_gradients(ctx, case, grads, training=False)


# --------------------------------------------------------------------------------------
# Accuracy


@renorm_check("renorm.accuracy.forward", depends_on=("renorm.train.output",))
def accuracy_forward(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(LONG_SIZES), conditioning="ill")
    _, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)


@renorm_check("renorm.accuracy.inference", depends_on=("renorm.infer.output",))
def accuracy_inference(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(LONG_SIZES), conditioning="ill")
    layer = build(ctx, case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))


@renorm_check(
    "renorm.accuracy.backward", needs=RENORM_BACKWARD, depends_on=("renorm.backward.train.dx",)
)
def accuracy_backward(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(LONG_SIZES), conditioning="ill")
    grads = fresh_vjp(ctx, case, training=True)
    expect_gradients(ctx, case, grads, training=True)


@renorm_check(
    "renorm.accuracy.moving",
    depends_on=("renorm.moving.mean", "renorm.moving.average", "renorm.moving.separate"),
)
def accuracy_moving(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(LONG_SIZES), conditioning="ill")
    layer, _ = train_once(ctx, case)
    expect_moving_update(ctx, case, moving_state(ctx, layer, "after a training step"))


__all__ = [
    "RENORM_COUNTER",
    "SCHEDULE_NAMES",
    "build",
    "draw_renorm",
    "expect_gradients",
    "expect_inference_output",
    "expect_moving_update",
    "expect_train_output",
    "fresh_vjp",
    "moving_state",
    "offers",
    "renorm_check",
    "same_moving_state",
    "train_once",
    "unchecked",
    "unchecked_replace",
]
