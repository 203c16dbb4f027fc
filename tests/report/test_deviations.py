"""Deviation files: the loader, the declared outcome, warnings, and `normspec check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normspec.cli import main
from normspec.conformance.deviations import (
    DeviationApplier,
    DeviationFileError,
    DeviationSet,
    apply_deviations,
    load_deviations,
)
from normspec.conformance.report_json import schema
from normspec.conformance.report_junit import junit_xml
from normspec.conformance.results import ClauseResult, Report

TOML = """
# normspec deviations of a library
[[deviation]]
clause = "bn.train.output"
category = "intended-divergence"
reason = "eps outside the square root, as our users expect"

[[deviation]]
clause = "bn.params.*"
category = "known_bug"
reason = "momentum is not validated (issue 12)"
profiles = ["torch"]

[[deviation]]
clause = "bn.nope"
category = "known_bug"
reason = "a typo"
"""


def _report(*results: ClauseResult) -> Report:
    report = Report(
        implementation="x",
        target="mylib:impl",
        profile="torch",
        dtypes=("float64",),
        seed=0,
        max_examples=1,
        versions={},
        environment={},
        normspec_version="0",
        spec_version="0",
        started="now",
    )
    report.results.extend(results)
    return report


def _result(clause: str, outcome: str, level: str = "MUST", message: str = "") -> ClauseResult:
    return ClauseResult(clause, level, "summary", outcome, message)  # type: ignore[arg-type]


def test_loads_toml_and_normalises_categories(tmp_path: Path) -> None:
    path = tmp_path / "deviations.toml"
    path.write_text(TOML)
    loaded = load_deviations(path)
    assert [e.clause for e in loaded.entries] == ["bn.train.output", "bn.params.*", "bn.nope"]
    assert loaded.entries[0].category == "intended_divergence"
    assert loaded.entries[1].profiles == ("torch",)
    assert loaded.find("bn.params.invalid") is loaded.entries[1]
    assert loaded.for_run("t", "keras").find("bn.params.invalid") is None


def test_loads_json_too(tmp_path: Path) -> None:
    path = tmp_path / "deviations.json"
    path.write_text(
        json.dumps({"deviation": [{"clause": "bn.train.output", "category": "bug", "reason": "r"}]})
    )
    assert load_deviations(path).entries[0].category == "known_bug"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[deviation]]\nclause = 'bn.train.output'\nreason = 'r'\n", "category"),
        ("[[deviation]]\nclause = 'x.y'\ncategory = 'odd'\nreason = 'r'\n", "unknown category"),
        ("[[deviation]]\nclause = 'x.y'\ncategory = 'known_bug'\n", "reason"),
        (
            "[[deviation]]\nclause = 'x.y'\ncategory = 'known_bug'\nreason='r'\nwhy=1\n",
            "unknown key",
        ),
        ("[deviations]\n", "unknown top-level key"),
        ("[[deviation]\n", "not valid TOML"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(DeviationFileError, match=message) as caught:
        load_deviations(path)
    assert "\n" not in str(caught.value)


def test_declared_outcome_does_not_fail_and_unmatched_entries_warn(tmp_path: Path) -> None:
    path = tmp_path / "deviations.toml"
    path.write_text(TOML)
    report = _report(
        _result("conv.io.shape_dtype", "pass"),
        _result("bn.train.output", "fail", message="too large"),
        _result("bn.train.affine", "skipped", message="depends on bn.train.output"),
        _result("bn.params.invalid", "fail", level="SHOULD"),
    )
    assert not report.conformant
    warnings = apply_deviations(report, load_deviations(path))
    assert [r.outcome for r in report.results] == ["pass", "declared", "skipped", "declared"]
    declared = report.results[1].deviation
    assert declared is not None and declared["outcome"] == "fail"
    assert declared["category"] == "intended_divergence"
    skipped = report.results[2]
    assert skipped.deviation is not None and skipped.deviation["behind"] == "bn.train.output"
    assert "declared deviation" in skipped.message
    assert report.conformant, "declared clauses and skips behind them do not fail the run"
    assert report.counts()["declared"] == 2
    assert any("'bn.nope' matches no clause" in w for w in warnings)
    assert report.warnings == warnings


def test_a_skip_behind_a_real_failure_still_fails() -> None:
    deviations = DeviationSet()
    applier = DeviationApplier(deviations)
    report = _report(
        _result("bn.train.output", "fail"),
        _result("bn.train.affine", "skipped"),
    )
    for result in report.results:
        applier(result)
    assert report.results[1].deviation is None and not report.conformant


def test_a_declared_clause_that_passes_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        "[[deviation]]\nclause = 'bn.train.output'\ncategory = 'known_bug'\nreason = 'old'\n"
    )
    report = _report(_result("bn.train.output", "pass"))
    warnings = apply_deviations(report, load_deviations(path))
    assert len(warnings) == 1 and "now passes" in warnings[0]


def test_declared_results_validate_and_are_junit_skips(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from normspec.conformance.report_json import report_to_json

    path = tmp_path / "deviations.toml"
    path.write_text(TOML)
    report = _report(_result("bn.train.output", "fail", message="too large"))
    apply_deviations(report, load_deviations(path))
    document = report_to_json(report)
    jsonschema.validate(document, schema())
    assert document["counts"]["declared"] == 1 and document["warnings"]
    xml = junit_xml(report)
    assert "declared deviation (intended_divergence)" in xml and "<failure" not in xml


def test_check_honours_deviations(
    tmp_path: Path, fake_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`normspec check --deviations`: the failing clause is declared and the run passes."""
    argv = [
        "check",
        f"{fake_module}:scaled",
        "--profile",
        "torch",
        "--clauses",
        "conv.io.shape_dtype,bn.train.output,bn.train.affine",
        "--dtype",
        "float64",
        "--max-examples",
        "5",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == 1
    capsys.readouterr()
    deviations = tmp_path / "normspec-deviations.toml"
    deviations.write_text(TOML)
    assert main([*argv, "--deviations", str(deviations)]) == 0
    out = capsys.readouterr().out
    assert "declared" in out and "intended_divergence" in out
    assert "skipped" in out and "a declared deviation" in out
    assert "warning: deviation file" in out and "'bn.nope'" in out
    report = json.loads((tmp_path / "r.json").read_text())
    outcomes = {r["clause"]: r["outcome"] for r in report["results"]}
    assert outcomes["bn.train.output"] == "declared"
    assert outcomes["bn.train.affine"] == "skipped"
    assert report["conformant"] is True


def test_check_rejects_a_bad_deviation_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[[deviation]]\nclause = 1\n")
    assert main(["check", "reference", "--deviations", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "clause" in err and len(err.splitlines()) == 1
    assert main(["check", "reference", "--deviations", str(tmp_path / "none.toml")]) == 2
    assert "cannot read deviation file" in capsys.readouterr().err


def test_the_verdict_says_when_nothing_applied() -> None:
    nothing = _report(
        _result("bn.train.output", "not_applicable"), _result("x.y", "skipped", "SHOULD")
    )
    assert nothing.conformant and nothing.verdict == "nothing applicable"
    behind = _report(_result("bn.train.output", "not_applicable"), _result("x.y", "skipped"))
    assert behind.verdict == "not conformant"  # a MUST clause skipped behind a failure
    passed = _report(_result("bn.train.output", "pass"), _result("x.y", "not_applicable"))
    assert passed.verdict == "conformant"
    failed = _report(_result("bn.train.output", "fail"), _result("x.y", "pass"))
    assert not failed.conformant and failed.verdict == "not conformant"
    should = _report(_result("bn.accuracy.forward", "fail", level="SHOULD"))
    assert should.verdict == "conformant"
