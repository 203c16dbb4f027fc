"""Outcomes of a check run: per clause, and the whole report."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from normspec.conformance.dtypes import Ulps

#: ``crashed``: a call on an example killed the implementation's worker process (a signal,
#: an exit, its memory limit); ``hung``: a call did not return within the time limit.
#: ``declared``: the clause failed, errored, crashed or hung, and the implementation's
#: deviation file lists it (an intended divergence or a known bug); it does not make the run
#: non-conformant.
Outcome = Literal[
    "pass", "fail", "error", "crashed", "hung", "not_applicable", "skipped", "declared"
]
OUTCOMES: tuple[Outcome, ...] = (
    "pass",
    "fail",
    "error",
    "crashed",
    "hung",
    "not_applicable",
    "skipped",
    "declared",
)
#: The outcomes of a clause the implementation did not meet (a deviation file may declare).
PROBLEMS: tuple[Outcome, ...] = ("fail", "error", "crashed", "hung")


def plain_versions(versions: Mapping[Any, Any]) -> dict[str, str]:
    """A library's versions as built-in strings, whatever types it reported them in (torch's
    ``TorchVersion`` is a ``str`` subclass that crosses no process boundary but Python's)."""
    return {str(name): str(version) for name, version in versions.items()}


#: How severe an outcome is, for the summary of a clause over its dtypes (the worst).
SEVERITY: dict[str, int] = {
    "not_applicable": 0,
    "pass": 1,
    "skipped": 2,
    "fail": 3,
    "error": 4,
    "hung": 5,
    "crashed": 6,
}


def worst_outcome(outcomes: Iterable[Outcome]) -> Outcome:
    """The most severe of ``outcomes`` (:data:`SEVERITY`); ``pass`` where there are none."""
    return max(outcomes, key=SEVERITY.__getitem__, default="pass")


#: How a finding broke its clause: a value outside its bound, a non-finite result where the
#: reference is finite, a requirement not met (a state, an exception that should have been
#: raised, a shape), an exception of the implementation, a crash or a hang, a result that
#: changed between runs of one example, or an error of normspec itself.
KINDS: tuple[str, ...] = (
    "out_of_bound",
    "non_finite",
    "requirement_not_met",
    "implementation_error",
    "crashed",
    "hung",
    "nondeterministic",
    "internal_error",
)


@dataclass(frozen=True)
class Figures:
    """The comparison a failure was found by: where the error most exceeds its bound, the
    values and the bound there, the largest errors, and the error in ulps of ``ulp_dtype``
    at the expected value (:class:`~normspec.conformance.dtypes.Ulps`)."""

    quantity: str
    index: tuple[int, ...] | None
    expected: float | None
    actual: float | None
    bound: float | None
    max_abs_error: float
    max_rel_error: float
    ulps: float
    ulp_dtype: str

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["index"] = None if self.index is None else list(self.index)
        return document

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Figures:
        """Figures from their JSON form (non-finite numbers spelt "nan", "inf", "-inf")."""

        def number(name: str) -> float | None:
            value = raw.get(name)
            return None if value is None else float(value)

        index = raw.get("index")
        return cls(
            quantity=str(raw.get("quantity", "")),
            index=None if index is None else tuple(int(i) for i in index),
            expected=number("expected"),
            actual=number("actual"),
            bound=number("bound"),
            max_abs_error=float(raw.get("max_abs_error", math.nan)),
            max_rel_error=float(raw.get("max_rel_error", math.nan)),
            ulps=float(raw.get("ulps", math.nan)),
            ulp_dtype=str(raw.get("ulp_dtype", "")),
        )


@dataclass(frozen=True)
class Finding:
    """One distinct failure of a clause: in one dtype, of one kind (a value outside its
    bound, a non-finite result, a requirement not met, an exception, a crash, a hang), with
    its minimal example and the command that reproduces it."""

    dtype: str
    outcome: Outcome
    kind: str
    message: str
    example: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    figures: Figures | None = None
    #: the implementation's traceback, or the end of its worker's output
    traceback: str = ""
    reproduce: str = ""
    seed: int | None = None
    #: why the example may not be minimal ("" where shrinking ran to its end)
    shrinking: str = ""

    def to_json(self) -> dict[str, Any]:
        """The finding as the ``details`` of the JSON report name its parts."""
        document: dict[str, Any] = {"dtype": self.dtype, "outcome": self.outcome}
        document["kind"] = self.kind
        document["message"] = self.message
        if self.example is not None:
            document["example"] = self.example
        if self.notes:
            document["notes"] = dict(self.notes)
        if self.figures is not None:
            document["comparison"] = self.figures.to_json()
        if self.traceback:
            document["traceback"] = self.traceback
        if self.seed is not None:
            document["seed"] = self.seed
        if self.reproduce:
            document["reproduce"] = self.reproduce
        if self.shrinking:
            document["shrinking"] = self.shrinking
        return document

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Finding:
        """A finding from its JSON form (:meth:`to_json`; a report's ``details`` of before
        findings: its dtype and kind unknown, "")."""
        comparison = raw.get("comparison")
        return cls(
            dtype=raw.get("dtype", ""),
            outcome=raw.get("outcome", "fail"),
            kind=raw.get("kind", ""),
            message=raw.get("message", ""),
            example=raw.get("example"),
            notes=dict(raw.get("notes", {})),
            figures=None if comparison is None else Figures.from_json(comparison),
            traceback=raw.get("traceback", ""),
            reproduce=raw.get("reproduce", ""),
            seed=raw.get("seed"),
            shrinking=raw.get("shrinking", ""),
        )


@dataclass
class ClauseResult:
    """What checking one clause found, per dtype and in all.

    ``dtype_outcomes`` is the verdict in each dtype checked (a clause is skipped in a dtype
    where a clause it depends on did not pass in that dtype); ``outcome`` is the worst of
    them (:data:`SEVERITY`). ``findings`` holds every distinct failure, each with its minimal
    example, figures and reproduce command: at least one per failing dtype, and one per kind
    where a dtype fails in several ways; ``message`` is the first one's (or why the clause
    was skipped or not applicable). ``worst`` is the largest error in ulps among the
    comparisons that passed (``None``: no numeric comparison).

    ``deviation`` is set when a deviation file covers the clause: for a ``declared`` result
    ``{"category", "reason", "outcome", "source"}`` with the outcome the check had (one of
    :data:`PROBLEMS`); for a ``skipped`` result behind a declared clause ``{"category", "reason",
    "outcome": "skipped", "source", "behind"}`` (such a skip does not fail the run).
    """

    clause_id: str
    level: str
    summary: str
    outcome: Outcome
    message: str = ""
    findings: list[Finding] = field(default_factory=list)
    dtype_outcomes: dict[str, Outcome] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0
    deviation: dict[str, str] | None = None
    worst: Ulps | None = None

    @property
    def finding(self) -> Finding | None:
        """The first finding (the one a terminal shows in full), if any."""
        return self.findings[0] if self.findings else None

    @property
    def details(self) -> dict[str, Any]:
        """The first finding as the JSON report's ``details`` (its parts by name)."""
        return {} if self.finding is None else self.finding.to_json()

    def problem_json(self) -> dict[str, Any]:
        """What a failure's text in a file shows: the first finding's parts by name and, where
        there are several dtypes or findings, the outcome per dtype and every finding."""
        document = self.details
        if len(self.dtype_outcomes) > 1:
            document["dtypes"] = dict(self.dtype_outcomes)
        if len(self.findings) > 1:
            document["findings"] = [finding.to_json() for finding in self.findings]
        return document

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "clause": self.clause_id,
            "level": self.level,
            "summary": self.summary,
            "outcome": self.outcome,
            "message": self.message,
            "examples": self.examples,
            "seconds": round(self.seconds, 4),
            "details": self.details,
            "dtypes": dict(self.dtype_outcomes),
            "findings": [finding.to_json() for finding in self.findings],
        }
        if self.worst is not None:
            document["worst_ulps"] = {"ulps": self.worst.value, "ulp_dtype": self.worst.dtype}
        if self.deviation is not None:
            document["deviation"] = dict(self.deviation)
        return document

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ClauseResult:
        """A result from its JSON form (:meth:`to_json`), as the pytest plugin's workers send it."""
        worst = raw.get("worst_ulps")
        return cls(
            clause_id=raw["clause"],
            level=raw["level"],
            summary=raw["summary"],
            outcome=raw["outcome"],
            message=raw.get("message", ""),
            findings=[Finding.from_json(f) for f in _raw_findings(raw)],
            dtype_outcomes=dict(raw.get("dtypes", {})),
            examples=int(raw.get("examples", 0)),
            seconds=float(raw.get("seconds", 0.0)),
            deviation=raw.get("deviation"),
            worst=None if worst is None else Ulps(float(worst["ulps"]), worst["ulp_dtype"]),
        )

    @property
    def failing(self) -> bool:
        """Whether this result makes a run non-conformant at a MUST level.

        A fail, an error, a crash or a hang, or a skip behind one; never a declared
        deviation or a skip behind a declared deviation.
        """
        if self.outcome in PROBLEMS:
            return True
        return self.outcome == "skipped" and self.deviation is None


def _raw_findings(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """A JSON result's findings; for a report of before findings, its ``details`` as one."""
    if "findings" in raw:
        return list(raw["findings"])
    details = raw.get("details") or {}
    if not details:
        return []
    return [{"outcome": raw["outcome"], "message": raw.get("message", ""), **details}]


@dataclass
class Report:
    """The result of checking one implementation under one profile."""

    implementation: str
    target: str
    profile: str
    dtypes: tuple[str, ...]
    seed: int
    max_examples: int
    versions: dict[str, str]
    environment: dict[str, str]
    normspec_version: str
    spec_version: str
    started: str
    seconds: float = 0.0
    #: entries per dtype of the settings menu cases were drawn from (0: drawn freely)
    menu: int = 0
    #: the profile file the profile was read from (``None``: a built-in profile)
    profile_source: str | None = None
    #: where the implementation's calls ran: ``in-process``, or ``in a worker process (...)``
    #: (conformance.isolation)
    isolation: str = "in-process"
    #: the processes the run's work was spread over (conformance.lanes; the results are the
    #: same for any number)
    processes: int = 1
    results: list[ClauseResult] = field(default_factory=list)
    interrupted: bool = False
    #: Things a reader should know that are not clause outcomes, e.g. a deviation-file entry
    #: that matches no clause, or a declared deviation that now passes.
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.versions = plain_versions(self.versions)

    @property
    def profile_label(self) -> str:
        """The profile as reports name it: its name, and the file it came from."""
        if self.profile_source is None:
            return self.profile
        return f"{self.profile} (profile file {self.profile_source})"

    def outcome(self, clause_id: str) -> Outcome:
        """The outcome of one clause; ``KeyError`` if it was not checked."""
        for result in self.results:
            if result.clause_id == clause_id:
                return result.outcome
        raise KeyError(clause_id)

    @property
    def menu_note(self) -> str:
        """What a reader needs to know about the settings menu ("" without one)."""
        if not self.menu:
            return ""
        return (
            f"settings from a menu of {self.menu} per dtype (compilation budget; --menu 0 "
            "draws them freely)"
        )

    def failed_clauses(self) -> set[str]:
        return {r.clause_id for r in self.results if r.outcome in PROBLEMS}

    def counts(self) -> dict[str, int]:
        return {name: sum(r.outcome == name for r in self.results) for name in OUTCOMES}

    @property
    def conformant(self) -> bool:
        """No MUST clause failed, errored, crashed, hung or was skipped behind one.

        Declared deviations (and skips behind them) do not count against conformance.
        """
        return not any(r.level == "MUST" and r.failing for r in self.results)

    @property
    def verdict(self) -> str:
        """``not conformant``, ``conformant``, or ``nothing applicable`` where no clause
        applied (every one not applicable or skipped): conformant then, but vacuously."""
        if not self.conformant:
            return "not conformant"
        if all(r.outcome in ("not_applicable", "skipped") for r in self.results):
            return "nothing applicable"
        return "conformant"
