"""Every torch adapter, driven through the protocol, agrees with the float64 reference.

Float64 only, on Hypothesis-drawn layers and inputs (contiguous, strided and transposed
layouts); tolerance ``1e-12`` relative to the natural scale of each quantity.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

pytest.importorskip("torch")
import torch

from normspec.adapters import Capabilities, Implementation, LayerConfig
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import load_target
from normspec.reference import RunningStatistics, batch_statistics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

TARGETS = [
    "torch.nn:BatchNorm1d",
    "torch.nn:BatchNorm2d",
    "torch.nn:BatchNorm3d",
    "thirdparty_bn:ThirdPartyBatchNorm2d",
    "torch.functional",
]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")
TOLERANCE = 1e-12


@dataclass(frozen=True)
class Case:
    config: LayerConfig
    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    state: RunningStatistics


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


def _close(actual: np.ndarray, expected: np.ndarray, scale: float, what: str) -> None:
    np.testing.assert_allclose(
        actual, expected, rtol=TOLERANCE, atol=TOLERANCE * scale, err_msg=what
    )


def _check(impl: Implementation, case: Case) -> None:
    """Train step, state, inference and both vjps of ``impl`` against the reference."""
    config = case.config
    reference = ReferenceImplementation("torch")
    layers = [impl.build(config), reference.build(config)]
    for layer in layers:
        if config.affine:
            layer.set_parameters(case.gamma, case.beta)
        if config.track_running_stats:
            layer.set_state(case.state)
    ours, theirs = layers
    n = case.x.size // config.num_features
    gamma = np.abs(case.gamma).max() if config.affine else 1.0
    beta = np.abs(case.beta).max() if config.affine else 0.0
    stats = batch_statistics(case.x)
    s_batch = float(np.max(1.0 / np.sqrt(stats.var + config.eps)))
    s_run = float(np.max(1.0 / np.sqrt(case.state.var + config.eps)))
    x_max, dy_max = float(np.abs(case.x).max()), float(np.abs(case.dy).max())

    _close(ours.train_step(case.x), theirs.train_step(case.x), 1 + gamma * n + beta, "train y")
    if config.track_running_stats:
        got, want = ours.state(), theirs.state()
        assert got is not None and want is not None
        _close(got.mean, want.mean, 1 + x_max, "running mean")
        _close(got.var, want.var, 1 + 2 * x_max**2, "running var")
        if impl.capabilities().step_counter:
            assert got.steps == want.steps
    else:
        assert ours.state() is None

    for layer in layers:
        if config.track_running_stats:
            layer.set_state(case.state)
    s_infer = s_run if config.track_running_stats else s_batch
    infer_scale = 1 + gamma * s_infer * (x_max + 3) + beta
    _close(ours.infer(case.x), theirs.infer(case.x), infer_scale, "inference y")

    for training, s in ((True, s_batch), (False, s_infer)):
        mode = "train" if training else "inference"
        got_g = ours.vjp(case.x, case.dy, training=training)
        want_g = theirs.vjp(case.x, case.dy, training=training)
        _close(got_g.dx, want_g.dx, 1 + gamma * s * dy_max * (1 + n), f"{mode} dx")
        if config.affine:
            xhat = n if training else s * (x_max + 3)
            _close(got_g.dgamma, want_g.dgamma, 1 + n * dy_max * xhat, f"{mode} dgamma")
            _close(got_g.dbeta, want_g.dbeta, 1 + n * dy_max, f"{mode} dbeta")
        else:
            assert not np.any(got_g.dgamma) and not np.any(got_g.dbeta)


def _agreement(make: Callable[[], Implementation]) -> None:
    impl = make()

    @settings(max_examples=20)
    @given(cases(impl.capabilities()))
    def run(case: Case) -> None:
        _check(impl, case)

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
