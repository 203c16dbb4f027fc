"""Checks of the renorm chapter's degenerate inputs and invalid parameters (renorm.degenerate.*,
renorm.params.*), as :mod:`degenerate` checks the BN chapter's.

Shared with the rest of the chapter: :mod:`normspec.conformance.checks.renorm`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from normspec.adapters.protocol import Array, UnsupportedConfig
from normspec.conformance.checks.degenerate import INVALID_EPS, INVALID_RATES
from normspec.conformance.checks.renorm import (
    build,
    draw_renorm,
    expect_gradients,
    expect_inference_output,
    expect_moving_update,
    expect_train_output,
    fresh_vjp,
    moving_state,
    renorm_check,
    same_moving_state,
    train_once,
    unchecked,
    unchecked_replace,
)
from normspec.conformance.context import CheckContext
from normspec.conformance.dtypes import float_format, round_to
from normspec.conformance.guard import ImplementationError, ImplementationLost
from normspec.conformance.strategies import Sizes, Wanted
from normspec.conformance.strategies_renorm import RenormCase, batch_moments, schedules
from normspec.reference.dialects import Dialect
from normspec.reference.renorm import RenormStatistics
from normspec.reference.schedules import ConstantSchedule, RenormBounds

# --------------------------------------------------------------------------------------
# Degenerate input


def _feature_slice(case: RenormCase, feature: int) -> tuple[Any, ...]:
    index: list[Any] = [slice(None)] * case.x.ndim
    index[case.config.feature_axis] = feature
    return tuple(index)


def _nan_free(ctx: CheckContext, state: RenormStatistics, when: str) -> None:
    arrays = [state.mean, state.spread, state.correction_mean, state.correction_spread]
    ctx.require(
        not any(a is not None and np.any(np.isnan(np.asarray(a, np.float64))) for a in arrays),
        lambda: f"{when} the moving statistics hold NaN: {state}",
    )


@renorm_check("renorm.degenerate.single_value", depends_on=("renorm.train.output",))
def single_value(ctx: CheckContext, data: Any) -> None:
    """n = 1: an error, or ``y = gamma * d + beta`` (the reference's output) and ``dx = 0``.

    ``x - mu_B = 0`` hides ``r``: under a menu the bounds are its first pair's, in every
    form and schedule the dialect takes (``d_max`` given and open, before and after a
    switch), one program per setting and form rather than per pair."""
    schedule = None
    if ctx.menu is not None:
        first = replace(ctx.menu, renorm_bounds=ctx.menu.renorm_bounds[:1])
        schedule = schedules(ctx.dialect, counter="steady", menu=first)
    case = draw_renorm(
        ctx,
        data,
        Wanted(Sizes(min_count=1, max_batch=1, max_spatial=1), affine=None),
        schedule=schedule,
    )
    layer = build(ctx, case)
    raised, y = ctx.attempt("train_step", layer.train_step, case.x)
    if not raised:
        expect_train_output(ctx, case, y)
        _nan_free(ctx, moving_state(ctx, layer, "after"), "after a step on one value per feature")
    if ctx.capabilities.backward:
        layer = build(ctx, case)
        raised, grads = ctx.attempt("vjp", lambda: layer.vjp(case.x, case.dy, training=True))
        if not raised:
            expect_gradients(ctx, case, grads, training=True, which=("dx",))


@renorm_check("renorm.degenerate.zero_variance", depends_on=("renorm.train.output",))
def zero_variance(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data, Wanted(affine=None))
    feature = data.draw(st.integers(0, case.config.num_features - 1), label="constant feature")
    x = case.x.copy()
    where = _feature_slice(case, feature)
    x[where] = x[where].flat[0]
    case = replace(case, x=x)
    ctx.use_case(case)
    _, y = train_once(ctx, case)
    expect_train_output(ctx, case, y)
    if ctx.capabilities.backward:
        grads = fresh_vjp(ctx, case, training=True)
        expect_gradients(ctx, case, grads, training=True)


@renorm_check("renorm.degenerate.empty_batch")
def empty_batch(ctx: CheckContext, data: Any) -> None:
    case = draw_renorm(ctx, data)
    shape = list(case.x.shape)
    shape[0] = 0
    empty = np.zeros(shape)
    case = replace(case, x=empty, dy=empty.copy())
    ctx.use_case(case)
    layer = build(ctx, case)
    before = moving_state(ctx, layer, "before an empty batch")
    raised, y = ctx.attempt("train_step", layer.train_step, case.x)
    if not raised:
        ctx.shape_of("training output y", y, tuple(shape))
    after = moving_state(ctx, layer, "after an empty batch")
    ctx.require(
        same_moving_state(before, after, counter=ctx.capabilities.step_counter),
        lambda: f"an empty batch changed the state from {before} to {after}",
    )


def _poison_state(
    state: RenormStatistics, where: str, feature: int, value: float
) -> RenormStatistics:
    field = {
        "mean": "mean",
        "spread": "spread",
        "correction mean": "correction_mean",
        "correction spread": "correction_spread",
    }[where]
    array = np.array(getattr(state, field), dtype=np.float64)
    array[feature] = value
    return state.replace(**{field: array})


@renorm_check("renorm.degenerate.nonfinite_isolated", depends_on=("renorm.train.output",))
def nonfinite_isolated(ctx: CheckContext, data: Any) -> None:
    """A NaN or infinity in one feature's input or one feature's moving statistic (either
    set): the other features' outputs, gradients and moving statistics are the reference's."""
    case = draw_renorm(ctx, data, Wanted(Sizes(features=(2, 4))))
    features = case.config.num_features
    feature = data.draw(st.integers(0, features - 1), label="poisoned feature")
    places = ["input", "mean", "spread"]
    if case.state.separate:
        places += ["correction mean", "correction spread"]
    place = data.draw(st.sampled_from(places), label="poisoned")
    # a spread is non-negative: +inf or NaN there
    values = [np.nan, np.inf] if place.endswith("spread") else [np.nan, np.inf, -np.inf]
    value = data.draw(st.sampled_from(values), label="value")
    if place == "input":
        x = case.x.copy()
        where = _feature_slice(case, feature)
        poisoned = x[where]
        poisoned.flat[data.draw(st.integers(0, poisoned.size - 1), label="position")] = value
        x[where] = poisoned
        case = replace(case, x=x)
    else:
        case = replace(case, state=_poison_state(case.state, place, feature, value))
    ctx.use_case(case)
    clean = np.ones(features, bool)
    clean[feature] = False
    shape = [1] * case.x.ndim
    shape[case.config.feature_axis] = features
    mask = clean.reshape(shape)
    layer, y = train_once(ctx, case)
    expect_train_output(ctx, case, y, mask)
    expect_moving_update(ctx, case, moving_state(ctx, layer, "after a training step"), mask=clean)
    layer = build(ctx, case)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x), mask)
    if ctx.capabilities.backward:
        grads = fresh_vjp(ctx, case, training=True)
        expect_gradients(ctx, case, grads, training=True, mask=mask, feature_mask=clean)


# --------------------------------------------------------------------------------------
# Invalid parameters


def _resized(array: Any, length: int) -> Any:
    return None if array is None else np.resize(np.asarray(array, dtype=np.float64), length)


@renorm_check("renorm.params.shape")
def params_shape(ctx: CheckContext, data: Any) -> None:
    """An input with more features, parameters or moving statistics of another length (one
    value where a broadcast would accept it): an error, never a broadcast."""
    which = data.draw(st.sampled_from(["input", "state", "parameters"]), label="wrong")
    case = draw_renorm(ctx, data, Wanted(affine=True if which == "parameters" else None))
    features = case.config.num_features
    extra = data.draw(st.integers(1, 3), label="extra features")
    lengths = [features + extra] + ([1] if features >= 2 else [])
    length = data.draw(st.sampled_from(lengths), label="length")
    if which == "input":
        shape = list(case.x.shape)
        shape[case.config.feature_axis] += extra
        wrong = np.zeros(shape)
        layer = build(ctx, case)
        for operation, function in (("train_step", layer.train_step), ("infer", layer.infer)):
            raised, _ = ctx.attempt(operation, function, wrong)
            ctx.require(
                raised,
                f"{operation} accepted an input with {shape[case.config.feature_axis]} features "
                f"for a layer of {features}",
            )
        return
    if which == "parameters":
        layer = build(ctx, case, set_parameters=False)
        assert case.params is not None
        gamma, beta = (np.resize(p, length) for p in case.params)
        raised, _ = ctx.attempt("set_parameters", layer.set_parameters, gamma, beta)
        subject = f"gamma and beta of length {length}"
    else:
        moving = case.state
        bad = RenormStatistics(
            _resized(moving.mean, length),
            _resized(moving.spread, length),
            moving.steps,
            _resized(moving.correction_mean, length),
            _resized(moving.correction_spread, length),
        )
        layer = build(ctx, case, set_state=False)
        raised, _ = ctx.attempt("set_state", layer.set_state, bad)
        subject = f"moving statistics of length {length}"
    if raised:
        return
    for operation, function in (("train_step", layer.train_step), ("infer", layer.infer)):
        raised, _ = ctx.attempt(operation, function, case.x)
        ctx.require(raised, f"{operation} accepted {subject} for a layer of {features} features")


def _invalid_bounds(data: Any, dialect: Dialect) -> tuple[str, RenormBounds]:
    """Bounds the clause says to reject, in the dialect's form, built without validation."""
    assert dialect.renorm is not None
    nan = float("nan")
    if dialect.renorm.clipping == "symmetric":
        options = [("r_max", 0.5, 2.0), ("r_max", 0.99, 0.0), ("d_max", 3.0, -1.0)]
        options += [("d_max", 1.0, -1e-3), ("r_max", nan, 1.0), ("d_max", 2.0, nan)]
        name, r_max, d_max = data.draw(st.sampled_from(options), label="invalid bound")
        return name, unchecked(RenormBounds, r_min=1.0 / r_max, r_max=r_max, d_max=d_max)
    independent = [
        ("rmin", -0.5, 3.0, 5.0),
        ("rmax", 2.0, 1.0, 5.0),
        ("dmax", 0.5, 3.0, -1.0),
        ("rmin", nan, 3.0, 5.0),
        ("rmax", 0.5, nan, 5.0),
        ("dmax", 0.5, 3.0, nan),
    ]
    name, r_min, r_max, d_max = data.draw(st.sampled_from(independent), label="invalid bound")
    return name, unchecked(RenormBounds, r_min=r_min, r_max=r_max, d_max=d_max)


def _library_momentum(dialect: Dialect, rate: float) -> float:
    """The library momentum of a canonical rate, valid or not."""
    return rate if dialect.update_rate == "rate" else 1.0 - rate


def _invalid_case(ctx: CheckContext, data: Any, case: RenormCase, which: str) -> tuple[str, Any]:
    """The case with one invalid parameter; (description, value)."""
    cfg = case.renorm
    if which == "bounds":
        name, bounds = _invalid_bounds(data, ctx.dialect)
        renorm_cfg = unchecked_replace(cfg, schedule=ConstantSchedule(bounds))
        return name, (replace(case.config, renorm=renorm_cfg), bounds)
    if which == "eps":
        eps = data.draw(st.sampled_from(INVALID_EPS), label="eps")
        renorm_cfg = unchecked_replace(cfg, eps=eps)
        return "eps", (replace(case.config, eps=eps, renorm=renorm_cfg), eps)
    rate = data.draw(st.sampled_from(INVALID_RATES), label=which)
    if which == "correction_rate":
        renorm_cfg = unchecked_replace(cfg, correction_rate=rate)
        return "correction rate", (replace(case.config, renorm=renorm_cfg), rate)
    momentum = _library_momentum(ctx.dialect, rate)
    renorm_cfg = unchecked_replace(cfg, rate=rate)
    return "update rate", (replace(case.config, momentum=momentum, renorm=renorm_cfg), rate)


def _parameter_kinds(case: RenormCase) -> list[str]:
    kinds = ["bounds", "eps", "rate"]
    if case.renorm.statistics == "separate":
        kinds.append("correction_rate")
    return kinds


@renorm_check("renorm.params.invalid", depends_on=())
def params_invalid(ctx: CheckContext, data: Any) -> None:
    """Invalid bounds in the dialect's form, ``eps <= 0``, a rate outside [0, 1]: an error at
    construction or at the first training step."""
    case = draw_renorm(ctx, data)
    which = data.draw(st.sampled_from(_parameter_kinds(case)), label="invalid parameter")
    name, (config, value) = _invalid_case(ctx, data, case, which)
    case = replace(case, config=config)
    ctx.use_case(case)
    try:
        layer = ctx.call("build", ctx.implementation.build, config)
    except ImplementationLost:
        raise
    except ImplementationError as problem:
        if isinstance(problem.__cause__, UnsupportedConfig):
            reject()
        return
    raised, _ = ctx.attempt("set_state", layer.set_state, case.state)
    if not raised:
        raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    ctx.require(raised, f"{name}={value!r} was accepted without an error")


#: Where renorm.params.sigma puts an invalid moving standard deviation ``S`` against the
#: floor ``sqrt(eps)``, in known shares: ``zero`` (1/4; floored, ``sqrt(eps)``; unfloored, a
#: division by zero), ``beyond`` the floor (1/2: ``S = -k * max(sigma_B, sqrt(eps))``, so
#: that ``|S|`` read for ``max(S, sqrt(eps))`` shows in inference, ``1 / |S|`` against
#: ``1 / sqrt(eps)``, and in training, ``r < 1`` against ``r >= 1``) and ``within`` it
#: (1/4: ``|S| < sqrt(eps)``, shown by a reading without the floor only).
SIGMA_PLACES = ("beyond", "zero", "beyond", "within")
_SIGMA_PLACES = st.sampled_from(SIGMA_PLACES)
#: ``k`` for a sigma beyond the floor, and ``|S| / sqrt(eps)`` within it.
_BEYOND_FACTOR = st.sampled_from([4.0, 2.0, 16.0])
_WITHIN_FACTOR = st.sampled_from([0.5, 0.25])
#: The least ``|gamma|`` of the feature with the invalid sigma: a gamma near 0 would hide
#: the sigma its output is divided by.
SHOWING_GAMMA = 0.25


def _invalid_spread(data: Any, case: RenormCase, feature: int) -> float:
    """An invalid moving spread for ``feature`` in the case's dtype (renorm.params.sigma)."""
    cfg = case.renorm
    dtype = case.config.dtype
    if cfg.average != "std":
        values = [-1.0, -0.5 * cfg.eps, -2.0 * cfg.eps]
        return float(round_to(data.draw(st.sampled_from(values), label="var"), dtype))
    place = data.draw(_SIGMA_PLACES, label="sigma against the floor")
    floor = math.sqrt(cfg.eps)
    if place == "zero":
        return 0.0
    if place == "within":
        magnitude = floor * data.draw(_WITHIN_FACTOR, label="|sigma| / sqrt(eps)")
    else:
        batch_sigma = batch_moments(case.x, cfg.feature_axis, cfg.eps)[1][feature]
        reach = max(float(batch_sigma), floor) if math.isfinite(batch_sigma) else floor
        factor = data.draw(_BEYOND_FACTOR, label="|sigma| / max(sigma_B, sqrt(eps))")
        magnitude = min(factor * reach, float_format(dtype).max / 64)
    return float(round_to(-magnitude, dtype))


def _showing_params(case: RenormCase, feature: int) -> tuple[Array, Array] | None:
    """The case's parameters with ``|gamma| >= SHOWING_GAMMA`` at ``feature`` (exact in
    every dtype), so that the output shows the sigma it is divided by."""
    if case.params is None:
        return None
    gamma, beta = case.params
    if abs(gamma[feature]) >= SHOWING_GAMMA:
        return case.params
    gamma = np.array(gamma, dtype=np.float64)
    gamma[feature] = 1.0
    return gamma, beta


@renorm_check("renorm.params.sigma", depends_on=("renorm.train.output", "renorm.infer.output"))
def params_sigma(ctx: CheckContext, data: Any) -> None:
    """A moving sigma <= 0 (or a negative moving variance) in the set an operation reads:
    that operation, or set_state, raises, unless the dialect's floor makes sigma positive
    (then a zero sigma is a valid state: the output is the reference's with
    ``sigma = sqrt(eps)``; a negative one may raise).

    Every set gets an invalid sigma of its own in one feature, so that both operations are
    checked in every draw (training reads the correction set, inference the inference set),
    each sigma placed against the floor as :data:`SIGMA_PLACES` says: a negative sigma read
    as ``|sigma|``, or one not floored, shows in every dtype."""
    case = draw_renorm(ctx, data, Wanted(affine=None))
    cfg = case.renorm
    feature = data.draw(st.integers(0, cfg.num_features - 1), label="feature")
    reads = {
        "infer": "spread",
        "train_step": "correction_spread" if case.state.separate else "spread",
    }
    spreads: dict[str, Array] = {}
    for field in dict.fromkeys(reads.values()):
        spreads[field] = np.array(getattr(case.state, field), dtype=np.float64)
        spreads[field][feature] = _invalid_spread(data, case, feature)
    values = [float(spread[feature]) for spread in spreads.values()]
    bad_state = unchecked_replace(case.state, **spreads)
    case = replace(case, state=bad_state, params=_showing_params(case, feature))
    ctx.use_case(case)
    floored = cfg.sigma_floor == "sqrt_eps" and cfg.average == "std"
    zero_only = (
        "a moving sigma of 0, which the floor on sigma makes "
        f"sqrt(eps) = {np.sqrt(cfg.eps)!r} (feature {feature})"
    )
    for operation, field in sorted(reads.items()):
        value = float(spreads[field][feature])
        layer = build(ctx, case, set_state=False)
        raised, _ = ctx.attempt("set_state", layer.set_state, bad_state)
        if raised:
            ctx.require(not floored or min(values) < 0.0, f"set_state rejected {zero_only}")
            continue
        function = layer.train_step if operation == "train_step" else layer.infer
        raised, y = ctx.attempt(operation, function, case.x)
        if not floored:
            ctx.require(
                raised,
                f"{operation} accepted a moving {'sigma' if cfg.average == 'std' else 'variance'}"
                f" of {value!r} ({field.replace('_', ' ')}, feature {feature})",
            )
            continue
        if raised:
            ctx.require(min(values) < 0.0, f"{operation} rejected {zero_only}")
            continue
        sigma = np.maximum(spreads[field], np.sqrt(cfg.eps))
        if operation == "train_step":
            expect_train_output(ctx, case, y, sigma=sigma)
        else:
            expect_inference_output(ctx, case, y, sigma=sigma)


@renorm_check("renorm.params.no_nan_state")
def params_no_nan_state(ctx: CheckContext, data: Any) -> None:
    """Valid and invalid eps, rates and bounds (NaN included): a training step from a finite
    state on a finite input raises or leaves no NaN in any moving statistic."""
    case = draw_renorm(ctx, data)
    kinds = ["valid", *_parameter_kinds(case)]
    which = data.draw(st.sampled_from(kinds), label="parameter")
    if which != "valid":
        _, (config, _) = _invalid_case(ctx, data, case, which)
        case = replace(case, config=config)
        ctx.use_case(case)
    try:
        layer = ctx.call("build", ctx.implementation.build, case.config)
    except ImplementationLost:
        raise
    except ImplementationError:
        return
    raised, _ = ctx.attempt("set_state", layer.set_state, case.state)
    if raised:
        return
    raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    if not raised:
        _nan_free(ctx, moving_state(ctx, layer, "after"), f"with {which} parameters")
