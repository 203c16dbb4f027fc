"""The functional TensorFlow adapters: tf.nn.batch_normalization and the fused op."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

pytest.importorskip("tensorflow")

from adapter_cases import Case, agree
from test_tf_keras import TOLERANCE, cases

from normspec.adapters import LayerConfig, UnsupportedConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.adapters.tensorflow.tf_nn import (
    BatchNormalizationFunctional,
    FusedBatchNormFunctional,
)
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics, batch_statistics


def test_batch_normalization_agrees_with_the_reference_in_float64() -> None:
    impl = load_target("tf.nn.batch_normalization", "tf_keras")
    assert isinstance(impl, BatchNormalizationFunctional)
    caps = impl.capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.untracked and caps.feature_axes == ("last", "first")
    reference = ReferenceImplementation("tf_keras")

    @settings(max_examples=15)
    @given(cases(impl))
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE)

    run()


def test_batch_normalization_traces_once_per_signature() -> None:
    impl = BatchNormalizationFunctional()
    impl.capabilities()  # the dtype probes trace too
    before = impl.functions.traces
    for batch in (2, 3, 5):
        config = LayerConfig(
            num_features=2, rank=3, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.9
        )
        layer = impl.build(config)
        x = np.arange(batch * 2 * 3, dtype=np.float64).reshape(batch, 2, 3)
        layer.train_step(x)
        layer.infer(x)
    assert impl.functions.traces - before == 2  # one training and one inference trace


def test_untracked_layer_normalizes_with_batch_statistics() -> None:
    impl = BatchNormalizationFunctional()
    config = LayerConfig(
        num_features=2, rank=2, feature_axis=1, dtype="float64", eps=1e-3, momentum=0.9,
        track_running_stats=False,
    )  # fmt: skip
    layer = impl.build(config)
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    assert layer.state() is None
    np.testing.assert_allclose(layer.infer(x), layer.train_step(x))


def test_fused_op_agrees_with_the_torch_profile_in_float32() -> None:
    impl = load_target("tf.nn.fused_batch_norm", "torch")
    assert isinstance(impl, FusedBatchNormFunctional)
    caps = impl.capabilities()
    assert caps.ranks == {4, 5} and "float64" not in caps.dtypes
    reference = ReferenceImplementation("torch")

    @settings(max_examples=12)
    @given(cases(impl, "float32"))
    def run(case: Case) -> None:
        agree(impl, reference, case, 2e-5)

    run()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_op_keeps_float32_statistics_for_half_inputs(dtype: str) -> None:
    impl = FusedBatchNormFunctional()
    config = LayerConfig(
        num_features=2,
        rank=4,
        feature_axis=3,
        dtype=dtype,
        eps=1e-3,
        momentum=1.0,
    )
    layer = impl.build(config)
    x = round_to(np.random.default_rng(2).standard_normal((3, 2, 2, 2)), dtype)
    layer.set_state(RunningStatistics(np.zeros(2), np.ones(2)))
    layer.train_step(x)
    state = layer.state()
    assert isinstance(state, RunningStatistics)
    stats = batch_statistics(x, 3)
    np.testing.assert_allclose(state.mean, stats.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(state.var, stats.var * 12 / 11, rtol=1e-5)  # Bessel-corrected
    with pytest.raises(UnsupportedConfig, match="rank 3"):
        impl.build(LayerConfig(**{**config.__dict__, "rank": 3, "feature_axis": 2}))
