"""A library's start-up noise stays out of normspec's output (adapters._quiet)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from normspec.adapters import _quiet

#: Writes to file descriptor 2 inside quiet_startup, as a native library does, then once more
#: after it; and, when asked, inside a block that fails.
SCRIPT = textwrap.dedent(
    """
    import os, sys
    from normspec.adapters._quiet import quiet_startup

    with quiet_startup():
        os.write(2, b"native start-up noise\\n")
        print("python warning", file=sys.stderr)
    os.write(2, b"after the start-up\\n")
    if sys.argv[1:] == ["fail"]:
        with quiet_startup():
            os.write(2, b"why it failed\\n")
            raise ImportError("no such library")
    """
)


QUICK = ("--clauses", "conv.io.shape_dtype", "--max-examples", "1", "--dtype", "float32")


def _run(
    *arguments: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )


def _without_setting() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != _quiet.SETTING}


def test_start_up_output_is_held_back() -> None:
    done = _run(environ=_without_setting())
    assert done.returncode == 0, done.stderr
    assert done.stderr == "after the start-up\n"


def test_what_was_held_back_is_shown_when_the_start_up_fails() -> None:
    done = _run("fail", environ=_without_setting())
    assert done.returncode == 1
    assert "why it failed" in done.stderr and "ImportError: no such library" in done.stderr
    assert "native start-up noise" not in done.stderr


def test_the_user_can_ask_for_it() -> None:
    done = _run(environ={**_without_setting(), _quiet.SETTING: "1"})
    assert "native start-up noise" in done.stderr and "python warning" in done.stderr


def test_tensorflow_logs_nothing_into_a_check() -> None:
    pytest.importorskip("tensorflow")
    done = subprocess.run(
        [sys.executable, "-m", "normspec", "check", "tf.nn", "--profile", "tf_keras", *QUICK],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_without_setting(),
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # absl's lines (I0000 ..., E0000 ... cuInit ..., "WARNING: All log messages before
    # absl::InitializeLog()") and TensorFlow's Python warnings
    assert done.stderr == ""
    assert done.stdout.startswith("normspec ")
