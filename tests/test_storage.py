"""Where the command line keeps Hypothesis's files: normspec's cache, not the user's project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from normspec import storage

SAMPLE = Path(__file__).parent / "fixtures" / "sample_project"
DEGENERATE = ("--profile", "torch", "--clauses", "bn.degenerate.*", "--max-examples", "3")


def test_hypothesis_files_go_to_the_cache_unless_the_user_chose() -> None:
    environ = {"XDG_CACHE_HOME": "/somewhere"}
    assert storage.keep_hypothesis_files(environ) == Path("/somewhere/normspec/hypothesis")
    assert environ[storage.HYPOTHESIS_SETTING] == "/somewhere/normspec/hypothesis"
    chosen = {storage.HYPOTHESIS_SETTING: "/mine", "XDG_CACHE_HOME": "/somewhere"}
    assert storage.keep_hypothesis_files(chosen) == Path("/mine")
    assert storage.cache_home({}) == Path.home() / ".cache" / "normspec"


def test_a_check_leaves_no_hypothesis_folder_in_the_project(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(SAMPLE / "tinybn", project / "tinybn")
    environ = {k: v for k, v in os.environ.items() if k != storage.HYPOTHESIS_SETTING}
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "normspec", "check", "tinybn.normspec_adapter:impl", *DEGENERATE],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # tinybn writes NaN into its statistics on an empty batch: Hypothesis found, shrank and
    # replayed a failure, and wrote its files
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert not (project / ".hypothesis").exists()
    assert (tmp_path / "cache" / "normspec" / "hypothesis").is_dir()
