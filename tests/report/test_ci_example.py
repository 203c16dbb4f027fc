"""The GitHub Actions example a library author copies, and the README's commands for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from normspec.cli import build_parser

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / "examples" / "github-actions" / "normspec.yml"


def test_the_workflow_installs_checks_and_uploads() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert set(workflow["env"]) == {"NORMSPEC_TARGET", "NORMSPEC_PROFILE", "NORMSPEC_DEVIATIONS"}
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = "\n".join(step.get("run", "") for step in steps)
    assert "pip install -e . normspec" in runs
    assert "normspec check" in runs and "--deviations" in runs and "--junit" in runs
    assert "--normspec-target=" in runs and "-p normspec" in runs
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and all(s.get("if") == "always()" for s in uploads)


def test_the_workflow_commands_parse() -> None:
    """Every normspec command line in the workflow is accepted by the CLI's parser."""
    text = WORKFLOW.read_text().replace("\\\n", " ")
    text = text.replace('"$NORMSPEC_TARGET@$NORMSPEC_PROFILE"', "mylib:impl@torch")
    for name, value in (
        ("NORMSPEC_TARGET", "mylib:impl"),
        ("NORMSPEC_PROFILE", "torch"),
        ("NORMSPEC_DEVIATIONS", "d.toml"),
    ):
        text = text.replace(f'"${name}"', value)
    commands = re.findall(r"\b(normspec (?:check|report|identify) [^\n]*)", text)
    assert len(commands) == 3, commands
    for command in commands:
        args = build_parser().parse_args(command.split()[1:])
        assert args.command in ("check", "report", "identify")
        assert "$" not in command
