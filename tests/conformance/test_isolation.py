"""Checks in a worker process (conformance.isolation): an implementation that crashes or hangs
on some inputs (tests/gallery/crashes.py) ends as a reported, shrunk, reproducible failure,
and the clauses after it run and pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gallery.base import NumpyBatchNorm, NumpyLayer
from gallery.crashes import (
    CRASHES,
    AbortOnEmptyBatch,
    CrashingBatchNorm,
    UnboundedInferenceBackward,
    raising_twin,
)

from normspec.adapters.protocol import LayerConfig
from normspec.conformance.isolation import Isolation, isolate
from normspec.conformance.report_json import schema
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.shrinking import DEFAULT_SHRINK_SECONDS

TESTS = Path(__file__).resolve().parents[1]
#: The worker's memory limit in these tests (the NumPy worker holds about 60 MiB).
MEMORY_LIMIT = 128 * 2**20
#: Seconds shrinking may take: enough to finish, so that examples compare.
SHRINK_SECONDS = 120.0
#: Seconds a call may take: the hanging implementation's calls are given up after it.
TIMEOUT = 1.0


def target_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def check(cls: type, clauses: str, **options: Any) -> Any:
    target = target_of(cls)
    settings = CheckOptions(profile="torch", clauses=clauses, target=target, **options)
    with isolate(target, "torch", Isolation(memory_limit=MEMORY_LIMIT), timeout=TIMEOUT) as impl:
        return check_implementation(impl, settings)


@pytest.mark.parametrize("cls", CRASHES, ids=lambda c: c.__name__)
def test_a_crash_or_hang_is_a_shrunk_failure_and_the_run_goes_on(
    cls: type[CrashingBatchNorm],
) -> None:
    compared = cls is not UnboundedInferenceBackward
    shrink_seconds = SHRINK_SECONDS if compared else DEFAULT_SHRINK_SECONDS
    options = {"timeout": TIMEOUT, "shrink_seconds": shrink_seconds}
    report = check(cls, cls.clauses, **options)
    first, *after = report.results
    outcome, text = cls.expected
    assert (first.outcome, first.clause_id) == (outcome, cls.clauses.split(",")[0])
    assert text in first.message and first.failing
    assert [r.outcome for r in after] == ["pass"] * len(after), [r.message for r in after]
    assert report.isolation == "in a worker process (memory limit 0.125 GiB)"
    assert first.details["reproduce"].endswith(f"--timeout {TIMEOUT:g} --memory-limit 0.125")
    if not compared:  # each of its tries fills the memory limit: a failing example will do
        assert np.prod(first.details["example"]["shape"]) > 4
        return
    # shrunk as any failure is: example for example, the one of the same defect raising in
    # this process what a lost worker raises (Hypothesis drew the same cases in both). The
    # counts of examples may differ: after a first failure Hypothesis looks for others for
    # at most 10 s of wall time (report_multiple_bugs), and a real hang costs TIMEOUT each.
    settings = CheckOptions(profile="torch", clauses=cls.clauses, **options)
    in_process = check_implementation(raising_twin(cls), settings).results[0]
    assert in_process.outcome == outcome
    assert in_process.dtype_outcomes == first.dtype_outcomes
    assert json.dumps(in_process.details["example"]) == json.dumps(first.details["example"])
    assert "shrinking" not in first.details


def test_an_isolated_check_reports_what_an_in_process_one_does() -> None:
    """The same seed, the same report: the checks run here, only the calls in the worker."""
    clauses = "conv.io.inputs_unmodified,bn.train.output,bn.running.var,sync.train.output"
    isolated = check(NumpyBatchNorm, clauses, max_examples=20)
    in_process = check_implementation(
        NumpyBatchNorm(), CheckOptions(profile="torch", clauses=clauses, max_examples=20)
    )
    assert [(r.clause_id, r.outcome, r.examples) for r in isolated.results] == [
        (r.clause_id, r.outcome, r.examples) for r in in_process.results
    ]
    assert in_process.isolation == "in-process"


class RejectsItsState(NumpyBatchNorm):
    """``set_state`` raises (a worker's build sets parameters and state in one request)."""

    def build(self, config: LayerConfig) -> NumpyLayer:
        layer = super().build(config)

        def set_state(state: object) -> None:
            raise ValueError("no state accepted")

        layer.set_state = set_state  # type: ignore[method-assign]
        return layer


def test_an_error_names_its_operation_in_a_worker_as_in_process() -> None:
    options = {"dtypes": ["float64"], "max_examples": 5}
    isolated = check(RejectsItsState, "bn.running.mean", **options).results[0]
    settings = CheckOptions(profile="torch", clauses="bn.running.mean", **options)
    in_process = check_implementation(RejectsItsState(), settings).results[0]
    assert isolated.outcome == in_process.outcome == "error"
    assert (
        isolated.message == in_process.message == "set_state: raised ValueError: no state accepted"
    )
    assert "in set_state" in isolated.details["traceback"]


def test_writes_into_an_input_come_back_from_the_worker() -> None:
    from gallery.bugs import InPlaceCentering

    report = check(InPlaceCentering, "conv.io.inputs_unmodified", dtypes=["float64"])
    assert report.results[0].outcome == "fail"
    assert "modified its input x" in report.results[0].message


def test_normspec_check_on_a_crashing_layer_exits_1_with_a_complete_report(
    tmp_path: Path,
) -> None:
    """A C assertion that aborts on an empty batch. Exit code 1; the crash is a shrunk failure
    with a reproduce command that reproduces it; every other clause has its own verdict."""
    jsonschema = pytest.importorskip("jsonschema")
    clauses = "bn.infer.output,bn.degenerate.empty_batch,bn.degenerate.zero_variance"
    arguments = ["--clauses", clauses, "--profile", "torch", "--dtype", "float32"]
    target = target_of(AbortOnEmptyBatch)
    done = _normspec(tmp_path, "check", target, *arguments, "--json", "r.json", "--junit", "r.xml")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "calls in a worker process" in done.stdout
    assert "CRASHED  bn.degenerate.empty_batch" in done.stdout
    assert "train_step: crashed: SIGABRT (Aborted)" in done.stdout
    assert "the worker's output ended with:" in done.stdout
    assert "in to_kernel_layout" in done.stdout  # the Python stack of the crash
    assert "1 crashed" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, schema())
    outcomes = {r["clause"]: r["outcome"] for r in report["results"]}
    assert outcomes == {
        "bn.infer.output": "pass",
        "bn.degenerate.empty_batch": "crashed",
        "bn.degenerate.zero_variance": "pass",
    }
    assert report["counts"]["crashed"] == 1 and report["conformant"] is False
    crash = next(r for r in report["results"] if r["outcome"] == "crashed")
    assert 0 in crash["details"]["example"]["shape"] and "shrinking" not in crash["details"]
    assert "Aborted" in crash["details"]["traceback"]
    errors = ET.parse(tmp_path / "r.xml").getroot().iter("error")
    assert {e.get("type") for e in errors} == {"crashed"}
    # the reproduce command shows the same crash on the same example
    again = _normspec(tmp_path, *crash["details"]["reproduce"].split()[1:], "--json", "again.json")
    assert again.returncode == 1
    reproduced = json.loads((tmp_path / "again.json").read_text())["results"][0]
    assert reproduced["outcome"] == "crashed"
    assert reproduced["details"]["example"] == crash["details"]["example"]


def _normspec(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "normspec", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
