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

import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("flax")

from adapter_cases import Case, agree, float64_cases_few_shapes

from normspec.adapters import LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.reference import RunningStatistics

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
#: Targets whose batch variance is ``E[x^2] - E[x]^2`` (flax's default fast variance).
RAW_MOMENTS = {"flax.linen", "flax.nnx"}
TOLERANCE = 1e-12
FLOAT32_TOLERANCE = 2.0**-22


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """nnx warns (FutureWarning) when it casts float64 statistics to float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    impl = load_target(target, "flax")
    reference = ReferenceImplementation("flax")
    statistics_tolerance = FLOAT32_TOLERANCE if target in FLOAT32_STATISTICS else TOLERANCE

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(float64_cases_few_shapes())
    def run(case: Case) -> None:
        agree(
            impl,
            reference,
            case,
            TOLERANCE,
            statistics_tol=statistics_tolerance,
            inference_tol=statistics_tolerance,
            rounded_statistics=True,
            raw_moments=target in RAW_MOMENTS,
        )

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
