"""Examples answered from memory (conformance.repeats): only where the ending is sure to be
the same, with the same exception and context, and never in a failure's final replay."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import traceback
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from test_engine import Wrapped

from normspec.conformance import repeats as repeats_module
from normspec.conformance.context import RequirementNotMet
from normspec.conformance.guard import ImplementationCrashed, ImplementationError
from normspec.conformance.repeats import Repeats, Unlike, fingerprint
from normspec.conformance.runner import CheckOptions, check_implementation


def digest(value: object) -> bytes:
    into = hashlib.blake2b(digest_size=16)
    fingerprint(value, into)
    return into.digest()


@dataclasses.dataclass
class Pair:
    first: Any
    second: Any


def test_fingerprints_tell_apart_what_a_check_could() -> None:
    x = np.arange(6.0).reshape(2, 3)
    different = [
        x,
        x.astype(np.float32),
        x.T.copy().T,  # the same values, column-major strides
        x.reshape(3, 2),
        np.where(x == 0, -0.0, x),
        [0.1, 0.2],
        (0.1, 0.2),
        [0.1, 0.30000000000000004],
        Pair(x, 1),
        Pair(x, 1.0),
        {"a": 1},
        {"a": 2},
        np.float32(0.1),
        0.1,
    ]
    digests = [digest(value) for value in different]
    assert len(set(digests)) == len(different)
    assert digest(Pair(x.copy(), [1, 2])) == digest(Pair(x, [1, 2]))
    with pytest.raises(Unlike):
        digest([1, object()])  # shown by its address, which another object may take


class FakeData:
    """Hypothesis's ``data`` drawing preset values."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, strategy: Any, label: Any = None) -> Any:
        return self.values.pop(0)


@pytest.fixture
def final(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """Whether the example being run is Hypothesis's final replay of a failure."""
    context = SimpleNamespace(is_final=False)
    monkeypatch.setattr(repeats_module, "current_build_context", lambda: context)
    yield context


def context() -> SimpleNamespace:
    return SimpleNamespace(built=0, refused=0, case=None, notes={})


class Check:
    """A check body: draws, calls (telling ``repeats``), optionally draws again, ends."""

    def __init__(self, repeats: Repeats, *, draw_after: bool = False, ending: Any = None):
        self.repeats, self.draw_after, self.ending = repeats, draw_after, ending
        self.calls = 0

    def __call__(self, ctx: Any, data: Any) -> None:
        value = data.draw(None)
        ctx.case = f"case {value}"
        self.repeats.calling()
        self.calls += 1
        ctx.built += 1
        ctx.notes["value"] = value
        if self.draw_after:
            data.draw(None)
        if self.ending is not None:
            raise self.ending


def test_an_example_drawing_what_an_earlier_one_drew_ends_as_it_did(final) -> None:
    repeats = Repeats()
    problem = RequirementNotMet("wrong")
    check, ctx = Check(repeats, ending=problem), context()
    with pytest.raises(RequirementNotMet) as first:
        repeats.run(ctx, FakeData(1), check)
    origin = traceback.extract_tb(first.value.__traceback__)[-1]
    ctx.case, ctx.notes = None, {}
    with pytest.raises(RequirementNotMet) as again:
        repeats.run(ctx, FakeData(1), check)
    assert check.calls == 1 and repeats.answered == 1
    assert again.value is problem
    assert again.value.__context__ is None  # Hypothesis tells failures apart by their context
    assert traceback.extract_tb(again.value.__traceback__)[-1] == origin
    assert (ctx.case, ctx.notes, ctx.built) == ("case 1", {"value": 1}, 2)
    repeats.run(ctx, FakeData(2), Check(repeats))  # other draws: run
    assert repeats.answered == 1


def test_a_pass_is_remembered_too(final) -> None:
    repeats = Repeats()
    check, ctx = Check(repeats), context()
    for _ in range(3):
        repeats.run(ctx, FakeData(5), check)
    assert (check.calls, repeats.answered, ctx.built) == (1, 2, 3)


SHOWN_BY_ADDRESS = object()


@pytest.mark.parametrize(
    ("why", "drawn", "options"),
    [
        ("drew after its first call", 1, {"draw_after": True}),
        ("drew what no fingerprint tells apart", SHOWN_BY_ADDRESS, {}),
        ("crashed", 1, {"ending": ImplementationCrashed("train_step", "gone")}),
        ("raised what no check raises", 1, {"ending": KeyError("bug")}),
    ],
)
def test_an_example_whose_ending_could_differ_is_run_again(final, why, drawn, options) -> None:
    repeats = Repeats()
    check, ctx = Check(repeats, **options), context()
    for _ in range(2):
        with contextlib.suppress(ImplementationError, KeyError):
            repeats.run(ctx, FakeData(drawn, 2), check)
    assert (check.calls, repeats.answered) == (2, 0), why


def test_an_example_with_a_refused_configuration_is_run_again(final) -> None:
    repeats = Repeats()
    check, ctx = Check(repeats), context()

    def refusing(ctx: Any, data: Any) -> None:
        check(ctx, data)
        ctx.refused += 1

    for _ in range(2):
        repeats.run(ctx, FakeData(1), refusing)
    assert (check.calls, repeats.answered) == (2, 0)


def test_the_final_replay_of_a_failure_always_calls(final) -> None:
    repeats = Repeats()
    check, ctx = Check(repeats, ending=RequirementNotMet("wrong")), context()
    for is_final in (False, True):
        final.is_final = is_final
        with pytest.raises(RequirementNotMet):
            repeats.run(ctx, FakeData(1), check)
    assert (check.calls, repeats.answered) == (2, 0)


def wrong_beyond_six_values(original, x):
    return original(x) * (1 + 1e-3 * (x.size > 6))


def test_a_check_reports_the_same_with_fewer_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shrink on a real check: the same result, example and example count as without
    answers from memory, with fewer calls into the implementation."""
    options = CheckOptions(profile="torch", clauses="bn.train.output", max_examples=40)

    def checked() -> tuple[Any, int]:
        calls = []

        def counted(original, x):
            calls.append(1)
            return wrong_beyond_six_values(original, x)

        (result,) = check_implementation(Wrapped("train_step", counted), options).results
        return result, len(calls)

    remembered, fewer = checked()
    monkeypatch.setattr(Repeats, "calling", lambda self: None)
    result, calls = checked()
    assert remembered.outcome == result.outcome == "fail"
    assert remembered.findings == result.findings
    assert remembered.examples == result.examples
    assert fewer < calls
