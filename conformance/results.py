"""Outcomes of a check run: per clause, and the whole report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["pass", "fail", "error", "not_applicable", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "error", "not_applicable", "skipped")


@dataclass
class ClauseResult:
    """What checking one clause found.

    ``details`` holds, for a failure or error, the minimal example (``example``), the
    comparison (``comparison``: expected, actual, errors in absolute, relative and ulps)
    and the command that reproduces it (``reproduce``).
    """

    clause_id: str
    level: str
    summary: str
    outcome: Outcome
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "clause": self.clause_id,
            "level": self.level,
            "summary": self.summary,
            "outcome": self.outcome,
            "message": self.message,
            "examples": self.examples,
            "seconds": round(self.seconds, 4),
            "details": self.details,
        }


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
    results: list[ClauseResult] = field(default_factory=list)
    interrupted: bool = False

    def outcome(self, clause_id: str) -> Outcome:
        """The outcome of one clause; ``KeyError`` if it was not checked."""
        for result in self.results:
            if result.clause_id == clause_id:
                return result.outcome
        raise KeyError(clause_id)

    def failed_clauses(self) -> set[str]:
        return {r.clause_id for r in self.results if r.outcome in ("fail", "error")}

    def counts(self) -> dict[str, int]:
        return {name: sum(r.outcome == name for r in self.results) for name in OUTCOMES}

    @property
    def conformant(self) -> bool:
        """No MUST clause failed, errored or was skipped behind a failure."""
        return not any(
            r.level == "MUST" and r.outcome in ("fail", "error", "skipped") for r in self.results
        )
