"""haiku.BatchNorm and haiku modules built like it, driven through the protocol.

The real library: agreement with the float64 reference on drawn cases, the zero-debiased
state as haiku keeps it (hidden averages from 0, the counter, the stored average inference
reads), recognition of a user's module with no glue code, and a third-party-like module
checked under a settings menu: correct, it passes; with a planted bug, it fails that bug's
clause. JAX compiles per shape: the drawn cases come from small sets, and the checks run
one dtype at 20 examples per clause under the menu.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

pytest.importorskip("haiku")
import haiku as hk
import jax
from adapter_cases import (
    Case,
    agree,
    float64_cases_few_shapes,
    layer_results,
    shared_compilations,
)

from normspec.adapters import Implementation, LayerConfig
from normspec.adapters.jax import haiku_module
from normspec.adapters.jax.haiku_module import HaikuImplementation
from normspec.adapters.reference import ReferenceImplementation
from normspec.adapters.registry import TargetError, _recognise, load_target
from normspec.conformance.menu import DEFAULT_MENU_SIZE
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference import RunningStatistics

FIXTURE = "thirdparty_haiku_bn:ThirdPartyHaikuBatchNorm"
TOLERANCE = 1e-12


@functools.cache
def _implementation(target: str) -> Implementation:
    """One implementation per target for the module: its dtype probe compiles."""
    return load_target(target, "flax")


@pytest.mark.parametrize("target", ["haiku", FIXTURE])
def test_agrees_with_the_reference_in_float64(target: str) -> None:
    """At step 0 a zero-debiased layer reads its hidden averages as they are, and its
    hidden averages follow the plain update: haiku agrees with the plain reference."""
    impl = _implementation(target)
    reference = ReferenceImplementation("flax")

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
    @given(float64_cases_few_shapes())
    def run(case: Case) -> None:
        agree(impl, reference, case, TOLERANCE)

    run()


CONFIG = LayerConfig(
    num_features=2, rank=2, feature_axis=1, dtype="float64", eps=1e-5, momentum=0.9
)


def _held(state: RunningStatistics | None) -> tuple[list[float], list[float], int]:
    assert state is not None
    return state.mean.tolist(), state.var.tolist(), state.steps


def _normalized(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return (x - mean) / np.sqrt(var + CONFIG.eps)


def test_the_state_is_the_hidden_averages_and_the_counter() -> None:
    """Two steps: the hidden averages from 0 and counter 2; inference reads them divided by
    1 - 0.9^2, as ExponentialMovingAverage stores them."""
    layer = _implementation("haiku").build(CONFIG)
    assert _held(layer.state()) == ([0.0, 0.0], [0.0, 0.0], 0)
    batches = [np.array([[1.0, -2.0], [3.0, 6.0]]), np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]])]
    hidden_mean, hidden_var = np.zeros(2), np.zeros(2)
    for x in batches:
        layer.train_step(x)
        hidden_mean = 0.9 * hidden_mean + 0.1 * x.mean(axis=0)
        hidden_var = 0.9 * hidden_var + 0.1 * x.var(axis=0)
    state = layer.state()
    assert state is not None and state.steps == 2
    np.testing.assert_allclose(state.mean, hidden_mean, rtol=1e-14)
    np.testing.assert_allclose(state.var, hidden_var, rtol=1e-14)
    x = np.array([[0.5, 0.5], [-1.0, 2.0]])
    debias = 1 - 0.9**2
    np.testing.assert_allclose(
        layer.infer(x),
        _normalized(x, hidden_mean / debias, hidden_var / debias),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("steps", [0, 3])
def test_a_state_set_is_held_as_haiku_holds_it(steps: int) -> None:
    """hidden and counter as set, the stored average debiased (hidden itself at 0 steps)."""
    layer = _implementation("haiku").build(CONFIG)
    state = RunningStatistics(np.array([0.5, -1.0]), np.array([2.0, 0.25]), steps)
    layer.set_state(state)
    assert _held(layer.state()) == _held(state)
    x = np.array([[1.0, 2.0], [3.0, -4.0]])
    debias = 1 - 0.9**steps if steps else 1.0
    np.testing.assert_allclose(
        layer.infer(x),
        _normalized(x, state.mean / debias, state.var / debias),
        rtol=1e-12,
        atol=1e-12,
    )
    layer.train_step(x)
    after = layer.state()
    assert after is not None and after.steps == steps + 1


def test_capabilities() -> None:
    caps = _implementation("haiku").capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.feature_axes == ("last", "first") and caps.step_counter
    assert caps.compiles_per_shape and caps.without_affine and not caps.untracked
    assert not _implementation(FIXTURE).capabilities().step_counter  # plain mean and var


class _Linear(hk.Module):
    def __call__(self, x: object) -> object:
        return hk.Linear(2)(x)


@pytest.mark.parametrize("target", ["haiku", "haiku:BatchNorm", FIXTURE])
def test_targets_are_recognised_with_no_glue(target: str) -> None:
    impl = load_target(target, "flax")
    assert isinstance(impl, HaikuImplementation)
    assert "BatchNorm" in impl.name and "dm-haiku" in impl.versions()


def test_constructor_arguments_and_what_is_not_recognised() -> None:
    named = load_target('haiku:BatchNorm(name="bn")', "flax")
    assert isinstance(named, HaikuImplementation) and "name='bn'" in named.name
    with pytest.raises(TargetError, match="decay_rate is set by normspec"):
        load_target("haiku:BatchNorm(decay_rate=0.5)", "flax")
    for value in (hk.Linear, _Linear, hk.Flatten):
        assert _recognise(value, "flax") is None
    # another library's class with an argument haiku's BatchNorm has is not haiku's to refuse
    assert HaikuImplementation.recognise(int, "flax", arguments={"decay_rate": 0.5}) is None


def _check(target: str, clauses: str) -> Report:
    options = CheckOptions(profile="flax", clauses=clauses, dtypes=("float32",), max_examples=20)
    return check_implementation(_implementation(target), options)


def test_a_correct_module_passes_and_a_planted_bug_is_caught_under_its_clause() -> None:
    report = _check(FIXTURE, "bn.train.output,bn.running.mean,bn.running.var,bn.infer.output")
    assert report.menu == DEFAULT_MENU_SIZE
    assert report.conformant and report.counts()["pass"] == 4, report.results
    buggy = _check("thirdparty_haiku_bn:EpsOutsideTheRoot", "bn.train.output")
    assert buggy.outcome("bn.train.output") == "fail", buggy.results


def test_settings_that_differ_in_eps_and_momentum_share_one_compilation() -> None:
    """haiku.BatchNorm's eps and decay are jit arguments (issue 13): layers of one shape
    that differ only in them compile the training and inference forwards and the vjp once,
    and each still computes with its own eps and momentum."""
    impl = _implementation("haiku")
    shape = (5, 3, 4)  # a shape no other test of the module uses
    x = np.linspace(-2.0, 3.0, num=int(np.prod(shape))).reshape(shape) ** 2
    settings = [(1e-5, 0.9), (1e-1, 0.5), (0.3, 0.75)]

    growth = []
    for eps, momentum in settings:
        before = shared_compilations()
        config = LayerConfig(
            num_features=3, rank=3, feature_axis=1, dtype="float32", eps=eps, momentum=momentum
        )
        layer = impl.build(config)
        y = layer.train_step(x)
        batch_mean, batch_var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
        want = (x - batch_mean[:, None]) / np.sqrt(batch_var[:, None] + eps)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        state = layer.state()
        assert state is not None
        np.testing.assert_allclose(state.mean, (1 - momentum) * batch_mean, rtol=1e-5)
        layer.infer(x)
        layer.vjp(x, np.ones_like(x), training=True)
        growth.append(
            tuple(after - start for after, start in zip(shared_compilations(), before, strict=True))
        )
    # the first configuration compiles the shared vjps, which also run the training steps
    # and inferences (how many programs jax keeps for a first call varies); the others,
    # differing in eps and momentum only, none
    assert growth[0][0] == 0 and growth[0][1] > 0, growth
    assert growth[1:] == [(0, 0), (0, 0)], growth


class _Floats(hk.BatchNorm):
    """hk.BatchNorm under another name: a user's class, its eps and decay Python floats and
    its forwards programs of their own."""


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_a_step_and_an_inference_compute_bitwise_what_forward_programs_do(dtype: str) -> None:
    """haiku.BatchNorm's training steps and inferences run as its vjp's program with a zero
    cotangent: the outputs, states and gradients are bitwise those of a user's class, whose
    steps run forward-only programs with eps and decay as constants."""
    own, floats = HaikuImplementation(), HaikuImplementation(_Floats)
    assert own.program(_config(dtype)).steps_by_vjp
    assert not floats.program(_config(dtype)).steps_by_vjp
    for seed, (eps, momentum) in enumerate([(1e-5, 0.9), (0.1, 0.0), (0.3, 1.0)]):
        config = replace(_config(dtype), eps=eps, momentum=momentum)
        got = layer_results(own, config, seed, (6, 3, 2))
        want = layer_results(floats, config, seed, (6, 3, 2))
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), (eps, momentum, g, w)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_a_new_layers_trees_are_bitwise_those_of_its_own_init(dtype: str) -> None:
    """haiku.BatchNorm's initial trees come from one init compilation per template, eps and
    the decay rate jit arguments: bitwise those of a user's class, which compiles its own
    init with them as constants (the average of a decay of 1 is 0 / 0 included); settings
    that differ only in them compile no other init."""
    own, floats = HaikuImplementation(), HaikuImplementation(_Floats)
    growth = []
    for eps, momentum in [(1e-5, 0.9), (0.1, 0.0), (0.3, 1.0)]:
        config = replace(_config(dtype), eps=eps, momentum=momentum)
        before = haiku_module._initial._cache_size()
        got = jax.tree_util.tree_leaves(own.program(config).initial())
        growth.append(haiku_module._initial._cache_size() - before)
        want = jax.tree_util.tree_leaves(floats.program(config).initial())
        assert len(got) == len(want) == 8
        for g, w in zip(map(np.asarray, got), map(np.asarray, want), strict=True):
            assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), (eps, momentum, g, w)
    # the first setting may compile the template's init (or find it compiled), no other does
    assert growth[0] in (0, 1) and growth[1:] == [0, 0], growth


def _config(dtype: str) -> LayerConfig:
    return LayerConfig(num_features=3, rank=3, feature_axis=1, dtype=dtype, eps=1e-3, momentum=0.9)
