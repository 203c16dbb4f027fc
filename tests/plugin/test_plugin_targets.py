"""The CI path for every built-in target: the pytest plugin under pytest-xdist.

For each target ``normspec report`` knows (conformance.builtin.BUILTIN_TARGETS, so an adapter
added there is covered here), in an empty project: ``pytest -n 2`` with the plugin gives one
item per selected clause, a JSON report that validates against the schema, and the verdicts
``normspec check`` gives at the same seed and settings. Whatever a library reports (torch's
``TorchVersion``, NumPy scalars) crosses from the workers to the controller as plain data.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from normspec.adapters.declarations import BuiltinTarget
from normspec.cli import main
from normspec.conformance.builtin import BUILTIN_TARGETS, missing_frameworks
from normspec.conformance.report_json import schema

#: Clauses whose verdicts differ between the targets: pass, fail (flax's empty batch), a
#: SHOULD failure (xfail), not applicable (renorm on a BN layer, and the reverse; the family
#: layers have one clause each).
CLAUSES = "conv.io.shape_dtype,bn.train.output,bn.degenerate.empty_batch,bn.params.invalid,renorm.train.output,ln.params.shape,rms.params.shape,gn.params.shape,in.params.shape"
SETTINGS = ("--dtype", "float32", "--max-examples", "4", "--seed", "3")


def _target_id(entry: BuiltinTarget) -> str:
    return entry.target


def _available(entry: BuiltinTarget) -> BuiltinTarget:
    missing = missing_frameworks(entry)
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    return entry


@pytest.mark.parametrize("entry", BUILTIN_TARGETS, ids=_target_id)
def test_the_plugin_under_xdist_gives_the_verdicts_of_check(
    entry: BuiltinTarget, tmp_path: Path
) -> None:
    pytest.importorskip("xdist")
    _available(entry)
    project = tmp_path / "project"
    project.mkdir()
    options = [f"--normspec-{o.lstrip('-')}" if o.startswith("--") else o for o in SETTINGS]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            f"--normspec-target={entry.target}",
            f"--normspec-profile={entry.profile}",
            f"--normspec-clauses={CLAUSES}",
            *[f"{a}={b}" for a, b in zip(options[::2], options[1::2], strict=True)],
            "--normspec-json=plugin.json",
            "--junitxml=junit.xml",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    out = done.stdout + done.stderr
    assert "INTERNALERROR" not in out, out[-4000:]
    assert done.returncode in (0, 1), out[-4000:]
    assert "created: 2/2 workers" in done.stdout

    items = [
        case.get("name")
        for case in ET.parse(project / "junit.xml").getroot().iter("testcase")
        if str(case.get("name")).startswith("normspec[")
    ]
    selected = CLAUSES.split(",")
    assert sorted(items) == sorted(f"normspec[{c}]" for c in selected)

    plugin = json.loads((project / "plugin.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(plugin, schema())
    assert all(isinstance(v, str) for v in plugin["implementation"]["versions"].values())

    checked = tmp_path / "check.json"
    code = main(
        [
            "check",
            entry.target,
            "--profile",
            entry.profile,
            "--clauses",
            CLAUSES,
            *SETTINGS,
            "--json",
            str(checked),
        ]
    )
    report = json.loads(checked.read_text())
    verdicts = {r["clause"]: r["outcome"] for r in report["results"]}
    assert {r["clause"]: r["outcome"] for r in plugin["results"]} == verdicts
    assert plugin["conformant"] is report["conformant"] is (code == 0)
