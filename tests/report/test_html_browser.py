"""The HTML report in a real headless Chromium: it renders, the matrix is there, a failure's
details open, and text an implementation raised is shown, never run.

Needs Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from normspec.adapters.declarations import BuiltinTarget
from normspec.conformance.matrix import MatrixOptions, run_matrix, write_matrix

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *arguments],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def page(fake_module: str, tmp_path: Path) -> tuple[Path, str]:
    """The report of the reference, a failing and a raising implementation; the ID of the
    raising implementation's finding."""
    entries = [
        BuiltinTarget("reference", "paper", (), "normspec reference"),
        BuiltinTarget(f"{fake_module}:scaled", "torch", (), "scaled"),
        BuiltinTarget(f"{fake_module}:raising", "torch", (), "raising"),
    ]
    options = MatrixOptions(
        max_examples=3, clauses="conv.io.shape_dtype,bn.train.output", dtypes=["float64"]
    )
    matrix = run_matrix(entries, options)
    paths = write_matrix(matrix, tmp_path / "report")
    text = paths["html"].read_text()
    found = re.search(r'<details class="finding error" id="(finding-\d+-\d+)"', text)
    assert found is not None
    return paths["html"], found.group(1)


def _dom(tmp_path: Path, url: str) -> str:
    done: Any = _chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    dom: str = done.stdout
    assert dom.strip(), done.stderr[-2000:]
    return dom


def test_the_page_renders_with_the_matrix(page: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = page
    dom = _dom(tmp_path, path.as_uri())
    assert '<table class="matrix" id="matrix">' in dom
    # the first screen: the matrix opens the page, each run's verdict under its heading
    main = dom.split("<main>", 1)[1]
    assert main.startswith('<section id="first-screen">'), main[:200]
    head = main.split("<tbody>", 1)[0]
    verdicts = re.findall(r'<th class="verdict (ok|bad|none)"', head)
    assert verdicts == ["ok", "bad", "bad"], verdicts  # reference, scaled, raising
    assert re.search(r'<td class="cell fail"[^>]*><a href="#finding-\d+-\d+">FAIL', dom)
    assert "<svg" in dom and "normspec reference" in dom
    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.stat().st_size > 10_000  # a real picture, not a blank page


def test_a_failure_opens_and_raised_text_is_escaped(page: tuple[Path, str], tmp_path: Path) -> None:
    path, finding = page
    closed = _dom(tmp_path, path.as_uri())
    assert re.search(rf'<details class="finding error" id="{finding}">', closed)
    # the page's script opens the finding a link points at (a click on the matrix cell)
    opened = _dom(tmp_path, f"{path.as_uri()}#{finding}")
    assert re.search(rf'<details class="finding error" id="{finding}" open="">', opened)
    # the implementation's "<script>" and "<img onerror>" are text, and never ran
    assert "data-pwned" not in opened.split("<body", 1)[0]
    assert "&lt;script&gt;document.documentElement.setAttribute" in opened
    assert "&lt;img src=x onerror=" in opened
    assert "<img" not in opened
