"""A seed's examples depend on the seed alone, not on the source code loaded around the check
(conformance/seeded_draws.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from gallery.bugs import EpsOutsideSqrt

from normspec.conformance.runner import CheckOptions, check_implementation

SAMPLE = Path(__file__).parents[1] / "fixtures" / "sample_project" / "tinybn"
TARGET = "tinybn.normspec_adapter:impl"
OPTIONS = ("--profile", "torch", "--clauses", "bn.*", "--dtype", "float32", "--json", "r.json")


def _examples(project: Path) -> list[tuple[str, str, int, object]]:
    """``normspec check`` of the sample library in a fresh process, per clause: outcome,
    examples and minimal example."""
    subprocess.run(
        [sys.executable, "-m", "normspec", "check", TARGET, *OPTIONS],
        cwd=project,
        capture_output=True,
        timeout=300,
        check=False,
    )
    report = json.loads((project / "r.json").read_text())
    return [
        (r["clause"], r["outcome"], r["examples"], r["details"].get("example"))
        for r in report["results"]
    ]


def test_constants_in_the_users_code_change_no_example(tmp_path: Path) -> None:
    """Hypothesis draws 15 % of its floats and 5 % of its integers from the literals of the
    local modules loaded: one more constant in the user's package changed the examples."""
    plain, edited = tmp_path / "plain", tmp_path / "edited"
    for project in (plain, edited):
        shutil.copytree(SAMPLE, project / "tinybn")
    with (edited / "tinybn" / "__init__.py").open("a") as module:
        module.write("\n_UNRELATED = (0.3125, 17, 4096.5, -2.75, 1e-3, 7)\n")
    found = _examples(plain)
    assert any(outcome == "fail" for _, outcome, _, _ in found)
    assert _examples(edited) == found


def test_hypothesis_draws_local_constants_again_after_a_check() -> None:
    from hypothesis.internal.conjecture import providers

    pool, cache = providers._get_local_constants, providers.CONSTANTS_CACHE
    check_implementation(EpsOutsideSqrt(), CheckOptions(clauses="bn.train.output", max_examples=3))
    assert providers._get_local_constants is pool and providers.CONSTANTS_CACHE is cache
