"""The conformance matrix: several implementations, each under its own profile and the paper's,
against every checked clause (``normspec report``).

Rows of the matrix are clauses, columns are (implementation, profile) runs; a cell is the
clause's outcome in that run (pass, fail, declared deviation, not applicable, error,
skipped) with the worst error seen in ulps. When an implementation's own profile has the
same dialect parameters as the paper's for everything the implementation supports (torch's
BatchNorm has no renorm, and its BN parameters are the paper's), the two runs would be the
same run: it is done once and the column says it stands for both profiles.

The matrix is written as JSON (``matrix.schema.json``, with each run's report an object of
``report.schema.json``), Markdown and a static HTML page, each atomically, after every run,
so that an interrupted ``normspec report`` leaves complete files describing what finished.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import normspec
from normspec import spec
from normspec.adapters.declarations import BuiltinTarget
from normspec.adapters.protocol import Capabilities, Implementation
from normspec.conformance.builtin import (
    PAPER,
    load_builtin,
    unavailable_reason,
)
from normspec.conformance.deviations import DeviationApplier, DeviationSet
from normspec.conformance.dtypes import Ulps
from normspec.conformance.isolation import IsolatedImplementation, Isolation
from normspec.conformance.report_json import json_safe, report_to_json, write_atomically
from normspec.conformance.results import ClauseResult, Report
from normspec.conformance.run_settings import OptionsError, RunSettings, shared_settings
from normspec.conformance.runner import (
    CheckOptions,
    check_implementation,
    environment,
    select_checks,
)
from normspec.reference.dialects import Dialect, profile
from normspec.reference.family_dialect import FAMILY_KINDS

#: Examples per clause for ``normspec report`` (``normspec check`` uses 40): the report runs
#: several implementations, and its default (reference + torch) should take minutes.
DEFAULT_REPORT_MAX_EXAMPLES = 10
MATRIX_SCHEMA_VERSION = "2"

OUTPUT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}


@dataclass(frozen=True)
class MatrixOptions(RunSettings):
    """How each run of the matrix is checked: the run's settings (validated when built;
    ``menu=None``: each implementation's default), whether each implementation is also
    checked under the paper's semantics, and how its worker process is started (``None``:
    in this process)."""

    max_examples: int | None = DEFAULT_REPORT_MAX_EXAMPLES
    paper: bool = True
    isolation: Isolation | None = field(default_factory=Isolation)


@dataclass
class Column:
    """One run: an implementation under a profile (and the profiles equivalent to it).

    ``profile`` is the profile as it was given (a built-in name or a profile file's path).
    """

    target: str
    label: str
    profile: str
    report: Report
    #: Profiles this run also stands for (same dialect parameters), e.g. ["paper"].
    also_under: list[str] = field(default_factory=list)
    #: Worst error seen per clause, in ulps of the dtype it was seen in (absent: no numeric
    #: comparison).
    ulps: dict[str, Ulps] = field(default_factory=dict)

    @property
    def profiles(self) -> list[str]:
        """The profiles the run stands for, as reports name them (a file's with its path)."""
        return [self.report.profile_label, *self.also_under]

    @property
    def title(self) -> str:
        return f"{self.label} [{' = '.join(self.profiles)}]"

    def result(self, clause_id: str) -> ClauseResult | None:
        return next((r for r in self.report.results if r.clause_id == clause_id), None)


@dataclass(frozen=True)
class Unavailable:
    """An implementation that was not checked, and why."""

    target: str
    label: str
    profile: str
    reason: str


@dataclass
class Matrix:
    """Implementations x clauses."""

    options: MatrixOptions
    started: str
    clauses: list[tuple[str, str, str]]  # (id, level, summary), in run order
    columns: list[Column] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    environment: dict[str, str] = field(default_factory=dict)
    normspec_version: str = normspec.__version__
    spec_version: str = spec.SPEC_VERSION
    #: The runs still to do when the matrix was written (target, profile).
    pending: list[tuple[str, str]] = field(default_factory=list)

    def clause_ids(self) -> list[str]:
        return [c[0] for c in self.clauses]


def new_matrix(options: MatrixOptions) -> Matrix:
    checks = select_checks(options.clauses)
    clauses = []
    for item in checks:
        clause = spec.clause(item.clause_id)
        clauses.append((clause.id, clause.level, clause.summary))
    return Matrix(
        options=options,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        clauses=clauses,
        environment=environment(),
    )


# ---------------------------------------------------------------------------------------------
# Equivalent profiles


def equivalent_profiles(first: Dialect, second: Dialect, capabilities: Capabilities) -> bool:
    """Whether checking under ``first`` and ``second`` is the same check for an
    implementation with ``capabilities``: every dialect parameter is equal (names aside), the
    batch-normalization ones only when it has batch normalization, the renorm parameters
    only when it has batch renormalization, the ghost-batch ones only when it has ghost
    batches, and of the family's those of the layer kinds it has (``FAMILY_KINDS``)."""
    for item in fields(Dialect):
        if item.name in ("name", "description", "source"):
            continue
        if item.name == "family":
            kinds = [kind for kind in FAMILY_KINDS if getattr(capabilities, kind, False)]
            if any(first.family_dialect(k) != second.family_dialect(k) for k in kinds):
                return False
            continue
        if not capabilities.batchnorm:
            continue
        if item.name == "renorm" and not capabilities.renorm:
            continue
        if item.name == "ghost" and not capabilities.ghost_batches:
            continue
        if getattr(first, item.name) != getattr(second, item.name):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# The worst error in ulps of a failure (a passing clause's is its ClauseResult.worst)


def _failure_ulps(result: ClauseResult) -> Ulps | None:
    """The ulps of a failure's comparison (its first finding's), as ``normspec check``
    reports it."""
    figures = None if result.finding is None else result.finding.figures
    if figures is None or math.isnan(figures.ulps):
        return None
    return Ulps(figures.ulps, figures.ulp_dtype)


# ---------------------------------------------------------------------------------------------
# Running


class Progress:
    """Progress lines on a stream: one per run and one per clause."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream

    def line(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _entries_and_profiles(
    entries: Sequence[BuiltinTarget], options: MatrixOptions
) -> list[tuple[BuiltinTarget, str]]:
    runs = []
    for entry in entries:
        runs.append((entry, entry.profile))
        if options.paper and entry.profile != PAPER:
            runs.append((entry, PAPER))
    return runs


def run_matrix(
    entries: Sequence[BuiltinTarget],
    options: MatrixOptions,
    *,
    deviations: DeviationSet | None = None,
    stream: TextIO | None = None,
    on_update: Callable[[Matrix], None] | None = None,
) -> Matrix:
    """Check every entry under its profile (and the paper's); never raises for Ctrl-C.

    ``on_update`` is called with the matrix after every run (and once at the end): the
    place to write it out, so that an interruption keeps what finished.
    """
    deviations = deviations or DeviationSet()
    matrix = new_matrix(options)
    progress = Progress(stream)
    runs = _entries_and_profiles(entries, options)
    matrix.pending = [(e.target, p) for e, p in runs]
    numbers = {e.target: i for i, e in enumerate(entries, start=1)}
    started = time.perf_counter()
    own_columns: dict[str, Column] = {}
    skipped_entries: set[str] = set()

    def update() -> None:
        matrix.seconds = time.perf_counter() - started
        if on_update is not None:
            on_update(matrix)

    try:
        for number, (entry, profile_name) in enumerate(runs, start=1):
            matrix.pending = [(e.target, p) for e, p in runs[number:]]
            if entry.target in skipped_entries:
                continue
            reason = unavailable_reason(entry)
            if reason is not None:
                skipped_entries.add(entry.target)
                matrix.unavailable.append(
                    Unavailable(entry.target, entry.title, entry.profile, reason)
                )
                progress.line(
                    f"[{numbers[entry.target]}/{len(entries)}] {entry.title}: not checked: {reason}"
                )
                continue
            column = _run_one(
                entry,
                profile_name,
                options,
                deviations,
                own_columns,
                matrix,
                progress,
                f"[{numbers[entry.target]}/{len(entries)}]",
            )
            if column is None:
                if entry.target not in own_columns:
                    skipped_entries.add(entry.target)
                continue
            update()
            if column.report.interrupted:
                matrix.interrupted = True
                break
    except KeyboardInterrupt:
        matrix.interrupted = True
    if matrix.interrupted:
        progress.line("interrupted: writing the runs that finished")
    else:
        matrix.pending = []
    update()
    return matrix


def _run_one(
    entry: BuiltinTarget,
    profile_name: str,
    options: MatrixOptions,
    deviations: DeviationSet,
    own_columns: dict[str, Column],
    matrix: Matrix,
    progress: Progress,
    counter: str,
) -> Column | None:
    """Check one entry under one profile; ``None`` when it was not run (not loadable, or
    its own run stands for this profile too)."""
    from normspec.adapters.registry import TargetError

    try:
        implementation: Implementation = load_builtin(
            entry, profile_name, options.isolation, timeout=options.timeout
        )
    except TargetError as problem:
        matrix.unavailable.append(
            Unavailable(entry.target, entry.title, profile_name, str(problem))
        )
        progress.line(f"{counter} {entry.title} [{profile_name}]: not checked: {problem}")
        return None
    except Exception as problem:  # a framework that fails to import or to build
        text = f"loading it failed: {type(problem).__name__}: {problem}"
        matrix.unavailable.append(Unavailable(entry.target, entry.title, profile_name, text))
        progress.line(f"{counter} {entry.title} [{profile_name}]: not checked: {text}")
        return None
    own = own_columns.get(entry.target)
    if own is not None and profile_name != entry.profile:
        capabilities = implementation.capabilities()
        if equivalent_profiles(profile(own.profile), profile(profile_name), capabilities):
            own.also_under.append(profile_name)
            progress.line(
                f"{counter} {entry.title} [{profile_name}]: the same dialect parameters as "
                f"{own.profile} for this implementation: the {own.profile} run stands for both"
            )
            _close(implementation)
            return None
    progress.line(f"{counter} {entry.title} under profile {profile_name}")
    applier = DeviationApplier(deviations.for_run(entry.target, profile(profile_name).name))
    column_ulps: dict[str, Ulps] = {}

    def on_result(result: ClauseResult) -> None:
        applier(result)
        worst: Ulps | None = None
        if result.outcome == "pass":
            worst = result.worst
        elif result.outcome in ("fail", "declared"):
            worst = _failure_ulps(result)
        if worst is not None:
            column_ulps[result.clause_id] = worst
        progress.line(_progress_line(result, worst))

    check_options = CheckOptions(
        **shared_settings(options), profile=profile_name, target=entry.target
    )
    try:
        report = check_implementation(implementation, check_options, progress=on_result)
    finally:
        _close(implementation)
    applier.finish(report)
    for warning in report.warnings:
        progress.line(f"  warning: {warning}")
        matrix.warnings.append(f"{entry.title} [{profile_name}]: {warning}")
    column = Column(entry.target, entry.title, profile_name, report, ulps=column_ulps)
    if profile_name == entry.profile:
        own_columns[entry.target] = column
    matrix.columns.append(column)
    counts = report.counts()
    summary = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v)
    verdict = "NOT conformant" if not report.conformant else report.verdict
    if report.interrupted:
        verdict += " (interrupted)"
    progress.line(f"  {verdict} under {profile_name}: {summary} in {report.seconds:.1f} s")
    return column


def _close(implementation: Implementation) -> None:
    """End an implementation's worker process, if it has one."""
    if isinstance(implementation, IsolatedImplementation):
        implementation.close()


def _progress_line(result: ClauseResult, ulps: Ulps | None) -> str:
    from normspec.conformance.report_terminal import progress_line

    line = progress_line(result)
    if ulps is not None and result.outcome in ("pass", "fail", "declared"):
        line = f"{line}  worst {ulps}"
    return line


# ---------------------------------------------------------------------------------------------
# Cells and formatting shared by the Markdown and HTML renderings


OUTCOME_TITLES = {
    "pass": "pass",
    "fail": "fail",
    "declared": "declared deviation",
    "not_applicable": "not applicable",
    "error": "error",
    "crashed": "crashed",
    "hung": "hung",
    "skipped": "skipped",
    "not_run": "not run",
}


def cell_outcome(column: Column, clause_id: str) -> str:
    result = column.result(clause_id)
    return result.outcome if result is not None else "not_run"


# ---------------------------------------------------------------------------------------------
# JSON


def matrix_to_json(matrix: Matrix) -> dict[str, Any]:
    """The matrix as a JSON-compatible dict (schema: ``matrix.schema.json``)."""
    columns = []
    for column in matrix.columns:
        cells: dict[str, Any] = {}
        for clause_id in matrix.clause_ids():
            result = column.result(clause_id)
            if result is None:
                continue
            ulps = column.ulps.get(clause_id)
            cells[clause_id] = {
                "outcome": result.outcome,
                "max_ulps": None if ulps is None else ulps.value,
                "ulp_dtype": None if ulps is None else ulps.dtype,
            }
        columns.append(
            {
                "target": column.target,
                "label": column.label,
                "profile": column.report.profile,
                "profile_source": column.report.profile_source,
                "also_under": list(column.also_under),
                "conformant": column.report.conformant,
                "interrupted": column.report.interrupted,
                "cells": cells,
                "report": report_to_json(column.report),
            }
        )
    return {
        "schema_version": MATRIX_SCHEMA_VERSION,
        "normspec_version": matrix.normspec_version,
        "spec_version": matrix.spec_version,
        "started": matrix.started,
        "seconds": round(matrix.seconds, 3),
        "interrupted": matrix.interrupted,
        "options": {
            "max_examples": matrix.options.max_examples,
            "seed": matrix.options.seed,
            "dtypes": list(matrix.options.dtypes) if matrix.options.dtypes else None,
            "clauses": matrix.options.clauses,
            "timeout": matrix.options.timeout,
            "shrink_seconds": matrix.options.shrink_seconds,
            "menu": matrix.options.menu,
            "paper": matrix.options.paper,
            "isolation": "in-process"
            if matrix.options.isolation is None
            else matrix.options.isolation.describe(),
        },
        "environment": matrix.environment,
        "clauses": [
            {"id": cid, "level": level, "summary": summary}
            for cid, level, summary in matrix.clauses
        ],
        "columns": columns,
        "unavailable": [
            {"target": u.target, "label": u.label, "profile": u.profile, "reason": u.reason}
            for u in matrix.unavailable
        ],
        "pending": [{"target": t, "profile": p} for t, p in matrix.pending],
        "warnings": list(matrix.warnings),
    }


def matrix_text(matrix: Matrix) -> str:
    return json.dumps(json_safe(matrix_to_json(matrix)), indent=2, allow_nan=False) + "\n"


def matrix_schema() -> dict[str, Any]:
    """The published JSON schema of the matrix (``matrix.schema.json``)."""
    text = resources.files("normspec.conformance").joinpath("matrix.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validate_matrix(document: dict[str, Any]) -> None:
    """Validate a matrix document against its schema, the report schema included.

    Needs ``jsonschema`` (with ``referencing``); raises ``jsonschema.ValidationError``.
    """
    import jsonschema
    from referencing import Registry, Resource

    from normspec.conformance.report_json import schema as report_schema

    registry: Registry[Any] = Registry().with_resources(
        [(s["$id"], Resource.from_contents(s)) for s in (report_schema(), matrix_schema())]
    )
    validator = jsonschema.Draft202012Validator(matrix_schema(), registry=registry)
    validator.validate(document)


# ---------------------------------------------------------------------------------------------
# Writing


def write_matrix(matrix: Matrix, directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``directory``, each atomically."""
    from normspec.conformance.report_html import render_html
    from normspec.conformance.report_markdown import render_markdown

    out = Path(directory)
    paths = {kind: out / name for kind, name in OUTPUT_FILES.items()}
    write_atomically(paths["json"], matrix_text(matrix))
    write_atomically(paths["markdown"], render_markdown(matrix))
    write_atomically(paths["html"], render_html(matrix))
    return paths


__all__ = [
    "DEFAULT_REPORT_MAX_EXAMPLES",
    "Column",
    "Matrix",
    "MatrixOptions",
    "OptionsError",
    "Unavailable",
    "equivalent_profiles",
    "matrix_schema",
    "matrix_to_json",
    "run_matrix",
    "validate_matrix",
    "write_matrix",
]
