"""Deviation files: the clauses a library knowingly breaks, each with a reason and a category.

A library author keeps such a file in their repository; ``normspec check --deviations FILE``,
``normspec report --deviations FILE`` and the pytest plugin (``--normspec-deviations FILE``)
read it with :func:`load_deviations`. A listed clause that fails, errors, crashes or hangs is
reported as *declared* (its own outcome, with the reason and category) and does not fail the
run; a clause skipped only because it depends on a declared one does not fail the run either. An
entry that matches no clause of the specification, or a declared clause that now passes, is
warned about.

The file is TOML (or JSON, with the same structure, when its name ends in ``.json``)::

    # normspec-deviations.toml
    [[deviation]]
    clause = "bn.params.invalid"          # a clause ID, or a pattern such as "bn.params.*"
    category = "known_bug"                # or "intended_divergence"
    reason = "momentum outside [0, 1] is accepted (mylib#123)"
    # optional: only under these profiles / only for these targets (normspec report)
    profiles = ["torch"]
    targets = ["mylib.layers:BatchNorm"]
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normspec import spec
from normspec.conformance.results import PROBLEMS, ClauseResult, Report

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Category = Literal["intended_divergence", "known_bug"]
CATEGORIES: tuple[Category, ...] = ("intended_divergence", "known_bug")
CATEGORY_TITLES: dict[str, str] = {
    "intended_divergence": "intended divergence",
    "known_bug": "known bug",
}
_CATEGORY_SPELLINGS: dict[str, Category] = {
    "intended_divergence": "intended_divergence",
    "intended": "intended_divergence",
    "divergence": "intended_divergence",
    "known_bug": "known_bug",
    "bug": "known_bug",
}
_ENTRY_KEYS = {"clause", "category", "reason", "profiles", "targets"}


class DeviationFileError(ValueError):
    """A deviation file that cannot be read or is malformed: a usage error."""


@dataclass(frozen=True)
class Deviation:
    """One entry: a clause ID (or glob pattern), its category and the reason."""

    clause: str
    category: Category
    reason: str
    profiles: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    source: str = ""

    def matches(self, clause_id: str) -> bool:
        return fnmatch.fnmatchcase(clause_id, self.clause)

    def applies_to(self, target: str | None, profile: str | None) -> bool:
        if self.profiles and profile is not None and profile not in self.profiles:
            return False
        return not (self.targets and target is not None and target not in self.targets)


@dataclass(frozen=True)
class DeviationSet:
    """The entries of one or more deviation files."""

    entries: tuple[Deviation, ...] = ()
    sources: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __add__(self, other: DeviationSet) -> DeviationSet:
        return DeviationSet(self.entries + other.entries, self.sources + other.sources)

    def for_run(self, target: str | None, profile: str | None) -> DeviationSet:
        """The entries that apply to ``target`` checked under ``profile``."""
        return DeviationSet(
            tuple(e for e in self.entries if e.applies_to(target, profile)), self.sources
        )

    def find(self, clause_id: str) -> Deviation | None:
        """The first entry that covers ``clause_id``."""
        return next((e for e in self.entries if e.matches(clause_id)), None)

    def unmatched_warnings(self, clause_ids: Iterable[str] | None = None) -> list[str]:
        """One warning per entry that matches no clause of the specification."""
        ids = list(clause_ids) if clause_ids is not None else [c.id for c in spec.clauses()]
        return [
            f"deviation file {e.source}: entry {e.clause!r} matches no clause of the "
            f"specification (`normspec spec` lists them)"
            for e in self.entries
            if not any(e.matches(i) for i in ids)
        ]


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DeviationFileError(f"{where}: {key!r} must be a string or a list of strings")


def _entry(raw: Any, where: str, source: str) -> Deviation:
    if not isinstance(raw, dict):
        raise DeviationFileError(f"{where}: an entry must be a table with clause, category, reason")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise DeviationFileError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})"
        )
    clause, category, reason = raw.get("clause"), raw.get("category"), raw.get("reason")
    if not isinstance(clause, str) or not clause.strip():
        raise DeviationFileError(f"{where}: 'clause' must be a clause ID such as bn.train.output")
    if not isinstance(reason, str) or not reason.strip():
        raise DeviationFileError(f"{where} ({clause}): 'reason' must be a non-empty string")
    if not isinstance(category, str):
        raise DeviationFileError(
            f"{where} ({clause}): 'category' must be one of {', '.join(CATEGORIES)}"
        )
    canonical = _CATEGORY_SPELLINGS.get(
        category.strip().lower().replace("-", "_").replace(" ", "_")
    )
    if canonical is None:
        raise DeviationFileError(
            f"{where} ({clause}): unknown category {category!r} (known: {', '.join(CATEGORIES)})"
        )
    return Deviation(
        clause=clause.strip(),
        category=canonical,
        reason=" ".join(reason.split()),
        profiles=_strings(raw.get("profiles", []), where, "profiles"),
        targets=_strings(raw.get("targets", []), where, "targets"),
        source=source,
    )


def parse_deviations(document: Any, source: str) -> DeviationSet:
    """The entries of a parsed deviation document (the ``deviation`` array of tables)."""
    if not isinstance(document, dict):
        raise DeviationFileError(f"{source}: expected a table with a 'deviation' array")
    unknown = sorted(set(document) - {"deviation"})
    if unknown:
        raise DeviationFileError(
            f"{source}: unknown top-level key {unknown[0]!r} (expected [[deviation]] entries)"
        )
    raw_entries = document.get("deviation", [])
    if not isinstance(raw_entries, list):
        raise DeviationFileError(f"{source}: 'deviation' must be an array of tables")
    entries = tuple(
        _entry(raw, f"{source}: deviation {number}", source)
        for number, raw in enumerate(raw_entries, start=1)
    )
    return DeviationSet(entries, (source,))


def load_deviations(paths: str | Path | Sequence[str | Path] | None) -> DeviationSet:
    """Read one or more deviation files (TOML; JSON for ``*.json``); ``None``: none."""
    if paths is None:
        return DeviationSet()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    combined = DeviationSet()
    for path in paths:
        location = Path(path)
        try:
            text = location.read_text(encoding="utf-8")
        except OSError as problem:
            raise DeviationFileError(
                f"cannot read deviation file {str(path)!r}: {problem.strerror or problem}"
            ) from None
        try:
            if location.suffix.lower() == ".json":
                document = json.loads(text)
            else:
                document = tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as problem:
            first_line = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
            raise DeviationFileError(
                f"deviation file {str(path)!r} is not valid "
                f"{'JSON' if location.suffix.lower() == '.json' else 'TOML'}: {first_line}"
            ) from None
        combined = combined + parse_deviations(document, str(path))
    return combined


@dataclass
class DeviationApplier:
    """Applies a deviation set to the results of one run, clause by clause, in run order.

    Call it on each :class:`ClauseResult` as it arrives (the runner's ``progress`` callback,
    before the result is printed), then :meth:`finish` on the report for the warnings.
    The runner still skips the dependents of a declared clause (their checks build on the
    behaviour the deviation describes); such a skip is annotated and does not fail the run.
    """

    deviations: DeviationSet
    dependencies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _outcomes: dict[str, ClauseResult] = field(default_factory=dict)
    _covered: dict[str, str] = field(default_factory=dict)  # skipped clause -> declared root

    def __post_init__(self) -> None:
        if not self.dependencies:
            from normspec.conformance.checks import load_builtin_checks

            self.dependencies = {k: c.depends_on for k, c in load_builtin_checks().items()}

    def __call__(self, result: ClauseResult) -> ClauseResult:
        self._outcomes[result.clause_id] = result
        entry = self.deviations.find(result.clause_id)
        if entry is not None and result.outcome in PROBLEMS:
            result.deviation = {
                "category": entry.category,
                "reason": entry.reason,
                "outcome": result.outcome,
                "source": entry.source,
            }
            result.outcome = "declared"
        elif result.outcome == "skipped":
            self._cover_skip(result)
        return result

    def _cover_skip(self, result: ClauseResult) -> None:
        blockers = [
            self._outcomes[d]
            for d in self.dependencies.get(result.clause_id, ())
            if d in self._outcomes
            and self._outcomes[d].outcome != "pass"
            and self._outcomes[d].outcome != "not_applicable"
        ]
        if not blockers:
            return
        roots: list[str] = []
        for blocker in blockers:
            if blocker.outcome == "declared":
                roots.append(blocker.clause_id)
            elif blocker.outcome == "skipped" and blocker.clause_id in self._covered:
                roots.append(self._covered[blocker.clause_id])
            else:
                return  # behind a real failure: stays a failing skip
        root = roots[0]
        declared = self._outcomes[root].deviation or {}
        self._covered[result.clause_id] = root
        result.message = f"depends on {root}, a declared deviation"
        result.deviation = {
            "category": declared.get("category", "known_bug"),
            "reason": f"follows from the declared deviation of {root}",
            "outcome": "skipped",
            "source": declared.get("source", ""),
            "behind": root,
        }

    def finish(self, report: Report) -> list[str]:
        """Add the warnings of this run to ``report.warnings``; return them."""
        warnings = self.deviations.unmatched_warnings()
        for entry in self.deviations.entries:
            covered = [r for r in report.results if entry.matches(r.clause_id)]
            if not covered or any(r.outcome != "pass" for r in covered):
                continue
            names = ", ".join(r.clause_id for r in covered)
            warnings.append(
                f"{names} {'is' if len(covered) == 1 else 'are'} declared a deviation "
                f"({CATEGORY_TITLES[entry.category]}) in {entry.source} but now "
                f"pass{'es' if len(covered) == 1 else ''}: remove the entry {entry.clause!r}"
            )
        for warning in warnings:
            if warning not in report.warnings:
                report.warnings.append(warning)
        return warnings


def apply_deviations(report: Report, deviations: DeviationSet) -> list[str]:
    """Apply ``deviations`` to a finished report in place; return the warnings."""
    applier = DeviationApplier(deviations.for_run(report.target, report.profile))
    for result in report.results:
        applier(result)
    return applier.finish(report)
