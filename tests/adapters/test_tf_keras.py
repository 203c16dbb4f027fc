"""The Keras adapters (Keras 3 and tf_keras BatchNormalization, fused, non-fused, renorm).

Agreement with the float64 reference through the protocol on drawn cases (float64, tight),
dtype round trips, renorm arguments, and a third-party Keras layer recognised with no glue.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")

from adapter_cases import Case, agree

from normspec.adapters import Implementation, LayerConfig, UnsupportedConfig
from normspec.adapters.keras import keras_layer as kl
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.adapters.tensorflow._tf import tf
from normspec.conformance.dtypes import round_to
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import RunningStatistics, batch_statistics
from normspec.reference import renorm as rn
from normspec.reference.dialects import PROFILES, renorm_config
from normspec.reference.layer import Affine
from normspec.reference.schedules import ConstantSchedule, LinearRamp, RenormBounds

KERAS3 = pytest.mark.skipif(kl.keras3() is None, reason="Keras 3 does not run on TensorFlow here")
THIRDPARTY = "thirdparty_keras_bn"
TOLERANCE = 1e-12


@st.composite
def cases(draw: st.DrawFn, impl: Implementation, dtype: str = "float64") -> Case:
    caps = impl.capabilities()
    rank = draw(st.sampled_from(sorted(caps.ranks)))
    position = draw(st.sampled_from(caps.feature_axes))
    axis = 1 if position == "first" else rank - 1
    features = draw(st.integers(1, 3))
    shape = [draw(st.integers(2, 4))] + [draw(st.integers(1, 3)) for _ in range(rank - 1)]
    shape[axis] = features
    values = st.floats(-8.0, 8.0, allow_subnormal=False)
    vector = arrays(np.float64, (features,), elements=st.floats(-3.0, 3.0))
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=axis,
        dtype=dtype,
        eps=draw(st.sampled_from([1e-3, 1e-2, 0.5])),
        momentum=draw(st.sampled_from([0.0, 0.9, 0.5, 1.0, 0.99])),
        affine=draw(st.booleans()),
    )
    state = RunningStatistics(
        round_to(draw(vector), dtype),
        round_to(draw(arrays(np.float64, (features,), elements=st.floats(0.0, 4.0))), dtype),
    )
    return Case(
        config,
        round_to(draw(arrays(np.float64, tuple(shape), elements=values)), dtype),
        round_to(draw(arrays(np.float64, tuple(shape), elements=values)), dtype),
        round_to(draw(vector), dtype),
        round_to(draw(vector), dtype),
        state,
    )


def _agreement(
    impl: Implementation,
    reference: Implementation,
    dtype: str,
    tol: float,
    running_tol: float | None = None,
) -> None:
    @settings(max_examples=12)
    @given(cases(impl, dtype))
    def run(case: Case) -> None:
        agree(impl, reference, case, tol, statistics_tol=running_tol)

    run()


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("keras", marks=KERAS3),
        "tf_keras.nonfused",
        pytest.param(f"{THIRDPARTY}:ThirdPartyBatchNormalization", marks=KERAS3),
        f"{THIRDPARTY}:ThirdPartyTfKerasBatchNormalization",
    ],
)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    impl = load_target(target, "keras")
    assert "float64" in impl.capabilities().dtypes
    # tf_keras rounds the update rate 1 - momentum to float32 (see the test below)
    running_tol = 1e-7 if target == "tf_keras.nonfused" else None
    _agreement(impl, ReferenceImplementation("keras"), "float64", TOLERANCE, running_tol)


def test_tf_keras_rounds_the_update_rate_to_float32_in_float64() -> None:
    """A deviation of tf_keras (not of the adapter): ``_assign_moving_average`` converts
    ``1.0 - momentum`` with ``tf.convert_to_tensor`` (float32) and casts it to the float64
    variable, so alpha = 0.1 becomes float32(0.1) = 0.10000000149011612."""
    impl = load_target("tf_keras.nonfused", "keras")
    config = LayerConfig(
        num_features=1, rank=2, feature_axis=1, dtype="float64", eps=1e-3, momentum=0.9
    )
    layer = impl.build(config)
    layer.set_state(RunningStatistics(np.zeros(1), np.ones(1)))
    layer.train_step(np.ones((2, 1)))
    state = layer.state()
    assert isinstance(state, RunningStatistics)
    assert state.mean[0] == float(np.float32(0.1)) != 0.1


def test_fused_path_agrees_with_the_unbiased_variance_in_float32() -> None:
    """The profile tf_keras_fused: the moving variance averages the Bessel-corrected variance."""
    impl = load_target("tf_keras.fused", "tf_keras_fused")
    caps = impl.capabilities()
    assert caps.ranks == {4, 5} and "float64" not in caps.dtypes and not caps.renorm
    assert not caps.ghost_batches and "virtual_batch_size" in caps.notes["ghost_batches"]
    _agreement(impl, ReferenceImplementation("tf_keras_fused"), "float32", 2e-5)


@pytest.mark.parametrize("target", [pytest.param("keras", marks=KERAS3), "tf_keras.nonfused"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_half_and_single_precision_round_trip(target: str, dtype: str) -> None:
    impl = load_target(target, "keras")
    config = LayerConfig(
        num_features=3,
        rank=4,
        feature_axis=3,
        dtype=dtype,
        eps=1e-3,
        momentum=0.9,
    )
    layer = impl.build(config)
    x = round_to(np.random.default_rng(1).standard_normal((2, 2, 2, 3)), dtype)
    y = layer.train_step(x)
    assert y.dtype == np.float64 and y.shape == x.shape
    np.testing.assert_array_equal(y, round_to(y, dtype))  # values of the layer's dtype
    state = layer.state()
    assert isinstance(state, RunningStatistics)
    stats = batch_statistics(x, 3)
    np.testing.assert_allclose(state.mean, 0.1 * stats.mean, rtol=1e-2, atol=1e-3)
    grads = layer.vjp(x, np.ones_like(x), training=True)
    np.testing.assert_allclose(grads.dbeta, np.full(3, 8.0))


# -- recognition ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(f"{THIRDPARTY}:ThirdPartyBatchNormalization", marks=KERAS3),
        f"{THIRDPARTY}:ThirdPartyTfKerasBatchNormalization",
        pytest.param("keras.layers:BatchNormalization", marks=KERAS3),
        "tf_keras.layers:BatchNormalization",
    ],
)
def test_keras_layer_classes_are_recognised_with_no_glue(target: str) -> None:
    impl = load_target(target, "keras")
    assert isinstance(impl, kl.KerasImplementation)
    caps = impl.capabilities()
    assert caps.ranks == {2, 3, 4, 5} and caps.feature_axes == ("last", "first")
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert not caps.untracked and not caps.cumulative_average and not caps.step_counter
    assert "trainable=False" in caps.notes["untracked"]
    assert caps.renorm == ("ThirdParty" not in target)


def test_non_keras_objects_are_not_recognised() -> None:
    import tf_keras

    assert kl.recognise(tf_keras.layers.Dense, "keras") is None  # no BN arguments
    assert kl.recognise(tf_keras.layers.LayerNormalization, "keras") is None  # no moving stats
    assert kl.recognise(object, "keras") is None
    assert kl.recognise(tf_keras.layers.BatchNormalization(), "keras") is None  # an instance


def test_thirdparty_layer_passes_a_short_check() -> None:
    impl = load_target(f"{THIRDPARTY}:ThirdPartyTfKerasBatchNormalization", "keras")
    options = CheckOptions(
        profile="keras",
        clauses="bn.train.output,bn.running.*,bn.infer.output,bn.backward.*,bn.params.*,"
        "bn.degenerate.empty_batch",
        max_examples=4,
    )
    report = check_implementation(impl, options)
    outcomes = {r.clause_id: r.outcome for r in report.results}
    assert set(outcomes.values()) <= {"pass", "not_applicable"}, outcomes
    assert outcomes["bn.running.var"] == "pass"


# -- renorm ---------------------------------------------------------------------------------


def test_renorm_arguments() -> None:
    dialect = PROFILES["tf_keras"]
    config = renorm_config(dialect, 2, momentum=0.9, renorm_momentum=0.75, clipping={"rmax": 3})
    assert kl.renorm_arguments(config, dialect) == {
        "renorm": True,
        "renorm_clipping": {"rmax": 3.0},
        "renorm_momentum": 0.75,
    }
    symmetric = replace(config, schedule=ConstantSchedule(RenormBounds.symmetric(2.0, 1.0)))
    clipping = kl.renorm_arguments(symmetric, dialect)["renorm_clipping"]
    assert clipping == {"rmin": 0.5, "rmax": 2.0, "dmax": 1.0}
    for change, message in (
        ({"schedule": LinearRamp()}, "no warm-up"),
        ({"average": "variance_biased"}, "average"),
        ({"statistics": "shared", "correction_rate": None}, "separate correction set"),
        ({"sigma_floor": "none"}, "floor"),
    ):
        with pytest.raises(UnsupportedConfig, match=message):
            kl.renorm_arguments(replace(config, **change), dialect)


@st.composite
def renorm_cases(draw: st.DrawFn, rank: int = 3, dtype: str = "float64") -> tuple[Any, ...]:
    features = draw(st.integers(1, 3))
    axis = draw(st.sampled_from([1, rank - 1]))
    shape = [draw(st.integers(2, 4))] + [2] * (rank - 1)
    shape[axis] = features
    x = round_to(draw(arrays(np.float64, tuple(shape), elements=st.floats(-4.0, 4.0))), dtype)
    clipping = draw(
        st.sampled_from([{}, {"rmax": 1.5, "rmin": 0.5, "dmax": 0.5}, {"rmax": 1.0, "dmax": 0.0}])
    )
    cfg = renorm_config(
        "tf_keras",
        features,
        momentum=draw(st.sampled_from([0.9, 0.5, 0.0])),
        renorm_momentum=draw(st.sampled_from([0.9, 0.25])),
        eps=draw(st.sampled_from([1e-3, 1e-4])),
        clipping=clipping,
        feature_axis=axis,
    )

    def vector(low: float, high: float) -> np.ndarray:
        elements = st.floats(low, high)
        return round_to(draw(arrays(np.float64, (features,), elements=elements)), dtype)

    state = rn.RenormStatistics(
        vector(-2.0, 2.0), vector(0.05, 3.0), 0, vector(-2.0, 2.0), vector(0.05, 3.0)
    )
    params = Affine(vector(-2.0, 2.0), vector(-2.0, 2.0))
    dy = round_to(draw(arrays(np.float64, tuple(shape), elements=st.floats(-1.0, 1.0))), dtype)
    return cfg, x, dy, params, state


def test_tf_keras_renorm_fails_in_float64() -> None:
    """A tf_keras bug (not of the adapter): ``tf.maximum(self.renorm_stddev,
    tf.sqrt(self.epsilon))`` takes the square root of a Python float as a float32 tensor,
    which a float64 layer cannot combine: renorm=True raises in float64. The dtypes are
    probed per chapter: the renorm target (renorm layers only) leaves float64 out, saying
    why; the non-fused target keeps it for BN, and its renorm clauses are not applicable in
    float64, for that reason."""
    renorm = load_target("tf_keras.renorm", "tf_keras").capabilities()
    assert "float64" not in renorm.dtypes
    assert "float64: InvalidArgumentError" in renorm.notes["dtypes"]
    nonfused = load_target("tf_keras.nonfused", "tf_keras").capabilities()
    assert "float64" in nonfused.dtypes
    assert nonfused.refused_dtypes["renorm"]["float64"].startswith("InvalidArgumentError")


@KERAS3
def test_keras3_renorm_floor_rounds_eps_to_float32() -> None:
    """A deviation of Keras 3 (not of the adapter): the floor ``sqrt(epsilon)`` on the
    correction sigma is ``ops.sqrt(ops.cast(self.epsilon, dtype))``, and ``ops.cast`` of a
    Python float goes through float32, so a float64 layer floors at sqrt(float32(eps))."""
    impl = load_target("keras.renorm", "tf_keras")
    cfg = renorm_config("tf_keras", 1, momentum=0.9, renorm_momentum=0.9, eps=0.1)
    config = LayerConfig(
        num_features=1, rank=2, feature_axis=1, dtype="float64", eps=0.1, momentum=0.9, renorm=cfg
    )
    layer = impl.build(config)
    layer.set_parameters(np.ones(1), np.zeros(1))
    layer.set_state(rn.RenormStatistics([0.0], [1.0], 0, [0.0], [0.0]))  # below the floor
    x = np.ones((4, 1))  # var_B = 0: y = d = mean / floor
    y = layer.train_step(x)
    floored = 1.0 / np.sqrt(np.float64(np.float32(0.1)))
    assert abs(y[0, 0] - floored) < 1e-14 * floored
    assert abs(y[0, 0] - 1.0 / np.sqrt(0.1)) > 1e-9  # float32 rounding, not float64's


@pytest.mark.parametrize(
    ("target", "dtype", "tol"),
    [
        pytest.param("keras.renorm", "float64", 1e-9, marks=KERAS3),
        ("tf_keras.renorm", "float32", 2e-5),
    ],
)
def test_renorm_agrees_with_the_reference(target: str, dtype: str, tol: float) -> None:
    """float64 where the layer runs in it (tf_keras' renorm does not: see below); eps and the
    moving sigmas keep the floor sqrt(eps) inactive (Keras 3 rounds eps to float32 there)."""
    impl = load_target(target, "tf_keras")
    caps = impl.capabilities()
    assert caps.renorm and not caps.batchnorm and dtype in caps.dtypes

    @settings(max_examples=10)
    @given(renorm_cases(dtype=dtype))
    def run(drawn: tuple[Any, ...]) -> None:
        cfg, x, dy, params, state = drawn
        config = LayerConfig(
            num_features=cfg.num_features,
            rank=x.ndim,
            feature_axis=cfg.feature_axis,
            dtype=dtype,
            eps=cfg.eps,
            momentum=1.0 - cfg.rate,
            renorm=cfg,
        )
        layer = impl.build(config)
        layer.set_parameters(params.gamma, params.beta)
        layer.set_state(state)
        y, after = rn.training_step(cfg, params, state, x)
        np.testing.assert_allclose(layer.train_step(x), y, rtol=tol, atol=tol)
        got = layer.state()
        assert isinstance(got, rn.RenormStatistics) and got.separate
        for name in ("mean", "spread", "correction_mean", "correction_spread"):
            np.testing.assert_allclose(getattr(got, name), getattr(after, name), rtol=tol, atol=tol)
        layer.set_state(state)
        want_y = rn.inference(cfg, params, state, x)
        np.testing.assert_allclose(layer.infer(x), want_y, rtol=tol, atol=tol)
        for training in (True, False):
            layer.set_state(state)
            got_g = layer.vjp(x, dy, training=training)
            want = rn.backward(cfg, params, state, x, dy, training=training)
            for name in ("dx", "dgamma", "dbeta"):
                np.testing.assert_allclose(
                    getattr(got_g, name), getattr(want, name), rtol=tol, atol=tol * 10
                )

    run()


def test_renorm_state_keeps_the_derived_moving_variance() -> None:
    impl = load_target("tf_keras.renorm", "tf_keras")
    cfg = renorm_config("tf_keras", 2, eps=0.25)
    config = LayerConfig(
        num_features=2, rank=2, feature_axis=1, dtype="float32", eps=0.25, momentum=0.99, renorm=cfg
    )
    layer = impl.build(config)
    assert isinstance(layer, kl.KerasLayer)
    layer.set_state(rn.RenormStatistics([0.0, 1.0], [2.0, 0.25], 7, [0.5, 0.0], [1.0, 3.0]))
    variance = tf.convert_to_tensor(layer.layer.moving_variance).numpy()
    np.testing.assert_array_equal(variance, [4.0 - 0.25, 0.0])
    state = layer.state()
    assert isinstance(state, rn.RenormStatistics) and state.steps == 7
    np.testing.assert_array_equal(state.correction_spread, [1.0, 3.0])
    assert math.isclose(float(state.spread[1]), 0.25)


def test_the_fused_target_rejects_what_the_fused_kernel_cannot_do() -> None:
    impl = load_target("tf_keras.fused", "tf_keras")
    for change, message in (
        ({"rank": 3, "feature_axis": 2}, "rank 3"),
        ({"dtype": "float64"}, "dtype"),
    ):
        config = LayerConfig(
            **{
                **LayerConfig(
                    num_features=2, rank=4, feature_axis=3, dtype="float32", eps=1e-3, momentum=0.9
                ).__dict__,
                **change,
            }
        )
        with pytest.raises(UnsupportedConfig, match=message):
            impl.build(config)
