"""The ONNX adapters, driven through the protocol, agree with the float64 reference.

Hypothesis-drawn layers and inputs (contiguous, strided and transposed), float64, eps and
momentum float32 values (the attributes the model holds) whose ``1 - momentum`` is exact in
float32 too (onnx.reference computes it in float32: a deviation of its own, see
test_onnx_deviations.py); tolerance ``1e-12`` relative to each quantity's natural scale.
Training and inference, every opset each runtime runs the operator at.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("onnx")
from adapter_cases import Case, agree

from normspec.adapters import Capabilities, LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.reference import RunningStatistics

TARGETS = [
    "onnx.reference(opset=14)",
    "onnx.reference",
    "onnxruntime(opset=7)",
    "onnxruntime(opset=9)",
    "onnxruntime(opset=14)",
    "onnxruntime",
]
TOLERANCE = 1e-12
#: float32 values, with 1 - momentum a float32 value too
EPS = [float(np.float32(1e-5)), float(np.float32(1e-3)), 0.5]
MOMENTA = [0.0, 0.25, 0.5, 0.875, 1.0]


def _layout(draw: st.DrawFn, array: np.ndarray) -> np.ndarray:
    layout = draw(st.sampled_from(["contiguous", "strided", "transposed"]))
    if layout == "strided":
        wide = np.zeros((2 * array.shape[0], *array.shape[1:]))
        wide[::2] = array
        strided: np.ndarray = wide[::2]
        return strided
    if layout == "transposed" and array.ndim >= 3:
        transposed: np.ndarray = np.ascontiguousarray(array.swapaxes(1, 2)).swapaxes(1, 2)
        return transposed
    return array


@st.composite
def cases(draw: st.DrawFn, caps: Capabilities) -> Case:
    rank = draw(st.sampled_from(sorted(caps.ranks)))
    features = draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 3), min_size=rank - 2, max_size=rank - 2))
    shape = (draw(st.integers(2, 5)), features, *spatial)
    values = st.floats(-8.0, 8.0, allow_subnormal=False)
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=1,
        dtype="float64",
        eps=draw(st.sampled_from(EPS)),
        momentum=draw(st.sampled_from(MOMENTA)),
    )
    vector = arrays(np.float64, (features,), elements=st.floats(-3.0, 3.0))
    state = RunningStatistics(
        draw(vector), draw(arrays(np.float64, (features,), elements=st.floats(0.0, 4.0))), 0
    )
    x = _layout(draw, draw(arrays(np.float64, shape, elements=values)))
    return Case(config, x, x, draw(vector), draw(vector), state)


@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    if target.startswith("onnxruntime"):
        pytest.importorskip("onnxruntime")
    impl = load_target(target, "onnx")
    caps = impl.capabilities()
    assert not caps.backward and caps.setting_dtype == "float32"
    reference = ReferenceImplementation("onnx")

    @settings(max_examples=15, deadline=None)
    @given(cases(caps))
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE, gradients=False)

    run()
