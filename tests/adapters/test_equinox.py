"""equinox.nn.BatchNorm (both modes) and equinox modules built like it, through the protocol.

The real library, vmapped over the batch with its ``axis_name``: agreement with the
float64 reference on drawn cases, the state as each mode keeps it (``mode="batch"``: the
hidden averages of a zero-debiased average and its counter; ``mode="ema"``: running
statistics and a first-step flag), recognition of a user's module with no glue code, and
a third-party-like module checked under a settings menu: correct, it passes; with a
planted bug, it fails that bug's clause. JAX compiles per shape: the drawn cases come from
small sets, and the checks run one dtype at 20 examples per clause under the menu.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("equinox")
import equinox as eqx
from adapter_cases import (
    Case,
    agree,
    float64_cases_few_shapes,
    layer_results,
    shared_compilations,
)
from hypothesis import strategies as st

from normspec.adapters import Implementation, LayerConfig
from normspec.adapters.jax.equinox_module import EquinoxImplementation
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import TargetError, _recognise, load_target
from normspec.conformance.menu import DEFAULT_MENU_SIZE
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import RunningStatistics

FIXTURE = "thirdparty_equinox_bn:ThirdPartyEquinoxBatchNorm"
TOLERANCE = 1e-12


@functools.cache
def _implementation(target: str) -> Implementation:
    """One implementation per target for the module: its dtype probe compiles."""
    return load_target(target, "flax")


@pytest.mark.parametrize("target", ["equinox", FIXTURE])
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    """Features first (an equinox layer's only layout). At step 0 ``mode="batch"`` reads its
    hidden averages as they are, and they follow the plain update."""
    impl = _implementation(target)
    reference = ReferenceImplementation("flax")
    first = float64_cases_few_shapes().filter(lambda case: case.config.feature_position == "first")

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(first)
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE)

    run()


CONFIG = LayerConfig(
    num_features=2, rank=2, feature_axis=1, dtype="float64", eps=1e-5, momentum=0.9
)
X = np.array([[1.0, -2.0], [3.0, 6.0]])


def _held(state: RunningStatistics | None) -> tuple[list[float], list[float], int]:
    assert state is not None
    return state.mean.tolist(), state.var.tolist(), state.steps


def _normalized(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (x - mean) / np.sqrt(var + CONFIG.eps)


@pytest.mark.parametrize("steps", [0, 3])
def test_batch_mode_state_is_the_hidden_averages_and_the_counter(steps: int) -> None:
    """A new layer's hidden variance is 1 (equinox's); inference reads hidden / (1 -
    0.9^t) (hidden at t = 0); a training step counts."""
    layer = _implementation("equinox").build(CONFIG)
    assert _held(layer.state()) == ([0.0, 0.0], [1.0, 1.0], 0)
    state = RunningStatistics(np.array([0.5, -1.0]), np.array([2.0, 0.25]), steps)
    layer.set_state(state)
    assert _held(layer.state()) == _held(state)
    debias = 1 - 0.9**steps if steps else 1.0
    np.testing.assert_allclose(
        layer.infer(X),
        _normalized(X, state.mean / debias, state.var / debias),
        rtol=1e-12,
        atol=1e-12,
    )
    layer.train_step(X)
    after = layer.state()
    assert after is not None and after.steps == steps + 1
    np.testing.assert_allclose(after.mean, 0.9 * state.mean + 0.1 * X.mean(axis=0), rtol=1e-14)


def test_ema_mode_fills_at_its_first_step_and_trains_with_its_running_statistics() -> None:
    """What mode="ema" holds: a first-step flag set for a state of 0 steps (the step
    replaces the statistics with the batch's), cleared otherwise (the step updates them
    and normalizes with the updated values)."""
    layer = _implementation("equinox.ema").build(CONFIG)
    state = RunningStatistics(np.array([0.5, -1.0]), np.array([2.0, 0.25]), 0)
    layer.set_state(state)
    np.testing.assert_allclose(
        layer.train_step(X), _normalized(X, X.mean(axis=0), X.var(axis=0)), rtol=1e-12
    )
    filled = layer.state()
    assert filled is not None
    np.testing.assert_allclose(filled.var, X.var(axis=0), rtol=1e-14)
    layer.set_state(state.replace(steps=5))
    mean = 0.9 * state.mean + 0.1 * X.mean(axis=0)
    var = 0.9 * state.var + 0.1 * X.var(axis=0)
    np.testing.assert_allclose(layer.train_step(X), _normalized(X, mean, var), rtol=1e-12)
    assert not _implementation("equinox.ema").capabilities().step_counter


def test_capabilities() -> None:
    caps = _implementation("equinox").capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.feature_axes == ("first",) and caps.step_counter
    assert caps.compiles_per_shape and caps.without_affine and not caps.untracked


@pytest.mark.parametrize(
    ("target", "mode"),
    [("equinox", "batch"), ("equinox.ema", "ema"), ('equinox.nn:BatchNorm(mode="batch")', "batch")],
)
def test_targets_are_recognised_with_no_glue(target: str, mode: str) -> None:
    impl = _implementation(target)
    assert isinstance(impl, EquinoxImplementation) and impl.arguments == {"mode": mode}
    assert "BatchNorm" in impl.name and "equinox" in impl.versions()
    assert impl.capabilities().warnings == ()


@pytest.mark.filterwarnings("ignore:When `eqx.nn.BatchNorm:UserWarning")
def test_unset_arguments_that_change_the_computation_are_a_warning() -> None:
    impl = EquinoxImplementation(eqx.nn.BatchNorm, "flax")
    assert impl.unset == ["mode='legacy'"]
    user = load_target(FIXTURE, "flax")
    assert isinstance(user, EquinoxImplementation) and user.unset == []


class _NoState(eqx.Module):
    weight: object

    def __init__(self, input_size: int, axis_name: str, eps: float = 1e-5, **_: object) -> None:
        self.weight = np.ones(input_size)


def test_constructor_arguments_and_what_is_not_recognised() -> None:
    with pytest.raises(TargetError, match="momentum is set by normspec"):
        load_target("equinox.nn:BatchNorm(momentum=0.5)", "flax")
    for value in (eqx.nn.Linear, eqx.nn.Dropout, _NoState, st.integers):
        assert _recognise(value, "flax") is None


def _check(target: str, clauses: str) -> Report:
    options = CheckOptions(profile="flax", clauses=clauses, dtypes=("float32",), max_examples=20)
    return check_implementation(_implementation(target), options)


def test_a_correct_module_passes_and_a_planted_bug_is_caught_under_its_clause() -> None:
    report = _check(FIXTURE, "bn.train.output,bn.running.mean,bn.running.var,bn.infer.output")
    assert report.menu == DEFAULT_MENU_SIZE
    assert report.conformant and report.counts()["pass"] == 4, report.results
    buggy = _check("thirdparty_equinox_bn:MomentumAsRate", "bn.running.mean")
    assert buggy.outcome("bn.running.mean") == "fail", buggy.results


class _Floats(eqx.nn.BatchNorm):
    """eqx.nn.BatchNorm under another name: a user's class, whose eps and momentum stay
    Python floats (static fields, one compilation per setting)."""


#: (eps, momentum): momenta 0 and 1 among them; 0.9, whose 1 - momentum rounded from double
#: (0.1 in float32) is not 1 - its float32 rounding (0.100000024)
SETTINGS = [(1e-5, 0.9), (0.1, 0.0), (0.3, 1.0), (2.0**-4, 0.123456789)]


@pytest.mark.parametrize(
    ("mode", "dtype"),
    [("batch", "float32"), ("batch", "float64"), ("ema", "float32"), ("ema", "float64")],
)
def test_settings_are_jit_arguments_and_compute_as_floats(mode: str, dtype: str) -> None:
    """eqx.nn.BatchNorm takes eps and the momentum as traced stand-ins: layers of one shape
    that differ only in them share one compilation, and compute bitwise what a user's
    class, with the floats, computes."""
    own = EquinoxImplementation(arguments={"mode": mode})
    floats = EquinoxImplementation(_Floats, arguments={"mode": mode})
    growth = []
    for seed, (eps, momentum) in enumerate(SETTINGS):
        config = LayerConfig(
            num_features=3, rank=3, feature_axis=1, dtype=dtype, eps=eps, momentum=momentum
        )
        before = shared_compilations()
        shared = layer_results(own, config, seed, (6, 3, 2))
        after = shared_compilations()
        growth.append(tuple(a - b for a, b in zip(after, before, strict=True)))
        for got, want in zip(shared, layer_results(floats, config, seed, (6, 3, 2)), strict=True):
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (eps, momentum)
    assert growth[1:] == [(0, 0)] * (len(SETTINGS) - 1), growth


def test_half_layers_and_a_subclass_keep_their_floats() -> None:
    config = LayerConfig(
        num_features=3, rank=3, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.9
    )
    assert EquinoxImplementation(arguments={"mode": "batch"}).program(config).traced
    for dtype in ("float16", "bfloat16"):
        half = replace(config, dtype=dtype)
        assert not EquinoxImplementation(arguments={"mode": "batch"}).program(half).traced
    assert not EquinoxImplementation(_Floats, arguments={"mode": "batch"}).program(config).traced
