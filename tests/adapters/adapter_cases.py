"""Shared scaffolding of the adapter tests: a drawn case and its agreement with the reference.

Each framework's test draws its own cases (shapes, layouts, dtypes) and picks its tolerances;
``agree`` compares an adapter's train step, running statistics, inference and both vjps with
the reference implementation's, within a tolerance relative to each quantity's natural scale.
Importing this module puts tests/fixtures on ``sys.path``, where the sample third-party
modules that targets name (``thirdparty_bn:ThirdPartyBatchNorm2d``) live.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from normspec.adapters import Capabilities, Implementation, LayerConfig
from normspec.reference import RunningStatistics, batch_statistics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))


@dataclass(frozen=True)
class Case:
    """A layer configuration, its input and cotangent, parameters and running statistics."""

    config: LayerConfig
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    state: RunningStatistics


def close(actual: np.ndarray, expected: np.ndarray, scale: float, what: str, tol: float) -> None:
    """``actual`` within ``tol`` of ``expected``, relatively and relative to ``scale``."""
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


def agree(
    impl: Implementation,
    reference: Implementation,
    case: Case,
    tol: float,
    *,
    statistics_tol: float | None = None,
    inference_tol: float | None = None,
    rounded_statistics: bool = False,
    steps: bool = False,
    gradients: bool = True,
    raw_moments: bool = False,
) -> None:
    """Train step, state, inference and both vjps of ``impl`` against ``reference``.

    ``statistics_tol``: the running statistics' tolerance, ``inference_tol``: that of the
    inference output and vjp (both ``tol`` if not given). ``rounded_statistics``: widen the
    inference scales by the rounding of the running statistics themselves (float32
    statistics in a float64 layer). ``steps``: compare the step counters too; ``gradients``:
    compare the vjps (an implementation without backward has none). ``raw_moments``: the
    implementation evaluates the batch variance as ``E[x^2] - E[x]^2`` (flax's fast
    variance), whose rounding, relative to ``E[x^2]`` and amplified by ``1 / (var + eps)``,
    widens the training tolerances by the conditioning ``E[x^2] / (var + eps)``. Without
    ``track_running_stats`` the layer must have no state and infers with batch statistics.
    The state is set before every call that reads it (after a vjp it is unspecified).
    """
    config = case.config
    tracked = config.track_running_stats
    layers = [impl.build(config), reference.build(config)]
    for layer in layers:
        if config.affine:
            layer.set_parameters(case.gamma, case.beta)
        if tracked:
            layer.set_state(case.state)
    ours, theirs = layers
    n = case.x.size // config.num_features
    gamma = float(np.abs(case.gamma).max()) if config.affine else 1.0
    beta = float(np.abs(case.beta).max()) if config.affine else 0.0
    stats = batch_statistics(case.x, config.feature_axis)
    s_batch = float(np.max(1.0 / np.sqrt(stats.var + config.eps)))
    s_run = float(np.max(1.0 / np.sqrt(case.state.var + config.eps)))
    x_max, dy_max = float(np.abs(case.x).max()), float(np.abs(case.dy).max())
    s_tol = tol if statistics_tol is None else statistics_tol
    i_tol = tol if inference_tol is None else inference_tol
    t_tol = tol
    if raw_moments:
        mean_square = batch_statistics(case.x**2, config.feature_axis).mean
        t_tol = tol * (1 + float(np.max(mean_square / (stats.var + config.eps))))

    close(
        ours.train_step(case.x), theirs.train_step(case.x), 1 + gamma * n + beta, "train y", t_tol
    )
    if tracked:
        got, want = ours.state(), theirs.state()
        assert isinstance(got, RunningStatistics) and isinstance(want, RunningStatistics)
        close(got.mean, want.mean, 1 + x_max, "running mean", s_tol)
        close(got.var, want.var, 1 + 2 * x_max**2, "running var", s_tol)
        if steps:
            assert got.steps == want.steps
    else:
        assert ours.state() is None

    def reset() -> None:
        for layer in layers:
            if tracked:
                layer.set_state(case.state)

    reset()
    s_infer = s_run if tracked else s_batch
    rounding = 1 + s_run**2 * 4 if rounded_statistics else 1.0
    infer_scale = (1 + gamma * s_infer * (x_max + 3) + beta) * rounding
    close(ours.infer(case.x), theirs.infer(case.x), infer_scale, "inference y", i_tol)

    if not gradients:
        return
    for training, s in ((True, s_batch), (False, s_infer)):
        mode = "train" if training else "inference"
        mode_tol = t_tol if training else i_tol
        reset()
        got_g = ours.vjp(case.x, case.dy, training=training)
        want_g = theirs.vjp(case.x, case.dy, training=training)
        close(got_g.dx, want_g.dx, 1 + gamma * s * dy_max * (1 + n), f"{mode} dx", mode_tol)
        if config.affine:
            xhat = n if training else s * (x_max + 3) * rounding
            close(got_g.dgamma, want_g.dgamma, 1 + n * dy_max * xhat, f"{mode} dgamma", mode_tol)
            close(got_g.dbeta, want_g.dbeta, 1 + n * dy_max, f"{mode} dbeta", mode_tol)
        else:
            assert not np.any(got_g.dgamma) and not np.any(got_g.dbeta)


@st.composite
def float64_cases_few_shapes(draw: st.DrawFn) -> Case:
    """Float64 cases from small sets of shapes and configurations (features first or last,
    with and without affine parameters, state at step 0), so that the compilations of a JAX
    adapter are shared."""
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


def torch_layout_config(rank: int = 4, dtype: Any = "float64", **changes: Any) -> LayerConfig:
    """Three features first (torch's layout), eps 1e-5, momentum 0.1, with ``changes``."""
    options: dict[str, Any] = {
        "num_features": 3,
        "rank": rank,
        "feature_axis": 1,
        "dtype": dtype,
        "eps": 1e-5,
        "momentum": 0.1,
    }
    return LayerConfig(**{**options, **changes})


def layout_view(draw: st.DrawFn, array: np.ndarray) -> np.ndarray:
    """``array`` as a contiguous, strided, Fortran-ordered or channels-last view."""
    layout = draw(st.sampled_from(["contiguous", "strided", "fortran", "channels_last"]))
    if layout == "strided":
        wide = np.zeros((2 * array.shape[0], *array.shape[1:]))
        wide[::2] = array
        strided: np.ndarray = wide[::2]
        return strided
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "channels_last" and array.ndim >= 3:
        order = (0, *range(2, array.ndim), 1)
        back = (0, array.ndim - 1, *range(1, array.ndim - 1))
        channels_last: np.ndarray = np.ascontiguousarray(array.transpose(order)).transpose(back)
        return channels_last
    return array


@st.composite
def float64_cases(
    draw: st.DrawFn,
    caps: Capabilities,
    eps: Sequence[float] = (1e-5, 1e-3, 0.5),
    momenta: Sequence[float] = (0.0, 0.1, 0.5, 1.0),
) -> Case:
    """A float64 case at the features-first axis in the capabilities' ranks, its layouts
    drawn (:func:`layout_view`); momentum ``None`` too with the cumulative average, affine
    and tracking drawn where both are supported."""
    rank = draw(st.sampled_from(sorted(caps.ranks)))
    features = draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 3), min_size=rank - 2, max_size=rank - 2))
    shape = (draw(st.integers(2, 5)), features, *spatial)
    values = st.floats(-8.0, 8.0, allow_subnormal=False)
    momentum: list[float | None] = [*momenta, *([None] if caps.cumulative_average else [])]
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=1,
        dtype="float64",
        eps=draw(st.sampled_from(eps)),
        momentum=draw(st.sampled_from(momentum)),
        affine=draw(st.booleans()) if caps.without_affine else True,
        track_running_stats=draw(st.booleans()) if caps.untracked else True,
    )
    vector = arrays(np.float64, (features,), elements=st.floats(-3.0, 3.0))
    state = RunningStatistics(
        draw(vector),
        draw(arrays(np.float64, (features,), elements=st.floats(0.0, 4.0))),
        draw(st.integers(0, 6)),
    )
    return Case(
        config=config,
        x=layout_view(draw, draw(arrays(np.float64, shape, elements=values))),
        dy=layout_view(draw, draw(arrays(np.float64, shape, elements=values))),
        gamma=draw(vector),
        beta=draw(vector),
        state=state,
    )


def layer_results(
    implementation: Implementation, config: LayerConfig, seed: int, shape: tuple[int, ...]
) -> list[np.ndarray]:
    """What a layer computes, to compare bitwise with another: an inference, both vjps, two
    training steps, an inference after them and the state they leave, for an input of
    ``shape`` (features at ``config.feature_axis``), parameters and statistics set from
    ``seed``."""
    rng = np.random.default_rng(seed)
    features = config.num_features
    x = rng.normal(size=shape) * 3.0 + 100.0
    dy = rng.normal(size=shape)
    layer = implementation.build(config)
    layer.set_parameters(rng.normal(size=features), rng.normal(size=features))
    layer.set_state(
        RunningStatistics(rng.normal(size=features), rng.uniform(0.5, 2.0, features), 1)
    )
    found = [layer.infer(x)]
    for training in (True, False):
        grads = layer.vjp(x, dy, training=training)
        found += [grads.dx, grads.dgamma, grads.dbeta]
    found += [layer.train_step(x), layer.train_step(x[::-1] * 1.5), layer.infer(x)]
    state = layer.state()
    assert state is not None
    return [*found, state.mean, state.var]


def shared_compilations() -> tuple[int, int]:
    """The programs the JAX adapters' shared forwards and vjps hold (``_module``)."""
    from normspec.adapters.jax import _module

    return (
        _module._forward._cache_size(),  # type: ignore[attr-defined]
        _module._vjp._cache_size(),  # type: ignore[attr-defined]
    )
