"""The pytest plugin, inside a library's own test run (tests/fixtures/sample_project)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from normspec.conformance.dtypes import Ulps
from normspec.conformance.pytest_plugin import result_from_json
from normspec.conformance.report_json import json_safe, schema
from normspec.conformance.results import ClauseResult, Figures, Finding

SAMPLE = Path(__file__).parents[1] / "fixtures" / "sample_project"
TARGET = "tinybn.normspec_adapter:impl"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "sample_project"
    shutil.copytree(SAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return copy


def _pytest(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def test_one_item_per_clause_under_xdist_with_deviations(project: Path) -> None:
    """Under the project's own profile file, named by a relative path on every worker."""
    pytest.importorskip("xdist")
    done = _pytest(
        project,
        "-p",
        "normspec",
        f"--normspec-target={TARGET}",
        "--normspec-profile=normspec-profile.toml",
        "--normspec-deviations=normspec-deviations.toml",
        "--normspec-max-examples=3",
        "--normspec-json=normspec.json",
        "--junitxml=junit.xml",
        "-n",
        "2",
        "-rA",
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-2000:]
    assert "created: 2/2 workers" in out
    assert "hypothesis profile ci (3 examples per clause, seed 0)" in out
    assert "profile tinybn (profile file normspec-profile.toml)" in out
    cases = {
        case.get("name"): case
        for case in ET.parse(project / "junit.xml").getroot().iter("testcase")
    }
    # the library's own tests still run, beside one item per clause
    assert "test_training_output_is_normalized" in cases
    clause_items = {n for n in cases if n.startswith("normspec[")}
    assert len(clause_items) >= 30 and "normspec[bn.train.output]" in clause_items
    passed = cases["normspec[bn.train.output]"]
    assert passed.find("failure") is None and passed.find("skipped") is None
    assert [(p.get("name"), p.get("value")) for p in passed.iter("property")] == [
        ("normspec_clause", "bn.train.output")
    ]
    declared = cases["normspec[bn.degenerate.empty_batch]"].find("skipped")
    assert declared is not None and "declared deviation (known bug)" in declared.get("message", "")
    backward = cases["normspec[bn.backward.train.dx]"].find("skipped")
    assert backward is not None and "not applicable" in backward.get("message", "")
    assert "XFAIL normspec[bn.degenerate.empty_batch] - declared deviation" in out
    report = json.loads((project / "normspec.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, schema())
    outcomes = {r["clause"]: r["outcome"] for r in report["results"]}
    assert outcomes["bn.degenerate.empty_batch"] == "declared"
    assert outcomes["bn.train.output"] == "pass"
    assert outcomes["bn.backward.train.dx"] == "not_applicable"
    assert report["conformant"] is True and report["implementation"]["name"] == "tinybn.BatchNorm"
    assert (report["profile"], report["profile_source"]) == ("tinybn", "normspec-profile.toml")


def test_an_undeclared_failure_fails_with_the_minimal_example(project: Path) -> None:
    done = _pytest(
        project,
        f"--normspec-target={TARGET}",
        "--normspec-profile=torch",
        "--normspec-clauses=bn.degenerate.*",
        "--normspec-max-examples=3",
        "--normspec-dtype=float64",
    )
    out = done.stdout
    assert done.returncode == 1, out[-4000:]
    assert "FAILED normspec[bn.degenerate.empty_batch]" in out
    assert "minimal example:" in out and "shape: [0, " in out
    assert f"reproduce: normspec check {TARGET} --profile torch" in out
    assert "NOT CONFORMANT" in out


def test_workers_share_a_dev_seed(project: Path) -> None:
    pytest.importorskip("xdist")
    done = _pytest(
        project,
        f"--normspec-target={TARGET}",
        "--normspec-profile=torch",
        "--normspec-clauses=bn.degenerate.empty_batch,bn.train.output",
        "--normspec-hypothesis-profile=dev",
        "--normspec-max-examples=3",
        "-n",
        "2",
    )
    out = done.stdout
    header = re.search(r"hypothesis profile dev \(3 examples per clause, seed (\d+)\)", out)
    reproduce = re.search(r"reproduce: normspec check .* --seed (\d+)", out)
    assert header is not None and reproduce is not None, out[-3000:]
    assert header.group(1) == reproduce.group(1)


def test_the_plugin_is_inert_without_a_target(project: Path) -> None:
    done = _pytest(project, "-q")
    assert done.returncode == 0, done.stdout[-2000:]
    assert "2 passed" in done.stdout and "normspec[" not in done.stdout
    helped = _pytest(project, "--help")
    assert "--normspec-target=TARGET" in helped.stdout
    assert "--normspec-hypothesis-profile" in helped.stdout


def test_a_target_that_does_not_load_is_a_usage_error(project: Path) -> None:
    done = _pytest(project, "--normspec-target=no_such_module_zz:x", "-q")
    assert done.returncode == 4, done.stdout[-2000:]
    assert "cannot import 'no_such_module_zz'" in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--normspec-timeout=0", "--normspec-timeout must be positive, not 0"),
        ("--normspec-menu=-2", "--normspec-menu takes 0 (settings drawn freely)"),
        ("--normspec-dtype=float8", "unknown dtype 'float8'"),
        ("--normspec-clauses=zz.*", "clause pattern 'zz.*' matches no checked clause"),
    ],
)
def test_invalid_settings_are_usage_errors_naming_the_option(
    project: Path, option: str, message: str
) -> None:
    """The plugin's settings are validated as the command line's are (one RunSettings),
    spelled as its own options."""
    done = _pytest(project, f"--normspec-target={TARGET}", option, "-q")
    assert done.returncode == 4, done.stdout[-2000:]
    assert message in done.stderr + done.stdout


def test_an_invalid_profile_file_is_a_usage_error(project: Path) -> None:
    text = (project / "normspec-profile.toml").read_text()
    (project / "bad-profile.toml").write_text(text.replace('"unbiased"', '"bessel"'))
    done = _pytest(
        project, f"--normspec-target={TARGET}", "--normspec-profile=bad-profile.toml", "-q"
    )
    assert done.returncode == 4, done.stdout[-2000:]
    assert (
        "--normspec-profile: profile file bad-profile.toml: batchnorm.running_variance: must be "
        'one of "biased", "unbiased", got "bessel"'
    ) in done.stderr + done.stdout


def test_a_deviation_entry_that_matches_nothing_is_warned_about(project: Path) -> None:
    (project / "bad.toml").write_text(
        "[[deviation]]\nclause = 'bn.no_such_clause'\ncategory = 'known_bug'\nreason = 'x'\n"
    )
    done = _pytest(
        project,
        f"--normspec-target={TARGET}",
        "--normspec-profile=torch",
        "--normspec-deviations=bad.toml",
        "--normspec-clauses=bn.train.output",
        "--normspec-max-examples=2",
        "-q",
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "warning: deviation file bad.toml: entry 'bn.no_such_clause' matches no clause" in (
        done.stdout
    )


def test_results_cross_processes_as_json() -> None:
    figures = Figures("y", (0, 1), 1.0, math.nan, 0.5, math.inf, 1.0, 8388608.0, "float32")
    finding = Finding("float32", "fail", "non_finite", "m", {"shape": [2]}, {"n": 1}, figures)
    result = ClauseResult(
        "bn.train.output",
        "MUST",
        "s",
        "declared",
        "m",
        [finding, replace(finding, kind="out_of_bound", figures=None, seed=0)],
        {"float64": "pass", "float32": "fail"},
        3,
        0.5,
        worst=Ulps(0.5, "float64"),
    )
    result.deviation = {"category": "known_bug", "reason": "r", "outcome": "fail", "source": "f"}
    again = result_from_json(json_safe(result.to_json()))  # as the plugin attaches it
    assert math.isnan(again.findings[0].figures.actual)  # NaN != NaN: compared apart
    again.findings[0] = replace(again.findings[0], figures=replace(figures))
    assert again == result


def test_a_run_that_checked_nothing_is_no_pass(project: Path) -> None:
    """Every selected clause not applicable (tinybn has no backward): exit status 5, as
    pytest's own "no tests ran", and the summary says why."""
    done = _pytest(
        project,
        f"--normspec-target={TARGET}",
        "--normspec-profile=torch",
        "--normspec-clauses=bn.backward.*",
        "-q",
        "tests/test_tinybn.py",
    )
    out = done.stdout
    assert done.returncode == 5, out[-3000:]
    assert "2 passed" in out  # the library's own tests ran and passed
    assert "NOTHING APPLICABLE: " in out and "nothing was checked" in out


HALF_REFUSED = '''
from dataclasses import replace

from normspec.adapters._common import check_config
from normspec.adapters.reference import ReferenceImplementation


class HalfRefusedForBN:
    """The reference, whose BN layers (and no other chapter's) fail in float16."""

    name = "reference, BN refused in float16"

    def __init__(self):
        self.inner = ReferenceImplementation("paper")

    def capabilities(self):
        refused = {"batchnorm": {"float16": "RuntimeError: no half kernel"}}
        return replace(self.inner.capabilities(), refused_dtypes=refused)

    def versions(self):
        return {}

    def build(self, config):
        check_config(self.capabilities(), config)
        return self.inner.build(config)


impl = HalfRefusedForBN()
'''


def test_a_clause_passed_where_it_applied_says_which_dtypes_did_not_apply(project: Path) -> None:
    (project / "halfbn.py").write_text(HALF_REFUSED)
    done = _pytest(
        project,
        "--normspec-target=halfbn:impl",
        "--normspec-clauses=bn.train.output,ghost.train.output",
        "--normspec-max-examples=4",
        "--junitxml=junit.xml",
        "-v",
        "-k",
        "normspec",
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    why = "a tiny batch-normalization layer fails in float16: RuntimeError: no half kernel"
    assert f"normspec[bn.train.output] PASSED (not applicable in float16: {why})" in out
    assert re.search(r"normspec\[ghost\.train\.output\] PASSED\s", out)  # every dtype applied
    assert f"bn.train.output passed; not applicable in float16: {why}" in out  # the summary
    cases = {c.get("name"): c for c in ET.parse(project / "junit.xml").getroot().iter("testcase")}
    properties = dict(
        (p.get("name"), p.get("value")) for p in cases["normspec[bn.train.output]"].iter("property")
    )
    assert properties["normspec_not_applicable"] == f"not applicable in float16: {why}"
    assert "normspec_not_applicable" not in {
        p.get("name") for p in cases["normspec[ghost.train.output]"].iter("property")
    }
