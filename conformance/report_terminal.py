"""The readable terminal output: progress per clause, then a summary and each failure."""

from __future__ import annotations

import json
from typing import TextIO

from normspec.conformance.report_json import json_safe
from normspec.conformance.results import PROBLEMS, ClauseResult, Report

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


def progress_line(result: ClauseResult) -> str:
    timing = f"{result.examples:4d} ex {result.seconds:6.2f}s" if result.examples else " " * 16
    text = f"  {SYMBOLS[result.outcome]:<8} {result.clause_id:<34} {result.level:<6} {timing}"
    if result.outcome in ("not_applicable", "skipped"):
        text += f"  {result.message}"
    elif result.outcome == "declared" and result.deviation is not None:
        text += f"  {result.deviation['category']}: {result.deviation['reason']}"
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
        + versions,
        file=stream,
    )


def print_summary(report: Report, stream: TextIO) -> None:
    problems = [r for r in report.results if r.outcome in PROBLEMS]
    for result in problems:
        print(
            f"\n{SYMBOLS[result.outcome]} {result.clause_id} ({result.level}): {result.summary}",
            file=stream,
        )
        print(f"  {result.message}", file=stream)
        example = result.details.get("example")
        if example:
            print("  minimal example:", file=stream)
            for key, value in json_safe(example).items():
                print(f"    {key}: {json.dumps(value)}", file=stream)
        if "notes" in result.details:
            print(f"  notes: {json.dumps(json_safe(result.details['notes']))}", file=stream)
        if "shrinking" in result.details:
            print(f"  shrinking: {result.details['shrinking']}", file=stream)
        output = str(result.details.get("traceback", "")).strip()
        if result.outcome in ("crashed", "hung") and output:
            print("  the worker's output ended with:", file=stream)
            for line in output.splitlines()[-OUTPUT_LINES:]:
                print(f"    {line}", file=stream)
        if "reproduce" in result.details:
            print(f"  reproduce: {result.details['reproduce']}", file=stream)
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
            if "reproduce" in result.details:
                print(f"    reproduce: {result.details['reproduce']}", file=stream)
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
