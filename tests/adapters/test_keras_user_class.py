"""A user's own Keras 3 layer class on the jax and torch backends, with no glue (issue 13).

The worker starts with the user's ``KERAS_BACKEND`` (as ``KERAS_BACKEND=jax normspec check
mypkg.layers:MyBN`` does: the worker inherits the environment), and the one Keras recogniser
dispatches on ``keras.backend.backend()``: the fixture's backend-neutral class
(tests/fixtures/thirdparty_keras3_bn.py) passes the core clauses under several seeds, its
planted bug (the moving variance averages the unbiased batch variance) is caught under
bn.running.var, a subclass of Keras' own BatchNormalization with a planted bug (the
Bessel-corrected batch variance) is caught under bn.train.output on the jax, torch and numpy
backends, and Keras' own BatchNormalization named as a class is checked as a renorm layer
too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("keras")

import adapter_cases  # noqa: F401  (puts tests/fixtures on sys.path)

from normspec.adapters.keras import _keras
from normspec.conformance.isolation import IsolatedImplementation, Isolation, isolate
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation

FIXTURE = "thirdparty_keras3_bn"
CORRECT = f"{FIXTURE}:ThirdPartyBatchNormalization"
BUGGY = f"{FIXTURE}:UnbiasedMovingVariance"
CORE = "bn.train.output,bn.running.mean,bn.running.var,bn.infer.output,bn.backward.train.dx"
SEEDS = (0, 1, 2)


def _on(backend: str, target: str) -> Iterator[IsolatedImplementation]:
    pytest.importorskip(backend)
    with isolate(target, "keras", Isolation(env={"KERAS_BACKEND": backend})) as impl:
        yield impl


@pytest.fixture(scope="module", params=["jax", "torch"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def correct(backend: str) -> Iterator[IsolatedImplementation]:
    yield from _on(backend, CORRECT)


@pytest.fixture(scope="module")
def buggy(backend: str) -> Iterator[IsolatedImplementation]:
    yield from _on(backend, BUGGY)


def _check(impl: IsolatedImplementation, clauses: str, seed: int) -> Report:
    options = CheckOptions(
        profile="keras", clauses=clauses, dtypes=("float32",), seed=seed, max_examples=6
    )
    return check_implementation(impl, options)


def test_the_class_is_recognised_on_the_workers_backend(
    correct: IsolatedImplementation, backend: str
) -> None:
    assert f"ThirdPartyBatchNormalization (Keras {correct.versions()['keras']} on {backend}" in (
        correct.name
    )
    assert correct.versions()["keras_backend"] == backend
    caps = correct.capabilities()
    assert caps.backward and caps.ranks == frozenset({2, 3, 4, 5})
    assert not caps.renorm and "takes no renorm arguments" in caps.notes["renorm"]


@pytest.mark.parametrize("seed", SEEDS)
def test_the_correct_class_passes_the_core_clauses(
    correct: IsolatedImplementation, seed: int
) -> None:
    report = _check(correct, CORE, seed)
    assert report.conformant and report.counts()["pass"] == 5, report.results


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_the_planted_bug_is_caught_under_its_clause(
    buggy: IsolatedImplementation, seed: int
) -> None:
    report = _check(buggy, "bn.train.output,bn.running.var", seed)
    assert report.outcome("bn.train.output") == "pass", report.results
    assert report.outcome("bn.running.var") == "fail", report.results
    failed = next(r for r in report.results if r.clause_id == "bn.running.var")
    backend = buggy.versions()["keras_backend"]
    assert failed.details["reproduce"].startswith(f"KERAS_BACKEND={backend} normspec check")


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_a_planted_bug_in_a_batchnormalization_subclass_is_caught_on_each_backend(
    backend: str,
) -> None:
    for impl in _on(backend, f"{FIXTURE}:BesselCorrectedBatchNormalization"):
        assert f"on {backend}" in impl.name
        for seed in SEEDS:
            report = _check(impl, "bn.train.output", seed)
            assert report.outcome("bn.train.output") == "fail", (seed, report.results)


def test_a_keras_class_with_renorm_arguments_is_checked_as_renorm_too() -> None:
    """Keras' own BatchNormalization named as a user class: its renorm arguments found."""
    for impl in _on("torch", "keras.layers:BatchNormalization"):
        assert "on torch" in impl.name and impl.capabilities().renorm
        options = CheckOptions(
            profile="tf_keras", clauses="renorm.train.output", dtypes=("float32",), max_examples=5
        )
        report = check_implementation(impl, options)
        assert report.outcome("renorm.train.output") == "pass", report.results


def test_the_recogniser_takes_only_classes() -> None:
    assert _keras.recognise(object(), "keras") is None
    assert _keras.recognise(len, "keras") is None
    assert "keras" not in sys.modules or _keras.recognise(int, "keras") is None
