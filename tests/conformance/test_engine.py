"""The engine's own behaviour: outcomes, misbehaving implementations, ordering, options."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from normspec.adapters.protocol import Capabilities, LayerConfig
from normspec.adapters.reference import ReferenceImplementation, ReferenceLayer
from normspec.conformance.runner import CheckOptions, OptionsError, check_implementation

FAST = {"max_examples": 8}


class Wrapped(ReferenceImplementation):
    """The reference with one layer method replaced, to simulate a misbehaving library."""

    def __init__(self, method: str, replacement, caps: Capabilities | None = None) -> None:
        super().__init__("torch")
        self.name = f"reference with a bad {method}"
        self._method, self._replacement, self._caps = method, replacement, caps

    def capabilities(self) -> Capabilities:
        return self._caps or super().capabilities()

    def build(self, config: LayerConfig) -> ReferenceLayer:
        layer = super().build(config)
        original = getattr(layer, self._method)
        setattr(layer, self._method, lambda *a, **k: self._replacement(original, *a, **k))
        return layer


def run(impl, clauses: str, **options) -> object:
    return check_implementation(
        impl, CheckOptions(profile="torch", clauses=clauses, **{**FAST, **options})
    )


@pytest.mark.parametrize("profile", ["paper", "torch", "keras", "flax"])
def test_reference_is_conformant_under_every_profile(profile: str) -> None:
    report = check_implementation(
        ReferenceImplementation(profile), CheckOptions(profile=profile, max_examples=10)
    )
    assert report.conformant, [r for r in report.results if r.outcome != "pass"]
    not_passed = {r.clause_id: r.outcome for r in report.results if r.outcome != "pass"}
    assert set(not_passed.values()) <= {"not_applicable"}
    dialect = ReferenceImplementation(profile).dialect
    bn_not_passed = {c for c in not_passed if not c.startswith(("renorm.", "ghost."))}
    assert bn_not_passed == (set() if dialect.cumulative_average else {"bn.running.cumulative"})
    if dialect.renorm is None:
        assert all(
            r.outcome == "not_applicable"
            for r in report.results
            if r.clause_id.startswith("renorm.")
        )
    ghost = {r.outcome for r in report.results if r.clause_id.startswith("ghost.")}
    assert ghost == ({"not_applicable"} if dialect.ghost is None else {"pass"})


def test_an_implementation_that_raises_is_an_error_and_the_run_goes_on() -> None:
    def boom(original, x):
        raise RuntimeError("kernel exploded")

    report = run(Wrapped("train_step", boom), "bn.train.output,bn.infer.output")
    assert report.outcome("bn.train.output") == "error"
    assert "kernel exploded" in report.results[0].message
    assert report.outcome("bn.infer.output") == "pass"
    assert not report.conformant


def test_a_hanging_implementation_in_process_is_reported_and_not_called_again() -> None:
    def hang(original, x):
        time.sleep(60)
        return original(x)

    started = time.perf_counter()
    report = run(Wrapped("train_step", hang), "bn.train.output,bn.infer.output", timeout=0.2)
    assert report.outcome("bn.train.output") == "hung"
    assert "hung after 0.2 s (a call to train_step" in report.results[0].message
    assert report.results[0].details["reproduce"].endswith("--timeout 0.2 --in-process")
    assert report.outcome("bn.infer.output") == "error"  # its thread is still stuck
    assert "not checked: a call of an earlier clause hung" in report.results[1].message
    assert time.perf_counter() - started < 30  # the 60 s call was abandoned, not awaited


def test_nan_where_the_reference_is_finite_fails() -> None:
    def nan_first(original, x):
        y = original(x)
        y.flat[0] = np.nan
        return y

    report = run(Wrapped("train_step", nan_first), "bn.train.output")
    result = report.results[0]
    assert result.outcome == "fail"
    assert "non-finite" in result.message
    assert result.details["example"]["shape"]
    assert result.details["reproduce"].startswith("normspec check")


def test_a_wrong_output_shape_fails_with_the_reason() -> None:
    report = run(Wrapped("infer", lambda original, x: original(x)[:1]), "bn.infer.output")
    assert report.outcome("bn.infer.output") == "fail"
    assert "shape" in report.results[0].message


def test_missing_capabilities_are_not_applicable_never_pass() -> None:
    caps = replace(ReferenceImplementation("torch").capabilities(), backward=False, untracked=False)
    report = run(Wrapped("infer", lambda o, x: o(x), caps), "bn.backward.*,bn.infer.untracked")
    assert {r.outcome for r in report.results} == {"not_applicable"}
    assert report.conformant


def test_dependents_of_a_failed_clause_are_skipped() -> None:
    report = run(Wrapped("train_step", lambda o, x: o(x) * 1.01), "bn.train.output,bn.backward.*")
    assert report.outcome("bn.train.output") == "fail"
    assert report.outcome("bn.backward.train.dx") == "skipped"
    assert report.outcome("bn.backward.infer") == "pass"


def test_failures_shrink_to_a_small_example() -> None:
    report = run(
        Wrapped("train_step", lambda o, x: o(x) * 1.01), "bn.train.output", max_examples=40
    )
    example = report.results[0].details["example"]
    assert int(np.prod(example["shape"])) <= 4


def test_the_same_seed_gives_the_same_report() -> None:
    """(Where shrinking ran to its end: a shrink cut short by --shrink-seconds stops wherever
    the clock says, and its report says so.)"""
    bad = Wrapped("train_step", lambda o, x: o(x) * (1 + 1e-3 * (x.size > 6)))
    options = {"seed": 3, "max_examples": 30, "shrink_seconds": 300.0}
    first = run(bad, "bn.train.output", **options).results[0]
    second = run(bad, "bn.train.output", **options).results[0]
    assert first.outcome == second.outcome == "fail"
    assert "shrinking" not in first.details
    assert first.details["example"] == second.details["example"]


class Recording(ReferenceImplementation):
    """The reference, recording the input shape of every training step per dtype."""

    def __init__(self) -> None:
        super().__init__("torch")
        self.shapes: dict[str, list[tuple[int, ...]]] = {}

    def build(self, config: LayerConfig) -> ReferenceLayer:
        layer = super().build(config)
        original = layer.train_step

        def train_step(x: np.ndarray) -> np.ndarray:
            self.shapes.setdefault(config.dtype, []).append(np.shape(x))
            return original(x)

        layer.train_step = train_step  # type: ignore[method-assign]
        return layer


def test_each_dtype_draws_its_own_examples_and_alone_draws_them_again() -> None:
    """The per-dtype runs of a check have seeds of their own (not the same shapes in every
    dtype); a run of one dtype alone, as the reproduce command makes it, repeats its draws."""
    both = Recording()
    run(both, "bn.train.output", dtypes=("float64", "float32"), max_examples=16)
    assert both.shapes["float64"] != both.shapes["float32"]
    alone = Recording()
    run(alone, "bn.train.output", dtypes=("float32",), max_examples=8)
    assert alone.shapes["float32"] == both.shapes["float32"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profile": "nope"}, "unknown profile"),
        ({"dtypes": ("float8",)}, "unknown dtype"),
        ({"clauses": "zz.*"}, "matches no checked clause"),
    ],
)
def test_bad_options_raise_options_error(options: dict, message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        check_implementation(ReferenceImplementation("torch"), CheckOptions(**options))


def test_clauses_are_ordered_by_dependency() -> None:
    report = check_implementation(
        ReferenceImplementation("torch"), CheckOptions(profile="torch", max_examples=2)
    )
    order = [r.clause_id for r in report.results]
    assert order.index("bn.train.output") < order.index("bn.backward.train.dx")
    assert order.index("bn.train.statistics") < order.index("bn.running.mean")


def test_a_ctrl_c_behind_an_exception_interrupts_the_run_and_is_no_outcome() -> None:
    def interrupted(original, x):
        raise KeyboardInterrupt  # as a Ctrl-C forwarded by the implementation

    report = run(Wrapped("train_step", interrupted), "bn.train.output,bn.infer.output")
    assert report.interrupted
    assert report.results == []


def test_an_exception_raised_while_handling_a_ctrl_c_counts_as_the_ctrl_c() -> None:
    from normspec.conformance.runner import _caused_by_interrupt

    def raise_during_interrupt() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TypeError("cannot nest BaseExceptions in an ExceptionGroup") from None

    with pytest.raises(TypeError) as caught:
        raise_during_interrupt()
    assert _caused_by_interrupt(caught.value)  # its context is the Ctrl-C (from None hides it)
    assert not _caused_by_interrupt(ValueError("plain"))


def test_the_running_sequence_repeats_the_first_batch_shape_and_varies_it() -> None:
    """bn.running.sequence drives each layer mostly with one batch shape (a compiling
    implementation compiles once per shape) and with other shapes too (a last, smaller
    batch): both must occur."""
    shapes_per_layer: list[list[tuple[int, ...]]] = []

    class Recording(ReferenceImplementation):
        def build(self, config: LayerConfig) -> ReferenceLayer:
            layer = super().build(config)
            seen: list[tuple[int, ...]] = []
            shapes_per_layer.append(seen)
            step = layer.train_step
            layer.train_step = lambda x: (seen.append(x.shape), step(x))[1]  # type: ignore[method-assign]
            return layer

    report = run(Recording("torch"), "bn.running.sequence", max_examples=20)
    assert report.outcome("bn.running.sequence") == "pass"
    # per step after the first (whole sequences depend on how many steps were drawn, and
    # Hypothesis mixes the constants of every loaded module into its draws)
    later = [shape == s[0] for s in shapes_per_layer for shape in s[1:]]
    assert any(later), "no step trained on the first batch's shape again"
    assert not all(later), "no step trained on another batch shape"


def test_expectations_hide_themselves_from_pytest_tracebacks(tmp_path: Path) -> None:
    """A check that fails inside a user's pytest run shows the check, not normspec's
    expect/require (``__tracebackhide__``)."""
    (tmp_path / "test_user.py").write_text(
        "from normspec.conformance.context import CheckContext\n"
        "def test_it():\n"
        "    ctx = CheckContext.__new__(CheckContext)\n"
        "    ctx.require(1 + 1 == 3, 'arithmetic broke')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "RequirementNotMet: arithmetic broke" in done.stdout
    assert "ctx.require(1 + 1 == 3" in done.stdout
    assert "context.py" not in done.stdout
