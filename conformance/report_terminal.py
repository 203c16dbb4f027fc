"""The readable terminal output: progress per clause, then a summary and each failure."""

from __future__ import annotations

import json
from typing import TextIO

from normspec.conformance.report_json import json_safe
from normspec.conformance.results import PROBLEMS, ClauseResult, Finding, Report

#: Lines of a lost worker's output the summary shows (the JSON report has the end of it).
OUTPUT_LINES = 12

SYMBOLS = {
    "pass": "pass",
    "fail": "FAIL",
    "error": "ERROR",
    "crashed": "CRASHED",
    "hung": "HUNG",
    "not_applicable": "n/a",
    "skipped": "skipped",
    "declared": "declared",
}

#: How the terminal names the kinds of finding (conformance.results.KINDS).
KIND_TITLES = {
    "out_of_bound": "out of bound",
    "non_finite": "non-finite",
    "requirement_not_met": "requirement not met",
    "implementation_error": "implementation error",
    "crashed": "crashed",
    "hung": "hung",
    "nondeterministic": "not deterministic",
    "internal_error": "normspec internal error",
}


def kind_title(kind: str) -> str:
    """A finding's kind as reports name it."""
    return KIND_TITLES.get(kind, kind)


def progress_line(result: ClauseResult) -> str:
    timing = f"{result.examples:4d} ex {result.seconds:6.2f}s" if result.examples else " " * 16
    text = f"  {SYMBOLS[result.outcome]:<8} {result.clause_id:<34} {result.level:<6} {timing}"
    if result.outcome in ("not_applicable", "skipped") or partly_applicable(result):
        text += f"  {result.message}"
    elif result.outcome == "declared" and result.deviation is not None:
        text += f"  {result.deviation['category']}: {result.deviation['reason']}"
    if dtype_line(result):
        text += f"  ({dtype_line(result)})"
    return text


def print_header(report: Report, stream: TextIO) -> None:
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    print(
        f"normspec {report.normspec_version} (spec {report.spec_version}) checking "
        f"{report.implementation}",
        file=stream,
    )
    print(
        f"  profile {report.profile_label}; dtypes {', '.join(report.dtypes) or 'none'}; seed "
        f"{report.seed}; {report.max_examples} examples per clause; "
        + (f"{report.menu_note}; " if report.menu else "")
        + f"calls {report.isolation}; "
        + (f"{report.processes} processes; " if report.processes > 1 else "")
        + versions,
        file=stream,
    )


def partly_applicable(result: ClauseResult) -> bool:
    """Whether a clause passed where it applied and did not apply in some dtype (its
    message says in which, and why)."""
    return result.outcome == "pass" and "not_applicable" in result.dtype_outcomes.values()


def dtype_line(result: ClauseResult) -> str:
    """The outcome in each dtype, where the dtypes disagree ("" where they all agree)."""
    if len(set(result.dtype_outcomes.values())) < 2:
        return ""
    return ", ".join(f"{d} {SYMBOLS[o]}" for d, o in result.dtype_outcomes.items())


def finding_lines(finding: Finding, *, traceback: bool = False) -> list[str]:
    """A finding in full: what broke, the minimal example, notes, the worker's output (for a
    crash or a hang; every traceback with ``traceback``) and the reproduce command."""
    lines = [f"  [{finding.dtype}, {kind_title(finding.kind)}] {finding.message}"]
    if finding.example:
        lines.append("  minimal example:")
        lines += [f"    {k}: {json.dumps(v)}" for k, v in json_safe(finding.example).items()]
    if finding.notes:
        lines.append(f"  notes: {json.dumps(json_safe(finding.notes))}")
    if finding.shrinking:
        lines.append(f"  shrinking: {finding.shrinking}")
    output = finding.traceback.strip()
    if output and traceback:
        lines.append("  traceback of the implementation:")
        lines += [f"    {line}" for line in output.splitlines()]
    elif output and finding.outcome in ("crashed", "hung"):
        lines.append("  the worker's output ended with:")
        lines += [f"    {line}" for line in output.splitlines()[-OUTPUT_LINES:]]
    if finding.reproduce:
        lines.append(f"  reproduce: {finding.reproduce}")
    return lines


def also_line(finding: Finding) -> str:
    """A further finding in one line (the files have it in full)."""
    first = finding.message.splitlines()[0] if finding.message else ""
    return f"  also [{finding.dtype}, {kind_title(finding.kind)}] {first}"


def result_lines(result: ClauseResult, *, traceback: bool = False) -> list[str]:
    """A clause that did not pass: its dtypes where they disagree, the first finding in full,
    every other one line each."""
    lines = [f"{SYMBOLS[result.outcome]} {result.clause_id} ({result.level}): {result.summary}"]
    if dtype_line(result):
        lines.append(f"  dtypes: {dtype_line(result)}")
    if not result.findings:
        return [*lines, f"  {result.message}"]
    lines += finding_lines(result.findings[0], traceback=traceback)
    lines += [also_line(finding) for finding in result.findings[1:]]
    return lines


def print_summary(report: Report, stream: TextIO) -> None:
    problems = [r for r in report.results if r.outcome in PROBLEMS]
    for result in problems:
        print("", *result_lines(result), sep="\n", file=stream)
    declared = [r for r in report.results if r.outcome == "declared"]
    if declared:
        print("\nDeclared deviations (not counted against conformance):", file=stream)
        for result in declared:
            deviation = result.deviation or {}
            print(
                f"  {result.clause_id} ({result.level}), {deviation.get('category', '?')}: "
                f"{deviation.get('reason', '')}",
                file=stream,
            )
            print(f"    {deviation.get('outcome', 'fail')}: {result.message}", file=stream)
            if result.finding is not None and result.finding.reproduce:
                print(f"    reproduce: {result.finding.reproduce}", file=stream)
    for warning in report.warnings:
        print(f"\nwarning: {warning}", file=stream)
    counts = report.counts()
    verdict = report.verdict.upper()
    if report.interrupted:
        verdict += " (interrupted: partial results)"
    print(
        f"\n{verdict} under profile {report.profile_label}: {counts['pass']} passed, "
        f"{counts['fail']} failed, {counts['error']} errors, "
        + (f"{counts['crashed']} crashed, " if counts["crashed"] else "")
        + (f"{counts['hung']} hung, " if counts["hung"] else "")
        + f"{counts['not_applicable']} not applicable, {counts['skipped']} skipped"
        + (f", {counts['declared']} declared" if counts["declared"] else "")
        + f" in {report.seconds:.1f} s",
        file=stream,
    )
    if report.verdict == "nothing applicable":
        print(NOTHING_CHECKED, file=stream)


#: What ``normspec check`` says where no selected clause applied (its exit code is 3).
NOTHING_CHECKED = (
    "nothing was checked: no selected clause applies to this implementation (each is not "
    "applicable, for the reason shown), so this is no pass (exit code 3)"
)
