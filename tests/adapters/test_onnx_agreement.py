"""The ONNX adapters, driven through the protocol, agree with the float64 reference.

Hypothesis-drawn layers and inputs (contiguous, strided, Fortran-ordered, channels-last),
float64, eps and momentum float32 values (the attributes the model holds) whose
``1 - momentum`` is exact in float32 too (onnx.reference computes it in float32: a deviation of its own, see
test_onnx_deviations.py); tolerance ``1e-12`` relative to each quantity's natural scale.
Training and inference, every opset each runtime runs the operator at.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

pytest.importorskip("onnx")
from adapter_cases import Case, agree, float64_cases

from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target

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


@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    if target.startswith("onnxruntime"):
        pytest.importorskip("onnxruntime")
    impl = load_target(target, "onnx")
    caps = impl.capabilities()
    assert not caps.backward and caps.setting_dtype == "float32"
    reference = ReferenceImplementation("onnx")

    @settings(max_examples=15, deadline=None)
    @given(float64_cases(caps, EPS, MOMENTA))
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE, gradients=False)

    run()
