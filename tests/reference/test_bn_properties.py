"""Properties of the float64 reference that need no oracle.

Inputs are never modified (they arrive read-only, and are compared after the call), outputs
never alias inputs, the state is immutable, a NaN or infinity in one feature changes nothing
in the others, and invalid arguments raise ValueError naming the culprit. Clauses:
conv.io.inputs_unmodified, conv.io.shape_dtype, bn.running.*, bn.degenerate.*,
bn.params.shape, bn.params.invalid, bn.params.no_nan_state, bn.infer.output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from bn_measure import Case
from bn_strategies import cases, shapes
from hypothesis import given
from hypothesis import strategies as st

from normspec.reference import (
    Affine,
    BatchNormConfig,
    BatchStatistics,
    RunningStatistics,
    backward,
    batch_statistics,
    inference,
    inference_backward,
    inference_forward,
    train_backward,
    train_forward,
    training_step,
    update_running_statistics,
)


def frozen(array: np.ndarray | None) -> np.ndarray | None:
    if array is None:
        return None
    out = np.array(array)
    out.setflags(write=False)
    return out


def every_output(case: Case) -> dict[str, np.ndarray]:
    """Every array every reference function returns for ``case``, by name."""
    x, axis, eps = case.x, case.axis, case.eps
    out: dict[str, np.ndarray] = {}
    y, stats = train_forward(x, case.gamma, case.beta, eps=eps, feature_axis=axis)
    out.update(y=y, mean=stats.mean, var=stats.var)
    grads = train_backward(case.dy, x, case.gamma, eps=eps, feature_axis=axis)
    out.update(dx=grads.dx, dgamma=grads.dgamma, dbeta=grads.dbeta)
    again = batch_statistics(x, axis)
    out.update(stats_mean=again.mean, stats_var=again.var)
    mean, var = case.running_mean, case.running_var
    out["infer_y"] = inference_forward(
        x, mean, var, case.gamma, case.beta, eps=eps, feature_axis=axis
    )
    grads = inference_backward(case.dy, x, mean, var, case.gamma, eps=eps, feature_axis=axis)
    out.update(infer_dx=grads.dx, infer_dgamma=grads.dgamma, infer_dbeta=grads.dbeta)
    state = RunningStatistics(mean, var, case.steps)
    new = update_running_statistics(state, stats, rate=case.rate, estimator="biased")
    out.update(running_mean=new.mean, running_var=new.var)
    return out


@given(case=cases(max_elements=256))
def test_inputs_never_modified_and_outputs_new(case: Case) -> None:
    """conv.io.inputs_unmodified: read-only inputs are accepted and keep their values; no
    output shares memory with an input; conv.io.shape_dtype: shapes and float64."""
    inputs = {
        "x": case.x,
        "dy": case.dy,
        "gamma": frozen(case.gamma),
        "beta": frozen(case.beta),
        "running_mean": frozen(case.running_mean),
        "running_var": frozen(case.running_var),
    }
    before = {k: None if v is None else v.copy() for k, v in inputs.items()}
    assert not case.x.flags.writeable and not case.dy.flags.writeable
    frozen_case = dataclasses.replace(
        case,
        gamma=inputs["gamma"],
        beta=inputs["beta"],
        running_mean=inputs["running_mean"],
        running_var=inputs["running_var"],
    )
    outputs = every_output(frozen_case)
    for name, value in inputs.items():
        if value is not None:
            assert np.array_equal(value, before[name], equal_nan=True), name
    features = case.x.shape[case.axis]
    for name, result in outputs.items():
        assert result.dtype == np.float64, name
        full = name in ("y", "dx", "infer_y", "infer_dx")
        assert result.shape == (case.x.shape if full else (features,)), name
        for input_name, value in inputs.items():
            if value is not None:
                assert not np.shares_memory(result, value), (name, input_name)


@given(case=cases(max_elements=64), data=st.data())
def test_state_is_immutable(case: Case, data: st.DataObject) -> None:
    """bn.running.*: a training step returns a new state and leaves the old one as it was;
    inference and backward change no state (bn.running.no_inference_update)."""
    features = case.x.shape[case.axis]
    n = case.x.size // features
    estimator = "biased" if n == 1 else data.draw(st.sampled_from(("biased", "unbiased")))
    config = BatchNormConfig(
        features,
        feature_axis=case.axis,
        eps=case.eps,
        rate=case.rate,
        running_variance=estimator,  # type: ignore[arg-type]
    )
    params = None
    if case.gamma is not None:
        params = Affine(frozen(case.gamma), frozen(case.beta))  # type: ignore[arg-type]
    state = RunningStatistics(case.running_mean, case.running_var, case.steps)
    mean, var, steps = state.mean.copy(), state.var.copy(), state.steps
    assert not state.mean.flags.writeable and not state.var.flags.writeable
    with pytest.raises(ValueError):
        state.mean[0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.steps = 5  # type: ignore[misc]
    _, new = training_step(config, params, state, case.x)
    inference(config, params, state, case.x)
    backward(config, params, state, case.x, case.dy, training=False)
    backward(config, params, state, case.x, case.dy, training=True)
    assert new is not None and new is not state and new.steps == steps + 1
    if params is not None:  # the parameters arrived read-only and are unchanged
        assert np.array_equal(params.gamma, case.gamma) and np.array_equal(params.beta, case.beta)
    assert not new.mean.flags.writeable and not new.var.flags.writeable
    assert np.array_equal(state.mean, mean) and np.array_equal(state.var, var)
    assert state.steps == steps
    untracked = dataclasses.replace(config, track_running_stats=False)
    _, none = training_step(untracked, params, None, case.x)
    assert none is None  # bn.running.untracked: no state at all


def poison(array: np.ndarray, axis: int, feature: int, index: int, value: float) -> np.ndarray:
    """A copy of ``array`` in the same memory layout (the reference's summation order may
    follow the layout) with one value of one feature replaced."""
    out = np.empty_like(array)
    out[...] = array
    moved = np.moveaxis(out, axis, 0)
    flat = moved[feature].reshape(-1).copy()
    flat[index % flat.size] = value
    moved[feature] = flat.reshape(moved[feature].shape)
    return out


@given(
    case=cases(max_elements=96),
    data=st.data(),
    value=st.sampled_from((math.nan, math.inf, -math.inf)),
    where=st.sampled_from(("x", "dy", "x+dy")),
)
def test_nonfinite_feature_is_isolated(
    case: Case, data: st.DataObject, value: float, where: str
) -> None:
    """bn.degenerate.nonfinite_isolated: NaN or +-inf in one feature's values (of x or dy)
    changes no output, gradient or running statistic of any other feature, bit for bit."""
    features = case.x.shape[case.axis]
    feature = data.draw(st.integers(0, features - 1))
    index = data.draw(st.integers(0, 10**6))
    clean = every_output(case)
    dirty_case = dataclasses.replace(
        case,
        x=poison(case.x, case.axis, feature, index, value) if "x" in where else case.x,
        dy=poison(case.dy, case.axis, feature, index, value) if "dy" in where else case.dy,
    )
    dirty = every_output(dirty_case)
    others = [f for f in range(features) if f != feature]
    for name, result in clean.items():
        where_ = f"{name}: feature {feature} poisoned in {where}"
        if result.shape == (features,):
            assert np.array_equal(dirty[name][others], result[others]), where_
        else:
            a = np.take(dirty[name], others, axis=case.axis)
            b = np.take(result, others, axis=case.axis)
            assert np.array_equal(a, b), (
                f"{where_}; x={case.x.tolist()!r}, dy={case.dy.tolist()!r}, "
                f"layouts {case.x.strides}, {case.dy.strides}"
            )


@given(case=cases(max_elements=64), data=st.data())
def test_nonfinite_running_statistics_are_isolated(case: Case, data: st.DataObject) -> None:
    """bn.degenerate.nonfinite_isolated in inference: a NaN running mean or an infinite
    running variance of one feature leaves the other features' outputs unchanged."""
    features = case.x.shape[case.axis]
    feature = data.draw(st.integers(0, features - 1))
    mean, var = case.running_mean.copy(), case.running_var.copy()
    if data.draw(st.booleans()):
        mean[feature] = math.nan
    else:
        var[feature] = math.inf
    args = (case.gamma, case.beta)
    clean = inference_forward(
        case.x, case.running_mean, case.running_var, *args, eps=case.eps, feature_axis=case.axis
    )
    dirty = inference_forward(case.x, mean, var, *args, eps=case.eps, feature_axis=case.axis)
    others = [f for f in range(features) if f != feature]
    assert np.array_equal(
        np.take(clean, others, axis=case.axis), np.take(dirty, others, axis=case.axis)
    )


@given(case=cases(max_elements=64), data=st.data())
def test_inference_output_depends_on_own_value_only(case: Case, data: st.DataObject) -> None:
    """bn.infer.output: every inference output depends on its own input value only, so any
    sub-batch along a reduction axis gives the same outputs, bit for bit."""
    reduce_axes = [a for a in range(case.x.ndim) if a != case.axis % case.x.ndim]
    axis = data.draw(st.sampled_from(reduce_axes))
    size = case.x.shape[axis]
    start = data.draw(st.integers(0, size - 1))
    stop = data.draw(st.integers(start + 1, size))
    index = [slice(None)] * case.x.ndim
    index[axis] = slice(start, stop)
    part = case.x[tuple(index)]
    args = (case.running_mean, case.running_var, case.gamma, case.beta)
    whole = inference_forward(case.x, *args, eps=case.eps, feature_axis=case.axis)
    alone = inference_forward(part, *args, eps=case.eps, feature_axis=case.axis)
    assert np.array_equal(whole[tuple(index)], alone)


constant_values = st.floats(allow_nan=False, allow_infinity=False)


@given(
    layout=shapes(max_elements=64),
    data=st.data(),
    eps=st.one_of(st.sampled_from((1e-5, 5e-324, 1e-300, 1e300)), st.floats(1e-300, 1e10)),
)
def test_zero_variance_gives_beta_exactly(
    layout: tuple[tuple[int, ...], int], data: st.DataObject, eps: float
) -> None:
    """bn.degenerate.zero_variance: a constant feature (any finite value, huge, tiny or
    subnormal) gives y = beta exactly and finite gradients: dgamma = 0 and
    dx = gamma s (dy - mean(dy)) with s = 1 / sqrt(eps)."""
    shape, axis = layout
    features = shape[axis]
    values = data.draw(hnp.arrays(np.float64, (features,), elements=constant_values))
    x = np.broadcast_to(
        values.reshape([features if i == axis % len(shape) else 1 for i in range(len(shape))]),
        shape,
    )
    gamma = data.draw(hnp.arrays(np.float64, (features,), elements=st.floats(-10, 10)))
    beta = data.draw(hnp.arrays(np.float64, (features,), elements=constant_values))
    dy = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e3, 1e3)))
    y, stats = train_forward(x, gamma, beta, eps=eps, feature_axis=axis)
    expected = np.broadcast_to(
        np.moveaxis(np.ones(shape), axis, -1) * beta, np.moveaxis(np.ones(shape), axis, -1).shape
    )
    assert np.array_equal(np.moveaxis(y, axis, -1), expected)
    assert np.array_equal(stats.mean, values) and np.array_equal(stats.var, np.zeros(features))
    grads = train_backward(dy, x, gamma, eps=eps, feature_axis=axis)
    assert np.all(np.isfinite(grads.dx)) and np.array_equal(grads.dgamma, np.zeros(features))
    rows = np.moveaxis(dy, axis, 0).reshape(features, -1)
    s = 1 / np.sqrt(eps)
    want = (gamma * s)[:, None] * (rows - rows.mean(axis=1, keepdims=True))
    got = np.moveaxis(grads.dx, axis, 0).reshape(features, -1)
    scale = (np.abs(gamma) * s)[:, None] * (np.abs(rows) + np.abs(rows).mean(axis=1, keepdims=True))
    assert np.all(np.abs(got - want) <= 2**-50 * rows.shape[1] * scale + 1e-300)


# ---------------------------------------------------------------------------------------
# invalid arguments


def calls(x: np.ndarray, axis: int, **overrides: Any) -> dict[str, Callable[[], object]]:
    """Every reference entry point on ``x``, with one argument replaced."""
    features = x.shape[axis % x.ndim]
    a: dict[str, Any] = {
        "gamma": np.ones(features),
        "beta": np.zeros(features),
        "mean": np.zeros(features),
        "var": np.ones(features),
        "dy": np.ones(x.shape),
        "eps": 1e-5,
        "feature_axis": axis,
    }
    a.update(overrides)
    kw = {"eps": a["eps"], "feature_axis": a["feature_axis"]}
    return {
        "train_forward": lambda: train_forward(x, a["gamma"], a["beta"], **kw),
        "train_backward": lambda: train_backward(a["dy"], x, a["gamma"], **kw),
        "inference_forward": lambda: inference_forward(
            x, a["mean"], a["var"], a["gamma"], a["beta"], **kw
        ),
        "inference_backward": lambda: inference_backward(
            a["dy"], x, a["mean"], a["var"], a["gamma"], **kw
        ),
    }


X = np.arange(24.0).reshape(2, 3, 4)


@pytest.mark.parametrize("eps", [0.0, -1e-5, -0.0, math.nan, math.inf, -math.inf])
def test_invalid_eps_is_rejected_naming_eps(eps: float) -> None:
    """bn.params.invalid: eps <= 0 (or not finite) raises ValueError naming eps."""
    for name, call in calls(X, 1, eps=eps).items():
        with pytest.raises(ValueError, match="eps"):
            call()
        assert name
    with pytest.raises(ValueError, match="eps"):
        BatchNormConfig(3, eps=eps)


@pytest.mark.parametrize("rate", [-0.1, 1.0 + 2**-52, 2.0, math.nan, math.inf, -math.inf])
def test_invalid_update_rate_is_rejected(rate: float) -> None:
    """bn.params.invalid: an update rate alpha outside [0, 1] raises ValueError naming it."""
    stats = batch_statistics(X, 1)
    with pytest.raises(ValueError, match="update rate alpha"):
        update_running_statistics(
            RunningStatistics.initial(3), stats, rate=rate, estimator="biased"
        )
    with pytest.raises(ValueError, match="update rate alpha"):
        BatchNormConfig(3, rate=rate)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("gamma", "gamma"),
        ("beta", "beta"),
        ("mean", "running mean"),
        ("var", "running variance"),
    ],
)
@pytest.mark.parametrize("length", [0, 1, 2, 4])
def test_parameters_of_wrong_length_are_rejected(name: str, match: str, length: int) -> None:
    """bn.params.shape: per-feature vectors of another length are rejected, never broadcast."""
    bad = np.ones(length)
    for call_name, call in calls(X, 1, **{name: bad}).items():
        uses = (
            name in ("gamma",)
            or (name == "beta" and "forward" in call_name)
            or (name in ("mean", "var") and "inference" in call_name)
        )
        if uses:
            with pytest.raises(ValueError, match=match):
                call()
    scalar = calls(X, 1, **{name: np.float64(1.0)})["inference_forward"]
    with pytest.raises(ValueError, match=match):
        scalar()  # a scalar is not broadcast either


def test_wrong_shapes_are_rejected() -> None:
    """bn.params.shape: dy of another shape, x of rank 1, a feature axis out of range, a
    state of another feature count: ValueError naming the argument."""
    for name, call in calls(X, 1, dy=np.ones((2, 3, 5))).items():
        if "backward" in name:
            with pytest.raises(ValueError, match="dy"):
                call()
    for call in calls(np.ones((2, 3)), 1).values():
        call()  # the reference shape itself is fine
    with pytest.raises(ValueError, match="x must have rank"):
        train_forward(np.ones(4))
    for axis in (3, -4, 10):
        for call in calls(X, axis).values():
            with pytest.raises(ValueError, match="feature_axis"):
                call()
    stats = batch_statistics(X, 1)
    with pytest.raises(ValueError, match="features"):
        update_running_statistics(RunningStatistics.initial(4), stats, rate=0.1, estimator="biased")
    config = BatchNormConfig(4)
    with pytest.raises(ValueError, match="gamma"):
        training_step(config, Affine.identity(4), RunningStatistics.initial(4), X)
    with pytest.raises(ValueError, match="running variance"):
        inference_forward(X, np.zeros(3), -np.ones(3))
    with pytest.raises(ValueError, match="running variance"):
        inference_backward(np.ones(X.shape), X, np.zeros(3), -np.ones(3))


@given(layout=shapes(max_elements=64), data=st.data())
def test_empty_batch_raises_naming_it(
    layout: tuple[tuple[int, ...], int], data: st.DataObject
) -> None:
    """bn.degenerate.empty_batch: no values per feature raises ValueError("empty batch: ...")
    in training, and the state is left as it was; inference returns an empty output."""
    shape, axis = layout
    reduce_axes = [a for a in range(len(shape)) if a != axis % len(shape)]
    empty = list(shape)
    empty[data.draw(st.sampled_from(reduce_axes))] = 0
    x = np.zeros(empty)
    features = shape[axis]
    for call in (
        lambda: train_forward(x, feature_axis=axis),
        lambda: train_backward(x, x, feature_axis=axis),
        lambda: batch_statistics(x, axis),
    ):
        with pytest.raises(ValueError, match="empty batch"):
            call()
    state = RunningStatistics.initial(features)
    config = BatchNormConfig(features, feature_axis=axis)
    with pytest.raises(ValueError, match="empty batch"):
        training_step(config, None, state, x)
    assert state.steps == 0 and np.array_equal(state.var, np.ones(features))
    y = inference_forward(x, np.zeros(features), np.ones(features), feature_axis=axis)
    assert y.shape == x.shape


def test_unbiased_with_one_value_raises() -> None:
    """bn.degenerate.single_value: n / (n - 1) is undefined for n = 1 (ValueError)."""
    stats = BatchStatistics(np.zeros(2), np.zeros(2), 1)
    with pytest.raises(ValueError, match="unbiased"):
        update_running_statistics(
            RunningStatistics.initial(2), stats, rate=0.1, estimator="unbiased"
        )
    new = update_running_statistics(
        RunningStatistics.initial(2), stats, rate=0.1, estimator="biased"
    )
    assert np.array_equal(new.var, np.full(2, 0.9))


@given(case=cases(max_elements=64))
def test_finite_input_never_writes_nan_state(case: Case) -> None:
    """bn.params.no_nan_state: for finite inputs and any valid rate and estimator, the
    running statistics after a step are finite, and the variance is not negative (within the
    ranges the cases use)."""
    features = case.x.shape[case.axis]
    n = case.x.size // features
    _, stats = train_forward(case.x, eps=case.eps, feature_axis=case.axis)
    estimator = "biased" if n == 1 else case.estimator
    state = RunningStatistics(case.running_mean, case.running_var, case.steps)
    new = update_running_statistics(
        state,
        stats,
        rate=case.rate,
        estimator=estimator,  # type: ignore[arg-type]
    )
    assert np.all(np.isfinite(new.mean)) and np.all(np.isfinite(new.var))
    assert np.all(new.var >= 0) and np.all(stats.var >= 0)


@given(
    layout=shapes(max_elements=64),
    dtype=st.sampled_from((np.float32, np.float16, np.int32, np.uint8, np.bool_)),
    data=st.data(),
)
def test_other_input_dtypes_give_float64(
    layout: tuple[tuple[int, ...], int], dtype: type, data: st.DataObject
) -> None:
    """conv.io.shape_dtype: the reference evaluates any real input in float64; the result is
    that of the input converted exactly to float64."""
    shape, axis = layout
    x = data.draw(hnp.arrays(dtype, shape))
    if not np.all(np.isfinite(x.astype(np.float64))):
        return
    y, stats = train_forward(x, feature_axis=axis)
    y64, stats64 = train_forward(x.astype(np.float64), feature_axis=axis)
    assert y.dtype == np.float64 and np.array_equal(y, y64)
    assert np.array_equal(stats.var, stats64.var)
    with pytest.raises(TypeError, match="x must be a real numeric array"):
        train_forward(np.full(shape, "a"), feature_axis=axis)
