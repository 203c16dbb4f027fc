"""What one dtype's run of a check raised, as findings (issue 14: verdicts that cannot mislead).

Hypothesis runs with ``report_multiple_bugs=True``: it tells failures apart by exception type
and the place they were raised, shrinks each, and raises them together in an exception
group. Each member becomes one :class:`~normspec.conformance.results.Finding`; the kinds
follow the exception (``ctx.expect`` raises NonFinite or OutOfBound, ``ctx.require``
RequirementNotMet, the guard ImplementationError and its lost-call subclasses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis.errors import FlakyFailure, Unsatisfiable

from normspec.conformance.context import NotOffered, Violation, observed
from normspec.conformance.dtypes import Ulps
from normspec.conformance.guard import ImplementationError, ImplementationLost
from normspec.conformance.results import SEVERITY, Figures, Finding, Outcome
from normspec.conformance.tolerance import Comparison


@dataclass(frozen=True)
class DtypeRun:
    """One dtype's verdict on a clause: its outcome, why (for a skip), and its findings;
    ``refused``: not applicable because the implementation refused what every case of the
    check offers (:class:`~normspec.conformance.context.NotOffered`)."""

    outcome: Outcome
    message: str = ""
    findings: list[Finding] = field(default_factory=list)
    refused: bool = False


@dataclass(frozen=True)
class DtypePart:
    """One dtype's run of a clause's check, with what the clause's result sums over its
    dtypes: the examples, the largest error of the comparisons that passed, the seconds."""

    run: DtypeRun
    examples: int = 0
    worst: Ulps | None = None
    seconds: float = 0.0


def figures(comparison: Comparison) -> Figures:
    """The figures a report shows of a failing comparison."""
    index = comparison.worst_index
    return Figures(
        quantity=comparison.quantity,
        index=None if not index else tuple(index),
        expected=comparison.expected_at_worst,
        actual=comparison.actual_at_worst,
        bound=comparison.bound_at_worst,
        max_abs_error=comparison.max_abs_error,
        max_rel_error=comparison.max_rel_error,
        ulps=comparison.ulps.value,
        ulp_dtype=comparison.ulps.dtype,
    )


def members(problem: BaseException) -> list[BaseException]:
    """The distinct failures in what a run raised: an exception group's members (nested
    groups flattened), else the one exception. A FlakyFailure is one failure: its members
    are the runs of one example."""
    grouped = getattr(problem, "exceptions", None)
    if grouped is None or isinstance(problem, FlakyFailure):
        return [problem]
    return [leaf for member in grouped for leaf in members(member)]


def _lost_call(problem: BaseException) -> ImplementationLost | None:
    """The crash or hang among what a flaky failure grouped (one that did not recur on
    every run of its example: a memory limit reached or not, a hang near the limit)."""
    for member in getattr(problem, "exceptions", ()):
        if isinstance(member, ImplementationLost):
            return member
    return None


def classify(problem: BaseException) -> tuple[Outcome, str, str, BaseException]:
    """``(outcome, kind, message, the exception to take the example from)`` of one failure."""
    if isinstance(problem, Violation):
        return "fail", problem.kind, str(problem), problem
    if isinstance(problem, ImplementationLost):
        return problem.outcome, problem.outcome, str(problem), problem
    if isinstance(problem, FlakyFailure):
        lost = _lost_call(problem)
        if lost is not None:
            message = f"{lost} (not on every run of the example)"
            return lost.outcome, lost.outcome, message, lost
        message = f"the implementation is not deterministic: {problem}"
        return "error", "nondeterministic", message, problem
    if isinstance(problem, ImplementationError):
        return "error", "implementation_error", str(problem), problem
    name = type(problem).__name__
    return "error", "internal_error", f"normspec internal error ({name}: {problem})", problem


def finding(
    problem: BaseException, dtype: str, reproduce: str, seed: int, shrinking: str
) -> Finding:
    """One failure as a finding in ``dtype``, with the example it was raised on."""
    outcome, kind, message, source = classify(problem)
    seen = observed(source)
    comparison = getattr(source, "comparison", None)
    return Finding(
        dtype=dtype,
        outcome=outcome,
        kind=kind,
        message=message,
        example=None if seen is None else seen.example,
        notes={} if seen is None else dict(seen.notes),
        figures=figures(comparison) if isinstance(comparison, Comparison) else None,
        traceback=str(getattr(source, "trace", "") or ""),
        reproduce=reproduce,
        seed=seed,
        shrinking=shrinking,
    )


def dtype_run(
    problem: BaseException | None, make_finding: Callable[[BaseException], Finding]
) -> DtypeRun:
    """The verdict of a dtype whose run raised ``problem`` (``None``: it passed): the worst
    of its findings' outcomes, the findings ordered worst first (stable: else in the order
    Hypothesis reported them, the smallest example first)."""
    if problem is None:
        return DtypeRun("pass")
    if isinstance(problem, NotOffered):
        return DtypeRun("not_applicable", str(problem), refused=True)
    if isinstance(problem, Unsatisfiable):
        return inconclusive(problem)
    found = [make_finding(member) for member in members(problem)]
    found.sort(key=lambda f: -SEVERITY[f.outcome])
    return DtypeRun(found[0].outcome, found[0].message, found)


def inconclusive(problem: BaseException | str) -> DtypeRun:
    """A dtype no example of which was usable."""
    return DtypeRun("skipped", f"inconclusive: no example was usable ({problem})")


def refusals_judged(runs: dict[str, DtypeRun]) -> dict[str, DtypeRun]:
    """``runs`` where a configuration refused in some dtypes only is not applicable in those,
    the clause judged on the others (issue 14: one dtype must not mask the others); refused
    in every dtype that ran, it is the configuration that is not offered, not a dtype: those
    runs are inconclusive, as a probe treats a chapter failing in every dtype."""
    if any(run.outcome not in ("not_applicable", "skipped") for run in runs.values()):
        return runs
    return {d: inconclusive(run.message) if run.refused else run for d, run in runs.items()}


__all__ = [
    "DtypePart",
    "DtypeRun",
    "dtype_run",
    "figures",
    "finding",
    "inconclusive",
    "members",
    "refusals_judged",
]
