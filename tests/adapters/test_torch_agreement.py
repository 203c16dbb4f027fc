"""Every torch adapter, driven through the protocol, agrees with the float64 reference.

Float64 only, on Hypothesis-drawn layers and inputs (contiguous, strided and transposed
layouts); tolerance ``1e-12`` relative to the natural scale of each quantity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("torch")
import torch
from adapter_cases import Case, agree

from normspec.adapters import Capabilities, Implementation, LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.reference import RunningStatistics

TARGETS = [
    "torch.nn:BatchNorm1d",
    "torch.nn:BatchNorm2d",
    "torch.nn:BatchNorm3d",
    "thirdparty_bn:ThirdPartyBatchNorm2d",
    "torch.functional",
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")
TOLERANCE = 1e-12


def _layout(draw: st.DrawFn, array: np.ndarray) -> np.ndarray:
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
def cases(draw: st.DrawFn, caps: Capabilities) -> Case:
    rank = draw(st.sampled_from(sorted(caps.ranks)))
    features = draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 3), min_size=rank - 2, max_size=rank - 2))
    shape = (draw(st.integers(2, 5)), features, *spatial)
    values = st.floats(-8.0, 8.0, allow_subnormal=False)
    momenta: list[float | None] = [0.0, 0.1, 0.5, 1.0]
    if caps.cumulative_average:
        momenta.append(None)
    config = LayerConfig(
        num_features=features,
        rank=rank,
        feature_axis=1,
        dtype="float64",
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])),
        momentum=draw(st.sampled_from(momenta)),
        affine=draw(st.booleans()),
        track_running_stats=draw(st.booleans()),
    )
    vector = arrays(np.float64, (features,), elements=st.floats(-3.0, 3.0))
    state = RunningStatistics(
        draw(vector),
        draw(arrays(np.float64, (features,), elements=st.floats(0.0, 4.0))),
        draw(st.integers(0, 6)),
    )
    return Case(
        config=config,
        x=_layout(draw, draw(arrays(np.float64, shape, elements=values))),
        dy=_layout(draw, draw(arrays(np.float64, shape, elements=values))),
        gamma=draw(vector),
        beta=draw(vector),
        state=state,
    )


def _agreement(make: Callable[[], Implementation]) -> None:
    impl = make()
    caps = impl.capabilities()
    reference = ReferenceImplementation("torch")

    @settings(max_examples=20)
    @given(cases(caps))
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
