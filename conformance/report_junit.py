"""JUnit XML: one test case per clause, for CI systems that read it."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from normspec.conformance.report_json import json_safe, write_atomically
from normspec.conformance.report_terminal import dtype_line, partly_applicable
from normspec.conformance.results import Report


def junit_xml(report: Report) -> str:
    counts = report.counts()
    suite = ET.Element(
        "testsuite",
        name=f"normspec {report.target} [{report.profile}]",
        tests=str(len(report.results)),
        failures=str(counts["fail"]),
        errors=str(counts["error"] + counts["crashed"] + counts["hung"]),
        skipped=str(counts["not_applicable"] + counts["skipped"] + counts["declared"]),
        time=f"{report.seconds:.3f}",
        timestamp=report.started,
    )
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"normspec.{report.profile}",
            name=f"{result.clause_id} ({result.level})",
            time=f"{result.seconds:.3f}",
        )
        detail = json.dumps(json_safe(result.problem_json()), indent=2)
        if result.outcome == "fail":
            ET.SubElement(case, "failure", message=result.message).text = detail
        elif result.outcome in ("error", "crashed", "hung"):
            ET.SubElement(case, "error", message=result.message, type=result.outcome).text = detail
        elif result.outcome == "declared" and result.deviation is not None:
            deviation = result.deviation
            ET.SubElement(
                case,
                "skipped",
                message=f"declared deviation ({deviation['category']}): {deviation['reason']}",
            ).text = f"{deviation['outcome']}: {result.message}\n{detail}"
        elif result.outcome in ("not_applicable", "skipped", "declared"):
            ET.SubElement(case, "skipped", message=f"{result.outcome}: {result.message}")
        elif partly_applicable(result):  # passed where it applied
            ET.SubElement(case, "system-out").text = f"{result.message} ({dtype_line(result)})"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(report: Report, path: str | os.PathLike[str]) -> None:
    write_atomically(path, junit_xml(report))
