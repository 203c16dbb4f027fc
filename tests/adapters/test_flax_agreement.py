"""Every JAX adapter, driven through the protocol, agrees with the float64 reference.

Float64 only, on Hypothesis-drawn layers and inputs (features first or last, with and
without affine parameters); tolerance ``1e-12`` relative to the natural scale of each
quantity. Each drawn shape and configuration costs JAX a compilation per operation, so the
draws come from small sets and the example count is small.

``flax.nnx.BatchNorm`` keeps its running statistics in float32 whatever its dtype (a real
deviation, see ``test_nnx_rounds_float64_running_statistics_to_float32``): for it the
running statistics and the inference output are compared at float32 precision.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("flax")

from normspec.adapters import Implementation, LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.reference import RunningStatistics, batch_statistics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

TARGETS = [
    "flax.linen",
    "flax.linen.two_pass",
    "flax.nnx",
    "flax.nnx.two_pass",
    "thirdparty_flax_bn:ThirdPartyLinenBatchNorm",
    "thirdparty_flax_bn:ThirdPartyNnxBatchNorm",
    "jax_functional_bn:apply",
]
#: Targets whose running statistics are float32 in a float64 layer.
FLOAT32_STATISTICS = {"flax.nnx", "flax.nnx.two_pass"}
TOLERANCE = 1e-12
FLOAT32_TOLERANCE = 2.0**-22


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """nnx warns (FutureWarning) when it casts float64 statistics to float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@dataclass(frozen=True)
class Case:
    config: LayerConfig
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    state: RunningStatistics


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Small sets of shapes and configurations, so that compilations are shared."""
    rank = draw(st.sampled_from([2, 4]))
    first = draw(st.booleans())
    features = draw(st.sampled_from([1, 3]))
    spatial = [2] * (rank - 2)
    shape = [draw(st.sampled_from([2, 5])), *spatial]
    feature_axis = 1 if first else rank - 1
    shape.insert(feature_axis, features)
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=feature_axis,
        dtype="float64",
        eps=draw(st.sampled_from([1e-5, 0.5])),
        momentum=draw(st.sampled_from([0.9, 0.0])),
        affine=draw(st.booleans()),
    )
    values = st.floats(-8.0, 8.0, allow_subnormal=False)
    vector = arrays(np.float64, (features,), elements=st.floats(-3.0, 3.0))
    state = RunningStatistics(
        draw(vector), draw(arrays(np.float64, (features,), elements=st.floats(0.0, 4.0))), 0
    )
    return Case(
        config=config,
        x=draw(arrays(np.float64, tuple(shape), elements=values)),
        dy=draw(arrays(np.float64, tuple(shape), elements=values)),
        gamma=draw(vector),
        beta=draw(vector),
        state=state,
    )


def _close(actual: np.ndarray, expected: np.ndarray, scale: float, what: str, tol: float) -> None:
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def _check(impl: Implementation, case: Case, statistics_tolerance: float) -> None:
    """Train step, state, inference and both vjps of ``impl`` against the reference."""
    config = case.config
    reference = ReferenceImplementation("flax")
    layers = [impl.build(config), reference.build(config)]
    for layer in layers:
        if config.affine:
            layer.set_parameters(case.gamma, case.beta)
        layer.set_state(case.state)
    ours, theirs = layers
    n = case.x.size // config.num_features
    gamma = np.abs(case.gamma).max() if config.affine else 1.0
    beta = np.abs(case.beta).max() if config.affine else 0.0
    stats = batch_statistics(case.x, config.feature_axis)
    s_batch = float(np.max(1.0 / np.sqrt(stats.var + config.eps)))
    s_run = float(np.max(1.0 / np.sqrt(case.state.var + config.eps)))
    x_max, dy_max = float(np.abs(case.x).max()), float(np.abs(case.dy).max())
    tol = TOLERANCE

    _close(ours.train_step(case.x), theirs.train_step(case.x), 1 + gamma * n + beta, "y", tol)
    got, want = ours.state(), theirs.state()
    assert got is not None and want is not None
    _close(got.mean, want.mean, 1 + x_max, "running mean", statistics_tolerance)
    _close(got.var, want.var, 1 + 2 * x_max**2, "running var", statistics_tolerance)

    for layer in layers:
        layer.set_state(case.state)
    infer_scale = 1 + gamma * s_run * (x_max + 3) + beta
    infer_scale *= 1 + s_run**2 * 4  # the statistics' own rounding, for float32 statistics
    _close(
        ours.infer(case.x), theirs.infer(case.x), infer_scale, "inference y", statistics_tolerance
    )

    for training, s in ((True, s_batch), (False, s_run)):
        mode = "train" if training else "inference"
        tol = TOLERANCE if training else statistics_tolerance
        got_g = ours.vjp(case.x, case.dy, training=training)
        want_g = theirs.vjp(case.x, case.dy, training=training)
        _close(got_g.dx, want_g.dx, 1 + gamma * s * dy_max * (1 + n), f"{mode} dx", tol)
        if config.affine:
            xhat = n if training else s * (x_max + 3) * (1 + s_run**2 * 4)
            _close(got_g.dgamma, want_g.dgamma, 1 + n * dy_max * xhat, f"{mode} dgamma", tol)
            _close(got_g.dbeta, want_g.dbeta, 1 + n * dy_max, f"{mode} dbeta", tol)
        else:
            assert not np.any(got_g.dgamma) and not np.any(got_g.dbeta)


@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    impl = load_target(target, "flax")
    statistics_tolerance = FLOAT32_TOLERANCE if target in FLOAT32_STATISTICS else TOLERANCE

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cases())
    def run(case: Case) -> None:
        _check(impl, case, statistics_tolerance)

    run()


def test_nnx_rounds_float64_running_statistics_to_float32() -> None:
    """flax.nnx.BatchNorm's statistics stay float32 under param_dtype=dtype=float64."""
    impl = load_target("flax.nnx", "flax")
    config = LayerConfig(
        num_features=1, rank=2, feature_axis=1, dtype="float64", eps=1e-5, momentum=0.0
    )
    layer = impl.build(config)
    layer.set_parameters(np.ones(1), np.zeros(1))
    layer.set_state(RunningStatistics(np.array([0.1]), np.array([1.0]), 0))
    state = layer.state()
    assert state is not None
    assert state.mean[0] == float(np.float32(0.1))
    assert state.mean[0] != 0.1
    layer.train_step(np.array([[1.0], [1.0 + 2.0**-40]]))
    state = layer.state()
    assert state is not None
    assert state.mean[0] == 1.0  # 1 + 2^-41 rounded to float32
