"""The synchronized reference (normspec.reference.replicas) verified independently.

* a hand-worked case with two replicas of uneven size (replicas.md, sync.train.output);
* an mpmath oracle that combines the replicas' own counts, means and centred sums (Chan et
  al.'s pairwise formula, not a concatenation) for the statistics, the outputs, the partial
  parameter gradients and dx, at 50 digits;
* central differences of the 50-digit forward for the backward, in every input value;
* masks against the same inputs with the masked-out values removed, and empty replicas.

Clauses: sync.train.*, sync.running.*, sync.backward.*, sync.degenerate.*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normspec.reference import (
    Affine,
    BatchNormConfig,
    RunningStatistics,
    train_backward,
    train_forward,
)
from normspec.reference import replicas as R

MPF = mpmath.mpf
U = 2.0**-52


# ------------------------------------------------------------------- hand-worked case


def test_two_uneven_replicas_by_hand() -> None:
    """replicas.md's example: (0, 2) and (3, 4, 6), eps = 5: mu_G = 3, var_G = 4."""
    xs = [np.array([[0.0], [2.0]]), np.array([[3.0], [4.0], [6.0]])]
    ys, found = R.train_forward(xs, eps=5.0)
    np.testing.assert_allclose(ys[0][:, 0], [-1.0, -1.0 / 3.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(ys[1][:, 0], [0.0, 1.0 / 3.0, 1.0], rtol=0, atol=1e-15)
    assert found.mean.tolist() == [3.0] and found.var.tolist() == [4.0]
    assert found.counts.tolist() == [5] and found.replica_counts.tolist() == [[2], [3]]
    # the unweighted average of the replica means (1 and 13/3) would be 8/3
    assert found.mean[0] != (1.0 + 13.0 / 3.0) / 2
    # backward: dy = (1, 0) and (0, 0, -1); xhat = (-1, -1/3, 0, 1/3, 1), s = 1/3,
    # S_dy = 0, S_dyxh = -2: dx = s * (dy + 0.4 * xhat)
    grads = R.train_backward(
        [np.array([[1.0], [0.0]]), np.array([[0.0], [0.0], [-1.0]])], xs, eps=5.0
    )
    np.testing.assert_allclose(grads[0].dx[:, 0], [0.2, -2 / 45], rtol=0, atol=1e-16)
    np.testing.assert_allclose(grads[1].dx[:, 0], [0.0, 2 / 45, -0.2], rtol=0, atol=1e-16)
    assert [g.dgamma.tolist() for g in grads] == [[-1.0], [-1.0]]
    assert [g.dbeta.tolist() for g in grads] == [[1.0], [-1.0]]
    # running update, alpha = 0.5 from mean 0, var 1: unbiased with N = 5 gives 4 * 5/4 = 5
    config = BatchNormConfig(1, eps=5.0, rate=0.5, running_variance="unbiased")
    _, state = R.training_step(config, None, RunningStatistics.initial(1), xs)
    assert state is not None
    assert state.mean.tolist() == [1.5] and state.var.tolist() == [3.0] and state.steps == 1
    biased = BatchNormConfig(1, eps=5.0, rate=0.5, running_variance="biased")
    _, state = R.training_step(biased, None, RunningStatistics.initial(1), xs)
    assert state is not None and state.var.tolist() == [2.5]


# ---------------------------------------------------------------------- the oracle


def _chan(parts: Sequence[Sequence[mpmath.mpf]]) -> tuple[mpmath.mpf, mpmath.mpf, int]:
    """Mean and biased variance of the union, combined from each part's own statistics."""
    count, mean, m2 = 0, MPF(0), MPF(0)
    for values in parts:
        n = len(values)
        if n == 0:
            continue
        mu = mpmath.fsum(values) / n
        part_m2 = mpmath.fsum((v - mu) ** 2 for v in values)
        delta = mu - mean
        total = count + n
        mean += delta * n / total
        m2 += part_m2 + delta**2 * count * n / total
        count = total
    return mean, m2 / count, count


def _feature(array: np.ndarray, feature: int, axis: int, mask: np.ndarray | None) -> list[Any]:
    values = np.take(array, feature, axis=axis)
    if mask is not None:
        values = values[np.take(np.broadcast_to(mask, array.shape), feature, axis=axis)]
    return [MPF(float(v)) for v in values.ravel()]


def _oracle(
    xs: list[np.ndarray],
    dys: list[np.ndarray],
    gamma: np.ndarray,
    beta: np.ndarray,
    eps: float,
    axis: int,
    masks: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Per feature: mu_G, var_G, N, and per replica the exact y, dx and partial sums."""
    out: dict[str, Any] = {
        "mean": [],
        "var": [],
        "count": [],
        "y": [],
        "dx": [],
        "dg": [],
        "xh": [],
        "db": [],
    }
    features = xs[0].shape[axis]
    with mpmath.workdps(50):
        for c in range(features):
            ms = masks or [None] * len(xs)
            parts = [_feature(x, c, axis, m) for x, m in zip(xs, ms, strict=True)]
            cots = [_feature(d, c, axis, m) for d, m in zip(dys, ms, strict=True)]
            mu, var, n = _chan(parts)
            s = 1 / mpmath.sqrt(var + MPF(eps))
            g, b = MPF(float(gamma[c])), MPF(float(beta[c]))
            xhat = [[(v - mu) * s for v in p] for p in parts]
            s_dy = mpmath.fsum(d for part in cots for d in part)
            s_dyxh = mpmath.fsum(
                d * h
                for dp, hp in zip(cots, xhat, strict=True)
                for d, h in zip(dp, hp, strict=True)
            )
            out["xh"].append(max((abs(float(h)) for hp in xhat for h in hp), default=0.0))
            out["mean"].append(mu)
            out["var"].append(var)
            out["count"].append(n)
            out["y"].append([[g * h + b for h in hp] for hp in xhat])
            out["dx"].append(
                [
                    [g * s * (d - s_dy / n - h * s_dyxh / n) for d, h in zip(dp, hp, strict=True)]
                    for dp, hp in zip(cots, xhat, strict=True)
                ]
            )
            out["dg"].append(
                [
                    mpmath.fsum(d * h for d, h in zip(dp, hp, strict=True))
                    for dp, hp in zip(cots, xhat, strict=True)
                ]
            )
            out["db"].append([mpmath.fsum(dp) for dp in cots])
    return out


# ---------------------------------------------------------------------- strategies


@st.composite
def replica_inputs(draw: st.DrawFn, masked: bool = False) -> dict[str, Any]:
    """K = 1..4 replicas of uneven sizes (0 included, at least 2 values in all)."""
    rank = draw(st.integers(2, 4))
    axis = draw(st.sampled_from([1, rank - 1]))
    features = draw(st.integers(1, 3))
    spatial = [draw(st.integers(1, 3)) for _ in range(rank - 2)]
    k = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(0, 4), min_size=k, max_size=k).filter(lambda s: sum(s) >= 2))
    center = draw(st.floats(-1e3, 1e3))
    spread = 2.0 ** draw(st.integers(-10, 10))
    values = st.floats(-1.0, 1.0)
    xs, dys, masks = [], [], []
    for size in sizes:
        shape = [size, *spatial]
        shape.insert(axis, features)
        z = draw(hnp.arrays(np.float64, shape, elements=values, fill=st.nothing()))
        xs.append(center + spread * z)
        dys.append(draw(hnp.arrays(np.float64, shape, elements=values, fill=st.nothing())))
        mask_shape = [1] * rank
        mask_shape[0] = size
        masks.append(draw(hnp.arrays(np.bool_, mask_shape)))
    if masked:
        total = sum(int(m.sum()) for m in masks)
        if total < 2:
            masks[int(np.argmax(sizes))][:2] = True
    gamma = np.array([draw(st.floats(-2.0, 2.0)) for _ in range(features)])
    beta = np.array([draw(st.floats(-2.0, 2.0)) for _ in range(features)])
    eps = draw(st.sampled_from([1e-5, 1e-3, 1.0])) * spread**2
    return {
        "xs": xs,
        "dys": dys,
        "axis": axis,
        "gamma": gamma,
        "beta": beta,
        "eps": eps,
        "masks": masks if masked else None,
    }


def _within(actual: float, exact: Any, scale: float, ulps: float = 8.0) -> bool:
    """``actual`` within ``ulps`` units in the last place of the natural ``scale``."""
    return bool(abs(MPF(actual) - exact) <= ulps * U * scale + 1e-300)


def _check_against_oracle(case: dict[str, Any]) -> None:
    xs, dys, axis, masks = case["xs"], case["dys"], case["axis"], case["masks"]
    gamma, beta, eps = case["gamma"], case["beta"], case["eps"]
    ys, found = R.train_forward(xs, gamma, beta, eps=eps, feature_axis=axis, masks=masks)
    grads = R.train_backward(dys, xs, gamma, eps=eps, feature_axis=axis, masks=masks)
    exact = _oracle(xs, dys, gamma, beta, eps, axis, masks)
    each = masks or [None] * len(xs)
    for c in range(len(gamma)):
        values = [
            abs(float(v)) for x, m in zip(xs, each, strict=True) for v in _feature(x, c, axis, m)
        ]
        n = exact["count"][c]
        assert int(found.counts[c]) == n
        assert _within(found.mean[c], exact["mean"][c], float(np.mean(values)))
        assert _within(found.var[c], exact["var"][c], float(exact["var"][c]))
        s = float(1 / mpmath.sqrt(exact["var"][c] + MPF(eps)))
        g, b = abs(float(gamma[c])), abs(float(beta[c]))
        # natural scales (batchnorm.md, reference accuracy), taken generously: |dy| <= 1
        xhat = max(1.0, exact["xh"][c])
        for k, (y, grad) in enumerate(zip(ys, grads, strict=True)):
            mask = None if masks is None else masks[k]
            for got, want in zip(_values(y, c, axis, mask), exact["y"][c][k], strict=True):
                assert _within(got, want, g * (xhat + 1) + b), (k, c, got, want)
            for got, want in zip(_values(grad.dx, c, axis, mask), exact["dx"][c][k], strict=True):
                assert _within(got, want, g * s * (2 + (xhat + 1) ** 2)), (k, c, got, want)
            assert _within(grad.dgamma[c], exact["dg"][c][k], n * (xhat + 1)), (k, c)
            assert _within(grad.dbeta[c], exact["db"][c][k], n), (k, c)


def _values(array: np.ndarray, feature: int, axis: int, mask: np.ndarray | None) -> list[float]:
    values = np.take(array, feature, axis=axis)
    if mask is not None:
        values = values[np.take(np.broadcast_to(mask, array.shape), feature, axis=axis)]
    return [float(v) for v in values.ravel()]


@settings(max_examples=40)
@given(replica_inputs())
def test_replicas_against_the_combined_statistics_oracle(case: dict[str, Any]) -> None:
    _check_against_oracle(case)


@settings(max_examples=40)
@given(replica_inputs(masked=True))
def test_masked_replicas_against_the_oracle(case: dict[str, Any]) -> None:
    _check_against_oracle(case)


@settings(max_examples=30)
@given(replica_inputs(masked=True))
def test_masks_equal_removing_the_masked_values(case: dict[str, Any]) -> None:
    """Per-sample masks: the same outputs and gradients as the replicas without those samples;
    masked-out positions have dx = 0 (their cotangent counts as 0)."""
    xs, dys, axis, masks = case["xs"], case["dys"], case["axis"], case["masks"]
    kept = [m.reshape(-1) for m in masks]
    eps, gamma, beta = case["eps"], case["gamma"], case["beta"]
    ys, _ = R.train_forward(xs, gamma, beta, eps=eps, feature_axis=axis, masks=masks)
    small, _ = R.train_forward(
        [x[k] for x, k in zip(xs, kept, strict=True)], gamma, beta, eps=eps, feature_axis=axis
    )
    grads = R.train_backward(dys, xs, gamma, eps=eps, feature_axis=axis, masks=masks)
    small_grads = R.train_backward(
        [d[k] for d, k in zip(dys, kept, strict=True)],
        [x[k] for x, k in zip(xs, kept, strict=True)],
        gamma,
        eps=eps,
        feature_axis=axis,
    )
    for y, s, k, g, sg in zip(ys, small, kept, grads, small_grads, strict=True):
        scale = 8 * U * (4 * np.max(np.abs(gamma)) + np.max(np.abs(beta)))
        np.testing.assert_allclose(y[k], s, rtol=0, atol=scale)
        np.testing.assert_allclose(
            g.dx[k], sg.dx, rtol=1e-12, atol=1e-12 * (1 + np.max(np.abs(sg.dx), initial=0))
        )
        assert np.all(g.dx[~k] == 0)
        np.testing.assert_allclose(g.dgamma, sg.dgamma, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.dbeta, sg.dbeta, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(replica_inputs())
def test_the_concatenated_batch_is_single_device_batch_norm(case: dict[str, Any]) -> None:
    """The replicas' outputs are the slices of the single-device output on the concatenation,
    the partial parameter gradients sum to its dgamma, dbeta, and an empty replica gets
    empty outputs and zero parameter gradients."""
    xs, dys, axis = case["xs"], case["dys"], case["axis"]
    eps, gamma, beta = case["eps"], case["gamma"], case["beta"]
    ys, found = R.train_forward(xs, gamma, beta, eps=eps, feature_axis=axis)
    whole, stats = train_forward(np.concatenate(xs), gamma, beta, eps=eps, feature_axis=axis)
    np.testing.assert_array_equal(np.concatenate(ys), whole)
    np.testing.assert_array_equal(found.mean, stats.mean)
    grads = R.train_backward(dys, xs, gamma, eps=eps, feature_axis=axis)
    single = train_backward(
        np.concatenate(dys), np.concatenate(xs), gamma, eps=eps, feature_axis=axis
    )
    np.testing.assert_array_equal(np.concatenate([g.dx for g in grads]), single.dx)
    total = np.sum([g.dgamma for g in grads], axis=0)
    scale = np.sum(
        np.abs(np.concatenate(dys)), axis=tuple(a for a in range(xs[0].ndim) if a != axis)
    )
    count = np.concatenate(xs).size // xs[0].shape[axis]
    assert np.all(np.abs(total - single.dgamma) <= 16 * U * scale * (1 + np.sqrt(count)))
    for x, y, g in zip(xs, ys, grads, strict=True):
        assert y.shape == x.shape and g.dx.shape == x.shape
        if x.shape[0] == 0:
            assert np.all(g.dgamma == 0) and np.all(g.dbeta == 0)


# ------------------------------------------------------------- finite differences


def test_backward_against_central_differences() -> None:
    """dx of every replica from central differences of the 50-digit forward (3 replicas,
    sizes 2, 0, 3): dx of replica 1 depends on replica 3's cotangent."""
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=(2, 2)), np.zeros((0, 2)), rng.normal(size=(3, 2))]
    dys = [rng.normal(size=(2, 2)), np.zeros((0, 2)), rng.normal(size=(3, 2))]
    gamma, eps = np.array([1.5, -0.5]), 0.25
    grads = R.train_backward(dys, xs, gamma, eps=eps)
    h = MPF("1e-20")
    with mpmath.workdps(60):

        def loss(values: list[list[Any]], c: int) -> Any:
            mu, var, _ = _chan(values)
            s = 1 / mpmath.sqrt(var + MPF(eps))
            return mpmath.fsum(
                MPF(float(dys[k][i, c])) * MPF(float(gamma[c])) * (v - mu) * s
                for k, part in enumerate(values)
                for i, v in enumerate(part)
            )

        for c in range(2):
            base = [[MPF(float(v)) for v in x[:, c]] for x in xs]
            for k, x in enumerate(xs):
                for i in range(x.shape[0]):
                    up = [list(p) for p in base]
                    down = [list(p) for p in base]
                    up[k][i] += h
                    down[k][i] -= h
                    numeric = (loss(up, c) - loss(down, c)) / (2 * h)
                    assert abs(MPF(float(grads[k].dx[i, c])) - numeric) < 1e-14, (k, i, c)


# ------------------------------------------------------------------- degenerate cases


def test_empty_replicas_and_all_empty() -> None:
    xs = [np.zeros((0, 3, 2)), np.arange(12.0).reshape(2, 3, 2), np.zeros((0, 3, 2))]
    ys, found = R.train_forward(xs, eps=1.0)
    assert [y.shape for y in ys] == [(0, 3, 2), (2, 3, 2), (0, 3, 2)]
    alone, _ = R.train_forward([xs[1]], eps=1.0)
    np.testing.assert_array_equal(ys[1], alone[0])
    assert found.replica_counts[:, 0].tolist() == [0, 4, 0]
    with pytest.raises(ValueError, match="empty batch"):
        R.train_forward([np.zeros((0, 2)), np.zeros((0, 2))])
    config = BatchNormConfig(2)
    with pytest.raises(ValueError, match="empty batch"):
        R.training_step(config, None, RunningStatistics.initial(2), [np.zeros((0, 2))])
    everything_masked = [np.ones((2, 2), bool) * np.array([True, False])]
    with pytest.raises(ValueError, match="feature 1"):
        R.train_forward([np.ones((2, 2))], masks=everything_masked)


def test_running_update_uses_the_total_count_and_steps_once() -> None:
    """Unbiased with N = 6 (not a replica's 1 + 5 values), one step for three replicas."""
    xs = [np.array([[1.0]]), np.array([[2.0], [4.0], [4.0], [5.0], [8.0]]), np.zeros((0, 1))]
    config = BatchNormConfig(1, rate=1.0, running_variance="unbiased")
    params = Affine(np.array([2.0]), np.array([1.0]))
    _, state = R.training_step(config, params, RunningStatistics(np.zeros(1), np.ones(1), 7), xs)
    values = np.array([1.0, 2.0, 4.0, 4.0, 5.0, 8.0])
    assert state is not None and state.steps == 8
    np.testing.assert_allclose(state.mean, [values.mean()], rtol=1e-15)
    np.testing.assert_allclose(state.var, [values.var(ddof=1)], rtol=1e-15)


def test_inputs_are_not_modified_and_shapes_are_checked() -> None:
    xs = [np.arange(6.0).reshape(3, 2), np.arange(4.0).reshape(2, 2)]
    copies = [x.copy() for x in xs]
    masks = [np.array([[True], [False], [True]]), np.array([[True], [True]])]
    R.train_forward(xs, masks=masks)
    R.train_backward([np.ones((3, 2)), np.ones((2, 2))], xs, masks=masks)
    for x, c in zip(xs, copies, strict=True):
        np.testing.assert_array_equal(x, c)
    with pytest.raises(ValueError, match="replica 1"):
        R.train_forward([np.ones((2, 2)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="batch axis"):
        R.train_forward([np.ones((2, 2))], feature_axis=0)
    with pytest.raises(ValueError, match="at least one replica"):
        R.train_forward([])
