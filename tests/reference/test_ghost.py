"""The ghost-batch reference (normspec.reference.ghost) checked independently of its code.

* The hand-worked case of ghost.md, exactly: output, ghost-batch statistics, both running
  rules, and the whole batch's variance that includes the spread between ghost batches.
* Per-group batch normalization by construction: the batch reshaped to ``(G, V, ...)``
  (consecutive) or ``(V, G, ...)`` (strided), each ghost batch normalized by NumPy's own
  ``mean`` and ``var``; and ``G = 1`` is batch normalization itself.
* The backward against central differences of ``L = sum(dy * y)`` in every input, gamma
  and beta.
* What is rejected: a batch that is not a multiple of ``V``, ``V`` that is not a positive
  integer, the batch axis as the feature axis, the cumulative average.

Clauses: ghost.groups, ghost.train.output, ghost.running, ghost.backward, ghost.remainder,
ghost.infer, ghost.params.invalid.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normspec import spec
from normspec.reference import (
    Affine,
    BatchNormConfig,
    RunningStatistics,
    batch_statistics,
    ghost,
    inference,
    train_forward,
    training_step,
)

HAND_X = np.array([[1.0], [3.0], [0.0], [14.0]])
HAND = {"gamma": np.array([2.0]), "beta": np.array([0.5]), "eps": 15.0, "feature_axis": 1}


def test_hand_worked_case_consecutive() -> None:
    y, stats = ghost.train_forward(HAND_X, **HAND, virtual_batch_size=2)
    assert y.ravel().tolist() == [0.0, 1.0, -1.25, 2.25]
    assert [(s.mean[0], s.var[0], s.count) for s in stats] == [(2.0, 1.0, 2), (7.0, 49.0, 2)]
    whole = batch_statistics(HAND_X)
    assert (whole.mean[0], whole.var[0]) == (4.5, 31.25)
    start = RunningStatistics(np.zeros(1), np.ones(1), 3)
    averaged = ghost.update_running(start, stats, rate=0.5, estimator="biased", running="averaged")
    assert (averaged.mean[0], averaged.var[0], averaged.steps) == (2.25, 13.0, 4)
    sequential = ghost.update_running(
        start, stats, rate=0.5, estimator="biased", running="sequential"
    )
    assert (sequential.mean[0], sequential.var[0], sequential.steps) == (4.0, 25.0, 4)


def test_hand_worked_case_strided() -> None:
    """tf_keras' ghost batches of the same batch: samples (0, 2) and (1, 3)."""
    assert [g.tolist() for g in ghost.ghost_batches(4, 2, "strided")] == [[0, 2], [1, 3]]
    assert [g.tolist() for g in ghost.ghost_batches(6, 2, "strided")] == [[0, 3], [1, 4], [2, 5]]
    assert [g.tolist() for g in ghost.ghost_batches(6, 3, "consecutive")] == [[0, 1, 2], [3, 4, 5]]
    y, stats = ghost.train_forward(HAND_X, **HAND, virtual_batch_size=2, groups="strided")
    assert [(s.mean[0], s.var[0]) for s in stats] == [(0.5, 0.25), (8.5, 30.25)]
    expected = 2.0 * np.array([0.5, -5.5, -0.5, 5.5]) / np.sqrt([15.25, 45.25, 15.25, 45.25])
    np.testing.assert_allclose(y.ravel(), expected + 0.5, rtol=1e-15, atol=1e-15)


def _naive_bn(part: np.ndarray, axes: tuple[int, ...], gamma: Any, beta: Any, eps: float) -> Any:
    mean = part.mean(axis=axes, keepdims=True)
    var = part.var(axis=axes, keepdims=True)
    return gamma * (part - mean) / np.sqrt(var + eps) + beta


@st.composite
def ghost_inputs(draw: st.DrawFn) -> dict[str, Any]:
    rank = draw(st.integers(2, 4))
    axis = draw(st.sampled_from([1, rank - 1]))
    size = draw(st.integers(1, 4))
    count = draw(st.integers(1, 4))
    features = draw(st.integers(1, 3))
    shape = [size * count] + [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    shape.insert(axis, features)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=shape) * rng.uniform(0.5, 2.0) + rng.uniform(-2.0, 2.0)
    return {
        "x": x,
        "dy": rng.normal(size=shape),
        "axis": axis,
        "size": size,
        "count": count,
        "gamma": rng.uniform(-2.0, 2.0, features),
        "beta": rng.uniform(-2.0, 2.0, features),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        "groups": draw(st.sampled_from(["consecutive", "strided"])),
    }


@given(ghost_inputs())
@settings(max_examples=60, deadline=None)
def test_each_ghost_batch_is_batch_norm_by_construction(case: dict[str, Any]) -> None:
    x, axis, size, count = case["x"], case["axis"], case["size"], case["count"]
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    gamma, beta = case["gamma"].reshape(shape), case["beta"].reshape(shape)
    # reshape the batch axis the way each form of ghost batch needs it
    if case["groups"] == "consecutive":
        split = x.reshape(count, size, *x.shape[1:])  # split[g] is ghost batch g
        parts = [split[g] for g in range(count)]
    else:
        split = x.reshape(size, count, *x.shape[1:])  # split[:, g] is ghost batch g
        parts = [split[:, g] for g in range(count)]
    axes = tuple(a for a in range(x.ndim) if a != axis)
    wanted = [_naive_bn(p, axes, gamma, beta, case["eps"]) for p in parts]
    if case["groups"] == "consecutive":
        expected = np.stack(wanted).reshape(x.shape)
    else:
        expected = np.stack(wanted, axis=1).reshape(x.shape)
    y, stats = ghost.train_forward(
        x,
        case["gamma"],
        case["beta"],
        eps=case["eps"],
        feature_axis=axis,
        virtual_batch_size=size,
        groups=case["groups"],
    )
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    assert len(stats) == count
    for part, found in zip(parts, stats, strict=True):
        np.testing.assert_allclose(found.mean, part.mean(axis=axes), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(found.var, part.var(axis=axes), rtol=1e-12, atol=1e-13)


@given(ghost_inputs())
@settings(max_examples=30, deadline=None)
def test_one_ghost_batch_is_batch_norm(case: dict[str, Any]) -> None:
    x, axis = case["x"], case["axis"]
    n = x.shape[0]
    y, _ = ghost.train_forward(
        x, case["gamma"], case["beta"], eps=case["eps"], feature_axis=axis, virtual_batch_size=n
    )
    plain, _ = train_forward(x, case["gamma"], case["beta"], eps=case["eps"], feature_axis=axis)
    assert np.array_equal(y, plain)
    features = x.shape[axis]
    bn = BatchNormConfig(features, axis, case["eps"], 0.25, "unbiased")
    params = Affine(case["gamma"], case["beta"])
    state = RunningStatistics(np.ones(features), np.full(features, 2.0), 5)
    for running in ("averaged", "sequential"):
        config = ghost.GhostConfig(bn, n, case["groups"], running)  # type: ignore[arg-type]
        if x.size // features < 2:
            continue  # the unbiased estimator needs two values per feature
        _, after = ghost.training_step(config, params, state, x)
        _, expected = training_step(bn, params, state, x)
        assert expected is not None
        np.testing.assert_allclose(after.mean, expected.mean, rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(after.var, expected.var, rtol=1e-14, atol=1e-15)
        assert after.steps == 6
        np.testing.assert_array_equal(
            ghost.inference(config, params, after, x), inference(bn, params, after, x)
        )


def _loss(x: np.ndarray, gamma: Any, beta: Any, dy: np.ndarray, case: dict[str, Any]) -> float:
    y, _ = ghost.train_forward(
        x,
        gamma,
        beta,
        eps=case["eps"],
        feature_axis=case["axis"],
        virtual_batch_size=case["size"],
        groups=case["groups"],
    )
    return float(np.sum(dy * y))


def _central(f: Any, value: np.ndarray, step: float = 1e-6) -> np.ndarray:
    grad = np.empty(value.shape)
    for index in np.ndindex(value.shape):
        up, down = value.copy(), value.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (f(up) - f(down)) / (2 * step)
    return grad


@given(ghost_inputs())
@settings(max_examples=25, deadline=None)
def test_backward_against_finite_differences(case: dict[str, Any]) -> None:
    x, dy, gamma, beta = case["x"], case["dy"], case["gamma"], case["beta"]
    case["eps"] = max(case["eps"], 1e-3)  # keep the differences well conditioned
    grads = ghost.train_backward(
        dy,
        x,
        gamma,
        eps=case["eps"],
        feature_axis=case["axis"],
        virtual_batch_size=case["size"],
        groups=case["groups"],
    )
    dx = _central(lambda v: _loss(v, gamma, beta, dy, case), x)
    dgamma = _central(lambda v: _loss(x, v, beta, dy, case), gamma)
    dbeta = _central(lambda v: _loss(x, gamma, v, dy, case), beta)
    np.testing.assert_allclose(grads.dx, dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads.dgamma, dgamma, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads.dbeta, dbeta, rtol=1e-6, atol=1e-6)


def test_a_gradient_stays_in_its_ghost_batch() -> None:
    """dx of ghost batch 1 does not see a cotangent on ghost batch 2 (ghost.backward)."""
    x = np.arange(12.0).reshape(6, 2) ** 1.5
    dy = np.zeros_like(x)
    dy[3:] = 1.0 + x[3:]
    grads = ghost.train_backward(dy, x, None, eps=1e-3, virtual_batch_size=3)
    assert np.all(grads.dx[:3] == 0.0) and np.any(grads.dx[3:] != 0.0)


@pytest.mark.parametrize("batch", [1, 3, 5, 7])
def test_a_batch_that_is_not_a_multiple_is_rejected(batch: int) -> None:
    with pytest.raises(ValueError, match="not a multiple of virtual_batch_size 2"):
        ghost.train_forward(np.ones((batch, 2)), virtual_batch_size=2)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, None])
def test_invalid_virtual_batch_sizes(size: Any) -> None:
    with pytest.raises(ValueError, match="virtual_batch_size must be a positive integer"):
        ghost.ghost_batches(4, size, "consecutive")
    with pytest.raises(ValueError, match="virtual_batch_size"):
        ghost.GhostConfig(BatchNormConfig(2), size)


def test_other_rejections() -> None:
    with pytest.raises(ValueError, match="axis 0"):
        ghost.train_forward(np.ones((2, 4)), virtual_batch_size=2, feature_axis=0)
    with pytest.raises(ValueError, match="cumulative"):
        ghost.GhostConfig(BatchNormConfig(2, rate=None), 2)
    with pytest.raises(ValueError, match="keeps running statistics"):
        ghost.GhostConfig(BatchNormConfig(2, track_running_stats=False), 2)
    with pytest.raises(ValueError, match="ghost_groups"):
        ghost.GhostConfig(BatchNormConfig(2), 2, "interleaved")  # type: ignore[arg-type]
    stats = (batch_statistics(np.ones((2, 2))),)
    with pytest.raises(ValueError, match="cumulative"):
        ghost.update_running(
            RunningStatistics.initial(2), stats, rate=None, estimator="biased", running="averaged"
        )


def test_unbiased_estimates_use_the_ghost_batch_count() -> None:
    """v_g = n_g / (n_g - 1) * var_g with n_g the ghost batch's count (ghost.running)."""
    x = np.array([[0.0], [2.0], [10.0], [14.0]])
    _, stats = ghost.train_forward(x, virtual_batch_size=2)
    after = ghost.update_running(
        RunningStatistics.initial(1), stats, rate=1.0, estimator="unbiased", running="averaged"
    )
    assert after.var[0] == (2.0 + 8.0) / 2  # var_g = 1 and 4, times 2 / (2 - 1)


@pytest.mark.parametrize(
    ("package", "module"),
    [("normspec.reference", "ghost.py"), ("normspec.conformance.checks", "ghost.py")],
)
def test_cited_ghost_clauses_exist(package: str, module: str) -> None:
    """Every ``ghost.*`` clause ID the reference and the checks cite is a clause of ghost.md."""
    text = resources.files(package).joinpath(module).read_text(encoding="utf-8")
    first = {"groups", "remainder", "train", "running", "infer", "backward", "params"}
    cited = {
        c for c in re.findall(r"\bghost\.[a-z_]+(?:\.[a-z_]+)*", text) if c.split(".")[1] in first
    }
    known = {c.id for c in spec.clauses() if c.chapter == "ghost"}
    assert cited and cited <= known, cited - known
