"""The command line: exit codes, reports, one-line usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from normspec.cli import main
from normspec.conformance import runner
from normspec.conformance.report_json import schema


def test_spec_lists_every_clause(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec"]) == 0
    out = capsys.readouterr().out
    assert "bn.train.output" in out and "MUST" in out


def test_spec_prints_one_clause(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "bn.running.var"]) == 0
    assert "unbiased" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["spec", "bn.nope"], "unknown clause"),
        (["check", "no_such_module:x"], "cannot import"),
        (["check", "json:dumps"], "not an implementation"),
        (["check", "missing_colon"], "must have the form"),
        (["check", "reference(dialect='torch')"], "built-in targets take no constructor"),
        (["check", "json:dumps(1)"], "constructor arguments are keyword arguments"),
        (["check", "json:dumps(indent=print)"], "the value of indent is not a Python literal"),
        (["check", "reference", "--profile", "nope"], "unknown profile"),
        (["check", "reference", "--dtype", "float8"], "unknown dtype"),
        (["check", "reference", "--clauses", "zz.*"], "matches no checked clause"),
        (["check", "reference", "--max-examples", "0"], "at least 1"),
        (["check", "reference", "--timeout", "0"], "--timeout must be positive"),
        (["check", "reference", "--shrink-seconds", "-1"], "--shrink-seconds must be positive"),
        (["report", "--shrink-seconds", "0"], "--shrink-seconds must be positive"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_check_writes_valid_json_and_junit(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    report_path, junit_path = tmp_path / "r.json", tmp_path / "r.xml"
    code = main(
        [
            "check",
            "reference",
            "--profile",
            "torch",
            "--clauses",
            "bn.train.*,bn.infer.*",
            "--max-examples",
            "5",
            "--json",
            str(report_path),
            "--junit",
            str(junit_path),
        ]
    )
    assert code == 0
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, schema())
    assert report["conformant"] is True and report["profile"] == "torch"
    suite = ET.parse(junit_path).getroot()
    assert int(suite.get("tests")) == len(report["results"]) and suite.get("failures") == "0"


def test_a_failing_check_exits_1_with_a_valid_report(tmp_path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    module = tmp_path / "scaled_bn.py"
    module.write_text(
        "from normspec.adapters.reference import ReferenceImplementation\n"
        "class Scaled(ReferenceImplementation):\n"
        "    def build(self, config):\n"
        "        layer = super().build(config)\n"
        "        step = layer.train_step\n"
        "        layer.train_step = lambda x: step(x) * 1.001\n"
        "        return layer\n"
        "impl = Scaled('torch')\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "normspec",
            "check",
            "scaled_bn:impl",
            "--profile",
            "torch",
            "--clauses",
            "bn.train.output",
            "--max-examples",
            "20",
            "--json",
            "r.json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "FAIL" in out.stdout and "reproduce: normspec check scaled_bn:impl" in out.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, schema())
    assert report["results"][0]["details"]["comparison"]["max_rel_error"] > 1e-4


def test_a_check_that_checked_nothing_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Every selected clause not applicable (renorm under a profile without it): no pass."""
    code = main(["check", "reference", "--profile", "torch", "--clauses", "renorm.train.*"])
    out = capsys.readouterr().out
    assert code == 3
    assert "NOTHING APPLICABLE under profile torch" in out
    assert "nothing was checked" in out and "(exit code 3)" in out
    assert main(["check", "reference", "--profile", "torch", "--clauses", "bn.train.output"]) == 0


def test_an_interrupted_check_exits_130_unless_a_clause_failed_before(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (or a cancelled CI job) before any failure: no pass; after one: not conformant."""
    checked = runner.CheckSession.check
    calls: list[str] = []

    def interrupted_at_the_second(session: Any, item: Any, *job: Any) -> Any:
        calls.append(item.clause_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return checked(session, item, *job)

    monkeypatch.setattr(runner.CheckSession, "check", interrupted_at_the_second)
    options = ["--in-process", "--clauses", "bn.train.output,bn.running.mean,bn.infer.output"]
    options += ["--dtype", "float64,float32", "--max-examples", "12"]
    assert main(["check", "reference", *options]) == 130
    assert "(interrupted: partial results)" in capsys.readouterr().out
    calls.clear()
    assert main(["check", "gallery.bugs:EpsIgnored", "--profile", "torch", *options]) == 1
    assert calls == ["bn.train.output", "bn.running.mean"]
