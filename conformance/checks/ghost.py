"""Checks of the ghost-batch chapter (spec: ghost.md): ghost batches of ``virtual_batch_size``.

A ghost case is a drawn BN case whose batch is redrawn with ``G`` ghost batches of ``V``
samples (or, for ghost.remainder and ghost.infer, a size that is not a multiple of ``V``);
``V`` is recorded in the report's notes. Expected values and bounds are those of the BN
reference and of bn.accuracy.* applied to each ghost batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from hypothesis import strategies as st

from normspec import reference
from normspec.conformance.checks import check
from normspec.conformance.checks.batchnorm import (
    expect_gradients,
    expect_inference_output,
    same_state,
)
from normspec.conformance.context import CheckContext
from normspec.conformance.dtypes import round_to
from normspec.conformance.guard import ImplementationError, ImplementationLost
from normspec.conformance.strategies import (
    BatchNormCase,
    Conditioning,
    Sizes,
    Wanted,
    arrange,
    cotangents,
    feature_values,
)
from normspec.conformance.tolerance import (
    Comparison,
    Moments,
    StatisticsUpdate,
    backward_bounds,
    compare,
    running_bounds,
    train_output_bound,
)
from normspec.reference import ghost
from normspec.reference.ghost import GhostDialect, GhostGroups

GHOST = ("ghost_batches",)
OTHER: dict[GhostGroups, GhostGroups] = {"consecutive": "strided", "strided": "consecutive"}


def _dialect(ctx: CheckContext) -> GhostDialect:
    found = ctx.dialect.ghost
    ctx.require(found is not None, f"profile {ctx.dialect.name} defines no ghost batches")
    assert found is not None
    return found


def ghost_case(
    ctx: CheckContext,
    data: Any,
    *,
    groups: tuple[int, int] = (1, 4),
    sizes: tuple[int, int] = (1, 4),
    remainder: bool | None = False,
    wanted: Wanted | None = None,
    conditioning: Conditioning = "well",
) -> BatchNormCase:
    """A BN case with a batch of ``G * V (+ r)`` samples and ``virtual_batch_size = V``.

    ``remainder``: ``False`` a multiple of ``V``; ``True`` not one (``V >= 2``); ``None``
    either. A ghost batch has at least two values per feature. ``wanted``: the setting
    asked of the case (:meth:`CheckContext.draw_case`), its batch drawn of one sample;
    ``conditioning``: its input's.
    """
    # the drawn case's own batch is replaced: a batch of one keeps its draws few
    wanted = wanted or Wanted()
    one_sample = replace(wanted.sizes, max_batch=1)
    case = ctx.draw_case(
        data, "ghost_batches", wanted=replace(wanted, sizes=one_sample), conditioning=conditioning
    )
    cfg = case.config
    spatial = case.x.size // (case.x.shape[0] * cfg.num_features)
    # at least two values per feature in a ghost batch (one is bn.degenerate.single_value's)
    low = max(2 if remainder else sizes[0], -(-2 // spatial))
    size = data.draw(st.integers(low, max(low, sizes[1])), label="virtual_batch_size")
    count = data.draw(st.integers(0 if remainder else groups[0], groups[1]), label="ghost batches")
    extra = 0
    if remainder is None or remainder:
        extra = data.draw(st.integers(1 if remainder else 0, size - 1), label="extra samples")
    batch = max(count * size + extra, 1)
    shape = (batch, *case.x.shape[1:])
    x = data.draw(feature_values(shape, cfg.feature_axis, cfg.dtype, conditioning))
    dy = round_to(data.draw(cotangents(shape)), cfg.dtype)
    config = replace(cfg, virtual_batch_size=size)
    case = ctx.use_case(
        replace(case, config=config, x=arrange(x, case.layout, cfg.feature_axis), dy=dy)
    )
    ctx.notes["virtual_batch_size"] = size
    return case


def _params(case: BatchNormCase) -> tuple[Any, Any]:
    return (None, None) if case.params is None else case.params


def _rows(case: BatchNormCase, groups: GhostGroups) -> list[Any]:
    size = case.config.virtual_batch_size
    assert size is not None
    return ghost.ghost_batches(case.x.shape[0], size, groups)


def _output_comparison(
    ctx: CheckContext, case: BatchNormCase, y: Any, groups: GhostGroups
) -> Comparison:
    cfg = case.config
    gamma, beta = _params(case)
    assert cfg.virtual_batch_size is not None
    expected, _ = ghost.train_forward(
        case.x,
        gamma,
        beta,
        eps=cfg.eps,
        feature_axis=cfg.feature_axis,
        virtual_batch_size=cfg.virtual_batch_size,
        groups=groups,
    )
    bound = np.empty(case.x.shape)
    precision = ctx.precision(cfg.dtype)
    for rows in _rows(case, groups):
        part = case.x[rows]
        bound[rows] = np.broadcast_to(
            train_output_bound(precision, part, gamma, beta, cfg.eps, cfg.feature_axis), part.shape
        )
    actual = ctx.shape_of("y", y, case.x.shape)
    return compare(
        f"training output y ({groups} ghost batches)", actual, expected, bound, cfg.dtype
    )


@check("ghost.train.output", needs=GHOST, depends_on=("conv.io.shape_dtype",))
def train_output(ctx: CheckContext, data: Any) -> None:
    """Each ghost batch normalized with its own statistics, whichever way the ghost batches
    are formed: that is ghost.groups' business."""
    grouping = _dialect(ctx).groups
    case = ghost_case(ctx, data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    y = ctx.call("train_step", layer.train_step, case.x)
    claimed = _output_comparison(ctx, case, y, grouping)
    if not claimed.ok and _output_comparison(ctx, case, y, OTHER[grouping]).ok:
        return
    ctx.expect(claimed)


@check("ghost.groups", needs=GHOST, depends_on=("ghost.train.output",))
def groups(ctx: CheckContext, data: Any) -> None:
    """At least two ghost batches of at least two samples: where the two forms differ."""
    grouping = _dialect(ctx).groups
    case = ghost_case(ctx, data, groups=(2, 4), sizes=(2, 4))
    layer = ctx.build(case)
    y = ctx.call("train_step", layer.train_step, case.x)
    ctx.expect(_output_comparison(ctx, case, y, grouping))


@check("ghost.running", needs=GHOST, depends_on=("ghost.groups",))
def running(ctx: CheckContext, data: Any) -> None:
    dialect = _dialect(ctx)
    case = ghost_case(ctx, data)
    assert case.state is not None and case.rate is not None
    cfg = case.config
    layer = ctx.build(case)
    ctx.call("train_step", layer.train_step, case.x)
    after = ctx.state_of(layer)
    ctx.require(after is not None, "the layer reports no running statistics after a training step")
    assert after is not None and cfg.virtual_batch_size is not None
    _, stats = ghost.train_forward(
        case.x,
        eps=cfg.eps,
        feature_axis=cfg.feature_axis,
        virtual_batch_size=cfg.virtual_batch_size,
        groups=dialect.groups,
    )
    estimator = ctx.dialect.running_variance
    expected = ghost.update_running(
        case.state, stats, rate=case.rate, estimator=estimator, running=dialect.running
    )
    mean_bound = np.zeros(cfg.num_features)
    var_bound = np.zeros(cfg.num_features)
    for rows in _rows(case, dialect.groups):
        update = StatisticsUpdate(
            case.x[rows],
            cfg.feature_axis,
            alpha=case.rate,
            before=Moments(case.state.mean, case.state.var),
            after=Moments(expected.mean, expected.var),
        )
        bounds = running_bounds(ctx.precision(cfg.dtype), update, unbiased=estimator == "unbiased")
        mean_bound += bounds.mean
        var_bound += bounds.var
    features = (cfg.num_features,)
    for name, actual, wanted, bound in (
        ("running mean", after.mean, expected.mean, mean_bound),
        ("running variance", after.var, expected.var, var_bound),
    ):
        quantity = f"{name} ({dialect.running} over {dialect.groups} ghost batches)"
        ctx.expect(
            compare(quantity, ctx.shape_of(name, actual, features), wanted, bound, cfg.dtype)
        )
    if ctx.capabilities.step_counter:
        ctx.require(
            after.steps == case.state.steps + 1,
            f"step counter went from {case.state.steps} to {after.steps} in one training step",
        )


@check("ghost.backward", needs=(*GHOST, "backward"), depends_on=("ghost.groups",))
def backward(ctx: CheckContext, data: Any) -> None:
    """The training-mode gradients of every case, and on some the inference-mode ones."""
    case = ghost_case(ctx, data, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=True)
    cfg = case.config
    grouping = _dialect(ctx).groups
    gamma, _ = _params(case)
    assert cfg.virtual_batch_size is not None
    expected = ghost.train_backward(
        case.dy,
        case.x,
        gamma,
        eps=cfg.eps,
        feature_axis=cfg.feature_axis,
        virtual_batch_size=cfg.virtual_batch_size,
        groups=grouping,
    )
    dx_bound = np.empty(case.x.shape)
    dgamma_bound = np.zeros(cfg.num_features)
    dbeta_bound = np.zeros(cfg.num_features)
    for rows in _rows(case, grouping):
        x, dy = case.x[rows], case.dy[rows]
        part = reference.train_backward(dy, x, gamma, eps=cfg.eps, feature_axis=cfg.feature_axis)
        bounds = backward_bounds(
            ctx.precision(cfg.dtype), x, dy, gamma, cfg.eps, cfg.feature_axis, part
        )
        dx_bound[rows] = np.broadcast_to(bounds.dx, x.shape)
        dgamma_bound += bounds.dgamma
        dbeta_bound += bounds.dbeta
    ctx.expect(
        compare("dx", ctx.shape_of("dx", grads.dx, case.x.shape), expected.dx, dx_bound, cfg.dtype)
    )
    if cfg.affine:
        features = (cfg.num_features,)
        for name, actual, wanted, bound in (
            ("dgamma", grads.dgamma, expected.dgamma, dgamma_bound),
            ("dbeta", grads.dbeta, expected.dbeta, dbeta_bound),
        ):
            ctx.expect(
                compare(name, ctx.shape_of(name, actual, features), wanted, bound, cfg.dtype)
            )
    if data.draw(st.booleans(), label="inference too"):
        layer = ctx.build(case)
        grads = ctx.call("vjp", layer.vjp, case.x, case.dy, training=False)
        expect_gradients(ctx, case, grads, training=False)


@check("ghost.infer", needs=GHOST, depends_on=("conv.io.shape_dtype",))
def infer(ctx: CheckContext, data: Any) -> None:
    case = ghost_case(ctx, data, remainder=None, wanted=Wanted(affine=None))
    layer = ctx.build(case)
    before = ctx.state_of(layer)
    expect_inference_output(ctx, case, ctx.call("infer", layer.infer, case.x))
    after = ctx.state_of(layer)
    assert before is not None
    ctx.require(
        same_state(before, after), lambda: f"inference changed the state from {before} to {after}"
    )


@check("ghost.remainder", needs=GHOST)
def remainder(ctx: CheckContext, data: Any) -> None:
    case = ghost_case(ctx, data, remainder=True)
    layer = ctx.build(case)
    before = ctx.state_of(layer)
    raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    size = case.config.virtual_batch_size
    ctx.require(
        raised,
        f"a training step on a batch of {case.x.shape[0]} samples with virtual_batch_size "
        f"{size} returned an output instead of raising",
    )
    after = ctx.state_of(layer)
    assert before is not None
    ctx.require(
        same_state(before, after),
        lambda: f"the rejected training step changed the state from {before} to {after}",
    )


INVALID_SIZES = (0, -1, -4)


@check("ghost.params.invalid", needs=GHOST)
def params_invalid(ctx: CheckContext, data: Any) -> None:
    # the values do not matter here: a small case keeps the shrinking of a failure short
    case = ghost_case(
        ctx, data, groups=(1, 2), wanted=Wanted(Sizes.fixed_features(1, max_spatial=1))
    )
    value = data.draw(st.sampled_from(INVALID_SIZES), label="virtual_batch_size")
    config = replace(case.config, virtual_batch_size=value)
    case = ctx.use_case(replace(case, config=config))
    ctx.notes["virtual_batch_size"] = value
    try:
        layer = ctx.call("build", ctx.implementation.build, config)
    except ImplementationLost:
        raise
    except ImplementationError:
        return
    raised, _ = ctx.attempt("train_step", layer.train_step, case.x)
    ctx.require(raised, f"virtual_batch_size={value!r} was accepted without an error")
