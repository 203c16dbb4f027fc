"""Outcomes of a check run: per clause, and the whole report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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


@dataclass
class ClauseResult:
    """What checking one clause found.

    ``details`` holds, for a failure, error, crash or hang, the minimal example
    (``example``), the comparison (``comparison``: expected, actual, errors in absolute,
    relative and ulps), the implementation's traceback or the end of its worker's output
    (``traceback``) and the command that reproduces it (``reproduce``).

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
    details: dict[str, Any] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0
    deviation: dict[str, str] | None = None

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
        }
        if self.deviation is not None:
            document["deviation"] = dict(self.deviation)
        return document

    @property
    def failing(self) -> bool:
        """Whether this result makes a run non-conformant at a MUST level.

        A fail, an error, a crash or a hang, or a skip behind one; never a declared
        deviation or a skip behind a declared deviation.
        """
        if self.outcome in PROBLEMS:
            return True
        return self.outcome == "skipped" and self.deviation is None


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
