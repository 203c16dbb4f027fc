"""Every torch adapter, driven through the protocol, agrees with the float64 reference.

Float64 only, on Hypothesis-drawn layers and inputs (contiguous, strided and transposed
layouts); tolerance ``1e-12`` relative to the natural scale of each quantity.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings

pytest.importorskip("torch")
import torch
from adapter_cases import Case, agree, float64_cases

from normspec.adapters import Implementation
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target

TARGETS = [
    "torch.nn:BatchNorm1d",
    "torch.nn:BatchNorm2d",
    "torch.nn:BatchNorm3d",
    "thirdparty_bn:ThirdPartyBatchNorm2d",
    "torch.functional",
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")
TOLERANCE = 1e-12


def _agreement(make: Callable[[], Implementation]) -> None:
    impl = make()
    caps = impl.capabilities()
    reference = ReferenceImplementation("torch")

    @settings(max_examples=20)
    @given(float64_cases(caps))
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE, steps=caps.step_counter)

    run()


@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    _agreement(lambda: load_target(target, "torch"))


@CUDA
@pytest.mark.parametrize("target", TARGETS)
def test_agrees_with_the_reference_in_float64_on_cuda(
    target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NORMSPEC_TORCH_DEVICE", "cuda")
    impl = load_target(target, "torch")
    assert "cuda" in impl.versions()["device"]
    _agreement(lambda: impl)
