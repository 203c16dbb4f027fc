"""Verdicts that cannot mislead (issue 14): every distinct failure of a clause is a finding,
each dtype keeps its own outcome, and dependency skips are per (clause, dtype)."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from normspec.adapters.protocol import LayerConfig
from normspec.adapters.reference import ReferenceImplementation, ReferenceLayer
from normspec.conformance.report_json import report_text, schema
from normspec.conformance.report_junit import junit_xml
from normspec.conformance.report_terminal import print_summary
from normspec.conformance.results import ClauseResult, Report
from normspec.conformance.runner import CheckOptions, check_implementation


class Buggy(ReferenceImplementation):
    """The reference with its training output broken in ``bad`` dtypes: scaled by 1.01 for
    a small input, NaN in its first element for one of more than 6 elements (``nan``)."""

    def __init__(self, bad: tuple[str, ...], *, nan: bool) -> None:
        super().__init__("torch")
        self.name = f"reference with a bad train_step in {', '.join(bad)}"
        self.bad, self.nan = bad, nan

    def build(self, config: LayerConfig) -> ReferenceLayer:
        layer = super().build(config)
        if config.dtype in self.bad:
            original = layer.train_step

            def train_step(x: np.ndarray) -> np.ndarray:
                y = np.array(original(x), dtype=np.float64)
                if self.nan and x.size > 6:
                    y.flat[0] = np.nan
                    return y
                return y * 1.01

            layer.train_step = train_step  # type: ignore[method-assign]
        return layer


def run(implementation: ReferenceImplementation, clauses: str, dtypes: list[str]) -> Report:
    options = CheckOptions(profile="torch", clauses=clauses, dtypes=dtypes, max_examples=24)
    return check_implementation(implementation, options)


def result_of(report: Report, clause_id: str) -> ClauseResult:
    return next(r for r in report.results if r.clause_id == clause_id)


@pytest.fixture(scope="module")
def two_bugs() -> Report:
    return run(Buggy(("float64",), nan=True), "bn.train.output", ["float64"])


def test_two_independent_bugs_of_one_clause_are_two_findings(two_bugs: Report) -> None:
    result = two_bugs.results[0]
    assert result.outcome == "fail"
    assert sorted(f.kind for f in result.findings) == ["non_finite", "out_of_bound"]
    for finding in result.findings:
        assert finding.dtype == "float64" and finding.outcome == "fail"
        assert finding.example is not None
        size = int(np.prod(finding.example["shape"]))
        assert (size > 6) == (finding.kind == "non_finite")  # each shrunk on its own bug
        assert "--dtype float64 --seed 0 --max-examples 24" in finding.reproduce
    out_of_bound = next(f for f in result.findings if f.kind == "out_of_bound")
    assert out_of_bound.figures is not None and out_of_bound.figures.ulps > 1
    assert result.details == result.findings[0].to_json()  # the first, for old readers


def test_the_terminal_shows_the_first_finding_in_full_and_the_others_in_a_line(
    two_bugs: Report,
) -> None:
    stream = io.StringIO()
    print_summary(two_bugs, stream)
    text = stream.getvalue()
    first, second = two_bugs.results[0].findings
    assert f"[float64, {first.kind.replace('_', ' ').replace('non finite', 'non-finite')}]" in text
    assert text.count("minimal example:") == 1
    assert text.count("reproduce:") == 1
    also = [line for line in text.splitlines() if line.startswith("  also [float64")]
    assert len(also) == 1 and second.message.splitlines()[0] in also[0]


def test_the_json_report_has_every_finding_and_validates(two_bugs: Report) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    document = json.loads(report_text(two_bugs))
    jsonschema.validate(document, schema())
    raw = document["results"][0]
    assert raw["dtypes"] == {"float64": "fail"}
    assert [f["kind"] for f in raw["findings"]] == [f.kind for f in two_bugs.results[0].findings]
    assert raw["details"] == raw["findings"][0]
    again = ClauseResult.from_json(raw)
    assert [f.kind for f in again.findings] == [f.kind for f in two_bugs.results[0].findings]
    assert again.dtype_outcomes == {"float64": "fail"}


def test_a_float32_failure_keeps_float64_verdicts_and_dependents() -> None:
    clauses = "bn.train.output,bn.backward.train.dx"
    report = run(Buggy(("float32",), nan=False), clauses, ["float64", "float32"])
    output = result_of(report, "bn.train.output")
    assert output.dtype_outcomes == {"float64": "pass", "float32": "fail"}
    assert output.outcome == "fail"
    assert {f.dtype for f in output.findings} == {"float32"}
    assert output.worst is not None  # float64's passing comparisons were recorded
    dependent = result_of(report, "bn.backward.train.dx")
    assert dependent.dtype_outcomes == {"float64": "pass", "float32": "skipped"}
    assert dependent.outcome == "skipped"
    assert "bn.train.output, which did not pass in float32" in dependent.message
    stream = io.StringIO()
    print_summary(report, stream)
    assert "dtypes: float64 pass, float32 FAIL" in stream.getvalue()


def test_a_passing_clause_reports_how_close_it_was() -> None:
    report = run(ReferenceImplementation("torch"), "bn.train.output", ["float32"])
    result = report.results[0]
    assert result.outcome == "pass" and not result.findings
    assert result.worst is not None and result.worst.dtype == "float32"
    assert 0 <= result.worst.value < 64
    raw = json.loads(report_text(report))["results"][0]
    assert raw["worst_ulps"]["ulp_dtype"] == "float32"
    assert raw["details"] == {} and raw["findings"] == []


def test_junit_carries_every_finding(two_bugs: Report) -> None:
    failure = ET.fromstring(junit_xml(two_bugs)).find("testcase/failure")
    assert failure is not None and failure.text is not None
    detail = json.loads(failure.text)
    assert detail["kind"] == two_bugs.results[0].findings[0].kind
    assert sorted(f["kind"] for f in detail["findings"]) == ["non_finite", "out_of_bound"]
