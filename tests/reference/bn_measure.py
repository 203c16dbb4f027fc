"""Run the reference on one case and measure every output against the mpmath oracle.

Shared by tests/reference/test_accuracy.py, test_bn_mpmath.py and
benchmarks/reference_accuracy.py. ``measure`` returns, per kind of output, a
:class:`bn_bounds.Tally` of errors: the ratio to the spec's bound (bn.accuracy.*) and the ulps
of the output's natural scale (see bn_bounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import bn_bounds as bounds
import bn_oracle as oracle
import numpy as np

from normspec.reference import (
    RunningStatistics,
    batch_statistics,
    inference_backward,
    inference_forward,
    train_backward,
    train_forward,
    update_running_statistics,
)

KINDS = (
    "y",
    "mean",
    "var",
    "dx",
    "dgamma",
    "dbeta",
    "infer_y",
    "infer_dx",
    "infer_dgamma",
    "infer_dbeta",
    "running_mean",
    "running_var",
)


@dataclass
class Case:
    """One input of every reference function (per-feature vectors have the feature count)."""

    x: np.ndarray
    axis: int
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float
    dy: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    steps: int
    rate: float | None
    estimator: str


def _vector(value: np.ndarray | None, count: int, default: float) -> list[float]:
    if value is None:
        return [default] * count
    return [float(v) for v in value]


def measure(case: Case, kinds: tuple[str, ...] = KINDS) -> dict[str, bounds.Tally]:
    """Errors of the reference on ``case`` for the outputs named in ``kinds``."""
    tallies = {kind: bounds.Tally() for kind in kinds}
    x, axis, eps = case.x, case.axis, case.eps
    count = x.shape[axis]
    gamma = _vector(case.gamma, count, 1.0)
    beta = _vector(case.beta, count, 0.0)
    dy_rows = oracle.rows(case.dy, axis)
    x_rows = oracle.rows(x, axis)

    training = {"y", "mean", "var", "dx", "dgamma", "dbeta", "running_mean", "running_var"}
    backward = bool({"dx", "dgamma", "dbeta"} & set(kinds))
    if training & set(kinds):
        y, stats = train_forward(x, case.gamma, case.beta, eps=eps, feature_axis=axis)
        alone = batch_statistics(x, axis)
        fwds = oracle.train_forward(x, case.gamma, case.beta, eps, axis)
        y_rows = oracle.rows(y, axis)
        if backward:
            grads = train_backward(case.dy, x, case.gamma, eps=eps, feature_axis=axis)
            _, exact_grads = oracle.train_backward(case.dy, x, case.gamma, eps, axis, fwds=fwds)
            dx_rows = oracle.rows(grads.dx, axis)
        n = x_rows.shape[1]
        for f, fwd in enumerate(fwds):
            if "y" in tallies:
                b_y = bounds.forward_bounds(fwd, gamma[f], beta[f])
                s_y = bounds.forward_scales(fwd, gamma[f], beta[f])
                for i in range(n):
                    err = bounds.error(float(y_rows[f, i]), fwd.y[i])
                    floor = bounds.TINY * (1 + abs(gamma[f]) * float(fwd.s))
                    tallies["y"].add(err, b_y[i], s_y[i], f"feature {f} value {i}", floor)
            if backward:
                dy_f = [float(v) for v in dy_rows[f]]
                exact = exact_grads[f]
                b_dx, b_dg, b_db = bounds.backward_bounds(
                    fwd.x, float(fwd.s), fwd.xhat, dy_f, exact, gamma[f]
                )
                s_dx, s_dg, s_db = bounds.backward_scales(fwd, dy_f, gamma[f])
            if "dx" in tallies:
                for i in range(n):
                    err = bounds.error(float(dx_rows[f, i]), exact.dx[i])
                    floor = bounds.TINY * (1 + abs(gamma[f]) * float(fwd.s))
                    tallies["dx"].add(err, b_dx[i], s_dx[i], f"feature {f} value {i}", floor)
            where = f"feature {f}"
            if "dgamma" in tallies:
                err = bounds.error(float(grads.dgamma[f]), exact.dgamma)
                tallies["dgamma"].add(err, b_dg, s_dg, where)
            if "dbeta" in tallies:
                err = bounds.error(float(grads.dbeta[f]), exact.dbeta)
                tallies["dbeta"].add(err, b_db, s_db, where)
            scale_mean, scale_var = bounds.statistics_scales(fwd)
            # bn.accuracy.running with alpha = 1 and a zero state: the statistics themselves
            b_mean, b_var = bounds.running_bounds(0.0, 0.0, fwd.mu, fwd.var, 1.0, fwd.x, fwd.var, 1)
            # the statistics a training step returns, and batch_statistics' own
            for source, got in (("train_forward", stats), ("batch_statistics", alone)):
                if "mean" in tallies:
                    err = bounds.error(float(got.mean[f]), fwd.mu)
                    tallies["mean"].add(err, b_mean, scale_mean, f"{where} ({source})")
                if "var" in tallies:
                    err = bounds.error(float(got.var[f]), fwd.var)
                    tallies["var"].add(err, b_var, scale_var, f"{where} ({source})")
        if {"running_mean", "running_var"} & set(kinds) and not (
            case.estimator == "unbiased" and n == 1
        ):
            state = RunningStatistics(case.running_mean, case.running_var, case.steps)
            new = update_running_statistics(
                state,
                stats,
                rate=case.rate,
                estimator=case.estimator,  # type: ignore[arg-type]
            )
            c = n / (n - 1) if case.estimator == "unbiased" else 1.0
            for f, fwd in enumerate(fwds):
                mean0, var0 = float(case.running_mean[f]), float(case.running_var[f])
                m_new, v_new, alpha = oracle.running_update(
                    mean0, var0, case.steps, fwd.mu, fwd.var, n, case.rate, case.estimator
                )
                args = (mean0, var0, m_new, v_new, float(alpha), fwd.x, fwd.var, c)
                b_mean, b_var = bounds.running_bounds(*args)
                s_mean, s_var = bounds.running_scales(*args)
                where = f"feature {f}"
                if "running_mean" in tallies:
                    err = bounds.error(float(new.mean[f]), m_new)
                    tallies["running_mean"].add(err, b_mean, s_mean, where)
                if "running_var" in tallies:
                    err = bounds.error(float(new.var[f]), v_new)
                    tallies["running_var"].add(err, b_var, s_var, where)

    if {"infer_y", "infer_dx", "infer_dgamma", "infer_dbeta"} & set(kinds):
        mean, var = case.running_mean, case.running_var
        y = inference_forward(x, mean, var, case.gamma, case.beta, eps=eps, feature_axis=axis)
        grads = inference_backward(case.dy, x, mean, var, case.gamma, eps=eps, feature_axis=axis)
        fwds = oracle.inference_forward(x, mean, var, case.gamma, case.beta, eps, axis)
        _, exact_grads = oracle.inference_backward(case.dy, x, mean, var, case.gamma, eps, axis)
        y_rows, dx_rows = oracle.rows(y, axis), oracle.rows(grads.dx, axis)
        for f, fwd in enumerate(fwds):
            xs = [float(v) for v in x_rows[f]]
            dy_f = [float(v) for v in dy_rows[f]]
            exact = exact_grads[f]
            b_y = bounds.inference_bounds(fwd, xs, float(mean[f]), gamma[f], beta[f])
            s_y = bounds.inference_scales(fwd, gamma[f], beta[f])
            b_dx, b_dg, b_db = bounds.backward_bounds(
                oracle.exact(xs),
                float(fwd.s),
                fwd.xhat,
                dy_f,
                exact,
                gamma[f],
                inference=True,
                running_mean=float(mean[f]),
            )
            s_dx, s_dg, s_db = bounds.inference_backward_scales(fwd, dy_f, gamma[f])
            floor = bounds.TINY * (1 + abs(gamma[f]) * float(fwd.s))
            for i in range(len(xs)):
                where = f"feature {f} value {i}"
                if "infer_y" in tallies:
                    err = bounds.error(float(y_rows[f, i]), fwd.y[i])
                    tallies["infer_y"].add(err, b_y[i], s_y[i], where, floor)
                if "infer_dx" in tallies:
                    err = bounds.error(float(dx_rows[f, i]), exact.dx[i])
                    tallies["infer_dx"].add(err, b_dx[i], s_dx[i], where, floor)
            where = f"feature {f}"
            if "infer_dgamma" in tallies:
                err = bounds.error(float(grads.dgamma[f]), exact.dgamma)
                tallies["infer_dgamma"].add(err, b_dg, s_dg, where)
            if "infer_dbeta" in tallies:
                err = bounds.error(float(grads.dbeta[f]), exact.dbeta)
                tallies["infer_dbeta"].add(err, b_db, s_db, where)
    return tallies
