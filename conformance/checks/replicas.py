"""Checks of the synchronized-BN chapter (replicas.md, sync.*): K replicas, one batch.

Each check draws a :class:`~normspec.conformance.strategies_replicas.ReplicaCase`, builds
the layer on K replicas (``build_replicated``), feeds every replica its slice and compares
each replica's results with its slice of the reference's, under the bounds of the BN
chapter evaluated on the concatenated batch of the counted values (n = N). The clauses
need the ``batchnorm`` and ``replicas`` capabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import reject
from hypothesis import strategies as st

from normspec import reference
from normspec.adapters.protocol import ReplicatedLayer
from normspec.conformance.checks import Body, check
from normspec.conformance.checks.batchnorm import expect_state_kept, rate_allowed, update_bounds
from normspec.conformance.context import CheckContext, reference_config, reference_params
from normspec.conformance.strategies_replicas import ReplicaCase
from normspec.conformance.tolerance import (
    Moments,
    StatisticsUpdate,
    backward_bounds,
    compare,
    running_bounds,
    train_output_bound,
)
from normspec.reference import replicas as sync_reference

Array = np.ndarray


def sync_check(
    clause_id: str, *, needs: tuple[str, ...] = (), **options: Any
) -> Callable[[Body], Body]:
    """Register a check of a ``sync.*`` clause: it needs the ``replicas`` capability."""
    return check(clause_id, needs=("replicas", *needs), **options)


def draw(ctx: CheckContext, data: Any, **options: Any) -> ReplicaCase:
    """Draw a replica case for this implementation (see
    :func:`~normspec.conformance.strategies_replicas.replica_cases`)."""
    case = ctx.draw_case(data, "replicas", **options)
    assert isinstance(case, ReplicaCase)
    return case


def build(ctx: CheckContext, case: ReplicaCase) -> ReplicatedLayer:
    """The layer on the case's replicas, with the case's parameters and state."""
    implementation: Any = ctx.implementation
    layer: ReplicatedLayer = ctx.call(
        "build_replicated", implementation.build_replicated, case.config, case.replicas
    )
    if case.params is not None:
        ctx.call("set_parameters", layer.set_parameters, *case.params)
    if case.state is not None:
        ctx.call("set_state", layer.set_state, case.state)
    return layer


def train(ctx: CheckContext, case: ReplicaCase, layer: ReplicatedLayer) -> list[Array]:
    """One synchronized training step; each replica's output checked for its shape."""
    ys = ctx.call("train_step", layer.train_step, case.parts(case.x), case.masks())
    return _per_replica(ctx, "training output y", ys, case)


def _per_replica(ctx: CheckContext, what: str, values: Any, case: ReplicaCase) -> list[Array]:
    ctx.require(
        isinstance(values, (list, tuple)) and len(values) == case.replicas,
        lambda: (
            f"{what}: expected a list of {case.replicas} arrays, one per replica, "
            f"got {values!r:.200}"
        ),
    )
    return [
        ctx.shape_of(f"{what} of replica {k}", value, part.shape)
        for k, (value, part) in enumerate(zip(values, case.parts(case.x), strict=True))
    ]


def _states(ctx: CheckContext, layer: ReplicatedLayer, case: ReplicaCase) -> list[Any]:
    states = ctx.call("states", layer.states)
    ctx.require(
        isinstance(states, (list, tuple)) and len(states) == case.replicas,
        lambda: f"states: expected {case.replicas} states, one per replica, got {states!r:.200}",
    )
    for k, state in enumerate(states):
        ctx.require(state is not None, f"replica {k} reports no running statistics after a step")
    return list(states)


def _gamma_beta(case: ReplicaCase) -> tuple[Any, Any]:
    return (None, None) if case.params is None else case.params


def _expected(ctx: CheckContext, case: ReplicaCase) -> tuple[list[Array], Any]:
    """The reference's outputs per replica and the state after the step."""
    return sync_reference.training_step(
        reference_config(case, ctx.dialect),
        reference_params(case),
        case.state,
        case.parts(case.x),
        case.masks(),
    )


def _spread(case: ReplicaCase, counted_values: Array) -> Array:
    """Per-value bounds of the counted concatenation placed back on the whole one (0 elsewhere)."""
    full = np.zeros(case.x.shape)
    full[case.sample_mask().reshape(-1)] = np.broadcast_to(
        counted_values, full[case.sample_mask().reshape(-1)].shape
    )
    return full


def expect_outputs(ctx: CheckContext, case: ReplicaCase, ys: list[Array]) -> None:
    """Each replica's output at its counted values (sync.train.output, bn.accuracy.forward)."""
    expected, _ = _expected(ctx, case)
    counted = case.counted()
    gamma, beta = _gamma_beta(case)
    cfg = case.config
    bound = _spread(
        case,
        train_output_bound(
            ctx.precision(cfg.dtype), counted.x, gamma, beta, cfg.eps, cfg.feature_axis
        ),
    )
    for k, (y, want, limit, mask) in enumerate(
        zip(ys, expected, case.parts(bound), case.parts(case.sample_mask()), strict=True)
    ):
        ctx.expect(compare(f"training output y of replica {k}", y, want, limit, cfg.dtype, mask))


def expect_states(
    ctx: CheckContext, case: ReplicaCase, states: list[Any], which: tuple[str, ...]
) -> None:
    """Every replica's running statistics after one step (sync.running.*)."""
    _, expected = _expected(ctx, case)
    assert expected is not None and case.state is not None
    bounds = update_bounds(ctx, case, case.counted().x, expected)
    features = (case.config.num_features,)
    for k, state in enumerate(states):
        for name in which:
            actual = ctx.shape_of(f"running {name} of replica {k}", getattr(state, name), features)
            ctx.expect(
                compare(
                    f"running {'mean' if name == 'mean' else 'variance'} of replica {k}",
                    actual,
                    getattr(expected, name),
                    getattr(bounds, name),
                    case.config.dtype,
                )
            )
        if ctx.capabilities.step_counter and "mean" in which:
            ctx.require(
                state.steps == case.state.steps + 1,
                f"the step counter of replica {k} went from {case.state.steps} to {state.steps} "
                "in one synchronized step",
            )


def expect_gradients(
    ctx: CheckContext, case: ReplicaCase, grads: Any, which: tuple[str, ...]
) -> None:
    """Each replica's dx (counted values) and parameter gradients (sync.backward.*)."""
    cfg = case.config
    ctx.require(
        isinstance(grads, (list, tuple)) and len(grads) == case.replicas,
        lambda: f"vjp: expected {case.replicas} gradients, one per replica, got {grads!r:.200}",
    )
    expected = sync_reference.backward(
        reference_config(case, ctx.dialect),
        reference_params(case),
        case.parts(case.x),
        case.parts(case.dy),
        case.masks(),
    )
    counted = case.counted()
    gamma, _ = _gamma_beta(case)
    whole = reference.train_backward(
        counted.dy, counted.x, gamma, eps=cfg.eps, feature_axis=cfg.feature_axis
    )
    bounds = backward_bounds(
        ctx.precision(cfg.dtype), counted.x, counted.dy, gamma, cfg.eps, cfg.feature_axis, whole
    )
    dx_bounds = case.parts(_spread(case, bounds.dx))
    reduced = ctx.capabilities.replica_param_gradients == "reduced"
    features = (cfg.num_features,)
    for k, (got, want) in enumerate(zip(grads, expected, strict=True)):
        if "dx" in which:
            dx = ctx.shape_of(f"dx of replica {k}", got.dx, want.dx.shape)
            mask = case.parts(case.sample_mask())[k]
            ctx.expect(compare(f"dx of replica {k}", dx, want.dx, dx_bounds[k], cfg.dtype, mask))
        if "dparams" in which and cfg.affine:
            for name, bound in (("dgamma", bounds.dgamma), ("dbeta", bounds.dbeta)):
                target = getattr(whole, name) if reduced else getattr(want, name)
                actual = ctx.shape_of(f"{name} of replica {k}", getattr(got, name), features)
                ctx.expect(compare(f"{name} of replica {k}", actual, target, bound, cfg.dtype))


def vjp(ctx: CheckContext, case: ReplicaCase, layer: ReplicatedLayer) -> Any:
    return ctx.call("vjp", layer.vjp, case.parts(case.x), case.parts(case.dy), case.masks())


# ------------------------------------------------------------------------ training


@sync_check("sync.train.statistics", applies=rate_allowed(1.0))
def train_statistics(ctx: CheckContext, data: Any) -> None:
    """Through every replica's running statistics after a step with alpha = 1: mu_G, and
    var_G up to the estimator factor N / (N - 1) (that factor is sync.running.var's)."""
    case = draw(ctx, data, rate=1.0)
    layer = build(ctx, case)
    train(ctx, case, layer)
    states = _states(ctx, layer, case)
    assert case.state is not None
    if all(
        np.array_equal(s.mean, case.state.mean) and np.array_equal(s.var, case.state.var)
        for s in states
    ):
        reject()
    counted = case.counted()
    batch = reference.batch_statistics(counted.x, case.config.feature_axis)
    n = batch.count
    features = (case.config.num_features,)
    for k, state in enumerate(states):
        readings = []
        for unbiased in (False, True):
            expected_var = batch.var * (n / (n - 1) if unbiased and n > 1 else 1.0)
            update = StatisticsUpdate(
                counted.x,
                case.config.feature_axis,
                alpha=1.0,
                before=Moments(case.state.mean, case.state.var),
                after=Moments(batch.mean, expected_var),
            )
            bounds = running_bounds(ctx.precision(case.config.dtype), update, unbiased=unbiased)
            readings.append(
                [
                    compare(
                        f"running {name} of replica {k} (the global {stat})",
                        ctx.shape_of(f"running {name}", value, features),
                        target,
                        bound,
                        case.config.dtype,
                    )
                    for name, stat, value, target, bound in (
                        ("mean", "mean mu_G", state.mean, batch.mean, bounds.mean),
                        ("variance", "variance var_G", state.var, expected_var, bounds.var),
                    )
                ]
            )
        ctx.expect_one_of(readings)


@sync_check("sync.train.output")
def train_output(ctx: CheckContext, data: Any) -> None:
    case = draw(ctx, data, affine=None)
    layer = build(ctx, case)
    expect_outputs(ctx, case, train(ctx, case, layer))


def expect_step_and_gradients(ctx: CheckContext, case: ReplicaCase) -> None:
    """One replicated training step's outputs and states, and (where there is a backward)
    its gradients on a fresh layer, against the reference."""
    layer = build(ctx, case)
    expect_outputs(ctx, case, train(ctx, case, layer))
    if case.state is not None:
        expect_states(ctx, case, _states(ctx, layer, case), ("mean", "var"))
    if ctx.capabilities.backward:
        grads = vjp(ctx, case, build(ctx, case))
        expect_gradients(ctx, case, grads, ("dx", "dparams"))


@sync_check("sync.train.mask", needs=("replica_masks",), depends_on=("sync.train.output",))
def train_mask(ctx: CheckContext, data: Any) -> None:
    expect_step_and_gradients(ctx, draw(ctx, data, masked=True))


# ------------------------------------------------------------------ running statistics


def _expect_running(ctx: CheckContext, data: Any, quantity: str) -> None:
    """One replicated training step, then each replica's running ``quantity``."""
    case = draw(ctx, data)
    layer = build(ctx, case)
    train(ctx, case, layer)
    expect_states(ctx, case, _states(ctx, layer, case), (quantity,))


@sync_check("sync.running.mean")
def running_mean(ctx: CheckContext, data: Any) -> None:
    _expect_running(ctx, data, "mean")


@sync_check("sync.running.var")
def running_var(ctx: CheckContext, data: Any) -> None:
    _expect_running(ctx, data, "var")


# ------------------------------------------------------------------------ backward


@sync_check("sync.backward.dx", needs=("backward",), depends_on=("sync.train.output",))
def backward_dx(ctx: CheckContext, data: Any) -> None:
    case = draw(ctx, data, affine=None)
    expect_gradients(ctx, case, vjp(ctx, case, build(ctx, case)), ("dx",))


@sync_check("sync.backward.dparams", needs=("backward",), depends_on=("sync.train.output",))
def backward_dparams(ctx: CheckContext, data: Any) -> None:
    case = draw(ctx, data)
    expect_gradients(ctx, case, vjp(ctx, case, build(ctx, case)), ("dparams",))


# ---------------------------------------------------------------------- degenerate


@sync_check(
    "sync.degenerate.empty_replica",
    needs=("replica_uneven_batches",),
    depends_on=("sync.train.output",),
)
def empty_replica(ctx: CheckContext, data: Any) -> None:
    case = draw(ctx, data, empty=True)
    expect_step_and_gradients(ctx, case)


@sync_check("sync.degenerate.all_empty")
def all_empty(ctx: CheckContext, data: Any) -> None:
    case = draw(ctx, data, all_empty=True)
    layer = build(ctx, case)
    raised, ys = ctx.attempt("train_step", layer.train_step, case.parts(case.x), None)
    if not raised:
        _per_replica(ctx, "training output y", ys, case)
    if case.state is None:
        return
    for k, after in enumerate(_states(ctx, layer, case)):
        expect_state_kept(ctx, case.state, after, f"a step with every replica empty (replica {k})")


# ------------------------------------------------------------------------ accuracy


@sync_check("sync.accuracy.concatenated", depends_on=("sync.train.output",))
def accuracy(ctx: CheckContext, data: Any) -> None:
    conditioning = data.draw(st.sampled_from(["ill", "well"]), label="conditioning")
    case = draw(ctx, data, conditioning=conditioning, empty=None)
    expect_step_and_gradients(ctx, case)
