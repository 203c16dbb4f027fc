"""tf_keras' ghost batch normalization (``virtual_batch_size``) through the Keras adapter.

tf_keras reshapes a training batch to ``(V, B / V, ...)`` and reduces over the first axis:
ghost batch ``g`` holds samples ``g, g + G, ...`` (``ghost_groups = strided``), and the
moving statistics move once towards the mean of the ghost batches' means and biased
variances (``ghost_running = averaged``): the profile ``tf_keras``. Its variables have shape
``(1, 1, ..., C, ...)``, which the adapter reads and writes. Clauses: ghost.*.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

from normspec.adapters import LayerConfig
from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import Affine, BatchNormConfig, RunningStatistics, ghost


def _config(**changes: object) -> LayerConfig:
    fields: dict[str, object] = {
        "num_features": 2,
        "rank": 3,
        "feature_axis": 2,
        "dtype": "float64",
        "eps": 0.01,
        "momentum": 0.75,  # alpha = 0.25, exact in float32 (tf_keras' decay is a float32)
        "virtual_batch_size": 3,
    }
    fields.update(changes)
    return LayerConfig(**fields)  # type: ignore[arg-type]


def test_capabilities() -> None:
    assert load_target("tf_keras", "tf_keras").capabilities().ghost_batches
    fused = load_target("tf_keras.fused", "tf_keras_fused").capabilities()
    assert not fused.ghost_batches


@pytest.mark.parametrize("feature_axis", [1, 2])
def test_agrees_with_the_reference_strided_and_averaged(feature_axis: int) -> None:
    config = _config(feature_axis=feature_axis)
    layer = load_target("tf_keras", "tf_keras").build(config)
    rng = np.random.default_rng(3)
    shape = (6, 2, 2)
    x = rng.normal(size=shape) * 3.0 + 1.0
    dy = rng.normal(size=shape)
    gamma, beta = np.array([1.5, -0.5]), np.array([0.25, 2.0])
    state = RunningStatistics(np.array([0.5, -1.0]), np.array([2.0, 0.5]))
    layer.set_parameters(gamma, beta)
    layer.set_state(state)
    read = layer.state()
    assert isinstance(read, RunningStatistics)
    assert np.array_equal(read.mean, state.mean) and np.array_equal(read.var, state.var)
    y = layer.train_step(x)
    bn = BatchNormConfig(2, feature_axis, 0.01, 0.25, "biased")
    reference = ghost.GhostConfig(bn, 3, "strided", "averaged")
    expected_y, expected_state = ghost.training_step(reference, Affine(gamma, beta), state, x)
    np.testing.assert_allclose(y, expected_y, rtol=1e-12, atol=1e-12)
    after = layer.state()
    assert isinstance(after, RunningStatistics)
    np.testing.assert_allclose(after.mean, expected_state.mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(after.var, expected_state.var, rtol=1e-12, atol=1e-14)
    consecutive = ghost.GhostConfig(bn, 3, "consecutive", "averaged")
    assert not np.allclose(y, ghost.training_step(consecutive, Affine(gamma, beta), state, x)[0])
    layer.set_state(state)
    grads = layer.vjp(x, dy, training=True)
    wanted = ghost.backward(reference, Affine(gamma, beta), state, x, dy, training=True)
    np.testing.assert_allclose(grads.dx, wanted.dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.dgamma, wanted.dgamma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads.dbeta, wanted.dbeta, rtol=1e-10, atol=1e-12)
    # inference takes a batch of any size (the state after a vjp is unspecified: set it)
    layer.set_state(state)
    odd = rng.normal(size=(5, *shape[1:]))
    np.testing.assert_allclose(
        layer.infer(odd), ghost.inference(reference, Affine(gamma, beta), state, odd), rtol=1e-12
    )


def test_a_batch_that_is_not_a_multiple_raises() -> None:
    layer = load_target("tf_keras", "tf_keras").build(_config())
    before = layer.state()
    with pytest.raises(Exception, match="reshape"):
        layer.train_step(np.ones((4, 2, 2)))
    after = layer.state()
    assert isinstance(before, RunningStatistics) and isinstance(after, RunningStatistics)
    assert np.array_equal(before.mean, after.mean) and np.array_equal(before.var, after.var)


def _outcomes(profile: str, clauses: str) -> dict[str, str]:
    report = check_implementation(
        load_target("tf_keras", profile),
        CheckOptions(profile=profile, clauses=clauses, max_examples=6, dtypes=("float32",)),
    )
    return {r.clause_id: r.outcome for r in report.results}


def test_normspec_check_passes_the_ghost_clauses_under_tf_keras() -> None:
    got = _outcomes("tf_keras", "ghost.*")
    assert set(got.values()) == {"pass"}, got


def test_strided_ghost_batches_fail_ghost_groups_under_the_paper() -> None:
    """The paper's ghost batches are consecutive: tf_keras' are another partition."""
    got = _outcomes("paper", "ghost.train.output,ghost.groups")
    assert got == {"ghost.train.output": "pass", "ghost.groups": "fail"}
