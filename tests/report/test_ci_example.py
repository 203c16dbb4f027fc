"""The GitHub Actions example a library author copies, run step by step so that it cannot rot.

examples/github-actions/normspec.yml is what a library copies into its repository. Its
``run:`` steps run in order, as a runner would run them (``bash -eo pipefail``, the
workflow's environment with its three settings pointed at tests/fixtures/sample_project,
``GITHUB_STEP_SUMMARY``), in a copy of that project and a throwaway virtual environment.
Two things differ from a runner, both in the install steps: pip installs from this checkout
instead of PyPI (``normspec`` there means this checkout; no index, no dependencies: the
environment sees this one's packages), and ``pip install --upgrade pip`` is left out.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / "examples" / "github-actions" / "normspec.yml"
SAMPLE = ROOT / "tests" / "fixtures" / "sample_project"
SETTINGS = {
    "NORMSPEC_TARGET": "tinybn.normspec_adapter:impl",
    "NORMSPEC_PROFILE": "torch",
    "NORMSPEC_DEVIATIONS": "normspec-deviations.toml",
}


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


def _workflow() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def _offline(script: str) -> str:
    """The install steps' pip commands, from this checkout (see the module docstring)."""
    lines = []
    for line in script.splitlines():
        words = line.split()
        if words[:4] == ["python", "-m", "pip", "install"]:
            if "--upgrade" in words and "pip" in words[4:]:
                continue
            words = [str(ROOT) if w == "normspec" else w for w in words]
            words += ["--no-index", "--no-deps", "--no-build-isolation", "--quiet"]
            line = " ".join(words)
        lines.append(line)
    return "\n".join(lines)


def _environment(tmp_path: Path) -> dict[str, str]:
    """A throwaway virtual environment that sees this one's packages, pip and setuptools
    included (a .pth file)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    packages = next((venv / "lib").glob("python*/site-packages"))
    (packages / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    environ = dict(os.environ)
    environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{environ['PATH']}"
    environ["VIRTUAL_ENV"] = str(venv)
    environ["GITHUB_STEP_SUMMARY"] = str(tmp_path / "summary.md")
    return environ


def test_every_step_of_the_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    workflow = _workflow()
    assert set(SETTINGS) <= set(workflow["env"]), "the example's settings were renamed"
    environ = {**_environment(tmp_path), **workflow["env"], **SETTINGS}
    ran = []
    for name, job in workflow["jobs"].items():
        project = tmp_path / name
        shutil.copytree(SAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
        for step in job["steps"]:
            if "run" not in step:
                continue  # actions (checkout, setup-python, cache, upload-artifact)
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _offline(step["run"])],
                cwd=project,
                env=environ,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert done.returncode == 0, (
                f"{name}: step {step.get('name')!r} exited {done.returncode}\n"
                + done.stdout[-3000:]
                + done.stderr[-3000:]
            )
            ran.append(step.get("name"))
        out = project / "normspec-out"
        uploaded = next(s for s in job["steps"] if "upload-artifact" in str(s.get("uses")))
        assert uploaded["with"]["path"].rstrip("/") == "normspec-out"
        assert any(out.iterdir()), f"{name}: nothing to upload"
    assert "normspec check" in ran and "pytest with the normspec plugin" in ran
    check_dir = tmp_path / "check" / "normspec-out"
    for written in ("check.json", "check.xml", "report/report.html", "report/report.md"):
        assert (check_dir / written).is_file(), written
    plugin_dir = tmp_path / "pytest-plugin" / "normspec-out"
    assert (plugin_dir / "pytest.json").is_file() and (plugin_dir / "pytest.xml").is_file()
    assert "tinybn" in (tmp_path / "summary.md").read_text()
