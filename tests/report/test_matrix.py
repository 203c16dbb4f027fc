"""`normspec report`: the matrix, its JSON schema, Markdown and HTML, interruption."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from report_fakes import PAYLOAD

from normspec.adapters.declarations import BuiltinTarget
from normspec.cli import main
from normspec.conformance import matrix as matrix_module
from normspec.conformance.builtin import BUILTIN_TARGETS, unavailable_reason
from normspec.conformance.deviations import load_deviations
from normspec.conformance.matrix import (
    MatrixOptions,
    equivalent_profiles,
    matrix_to_json,
    run_matrix,
    validate_matrix,
    write_matrix,
)
from normspec.conformance.report_html import render_html
from normspec.conformance.report_markdown import render_markdown
from normspec.conformance.tolerance import significant_ulps
from normspec.reference.dialects import profile

QUICK = MatrixOptions(
    max_examples=3,
    clauses="conv.io.shape_dtype,bn.train.output,bn.infer.output",
    dtypes=["float64"],
)


def test_builtin_targets_name_the_reference_and_known_profiles() -> None:
    assert BUILTIN_TARGETS[0].target == "reference"
    for entry in BUILTIN_TARGETS:
        profile(entry.profile)  # every own profile exists
    assert unavailable_reason(BuiltinTarget("x", "paper", ("no_such_framework_zz",))) == (
        "no_such_framework_zz is not installed"
    )


def test_equivalent_profiles_ignore_renorm_without_renorm() -> None:
    from normspec.adapters.protocol import Capabilities

    assert equivalent_profiles(profile("torch"), profile("paper"), Capabilities())
    assert not equivalent_profiles(profile("torch"), profile("paper"), Capabilities(renorm=True))
    assert not equivalent_profiles(profile("keras"), profile("paper"), Capabilities())


def test_equivalent_profiles_of_a_family_layer_compare_its_kind_only() -> None:
    from normspec.adapters.protocol import Capabilities

    layernorm = Capabilities(batchnorm=False, layernorm=True)
    rmsnorm = Capabilities(batchnorm=False, rmsnorm=True)
    # keras's BN parameters differ from the paper's; its LayerNorm default eps (1e-3) too
    assert equivalent_profiles(profile("torch"), profile("paper"), layernorm)
    assert not equivalent_profiles(profile("keras"), profile("paper"), layernorm)
    # the paper profile takes torch's default eps where the papers give none
    assert equivalent_profiles(profile("torch"), profile("paper"), rmsnorm)
    assert not equivalent_profiles(profile("flax"), profile("paper"), rmsnorm)
    assert equivalent_profiles(profile("haiku"), profile("equinox_batch"), rmsnorm)


def test_significant_ulps_ignores_values_their_bound_dwarfs() -> None:
    assert significant_ulps([1.0 + 2**-52 * 3], [1.0], [1e-12], "float64") == pytest.approx(3)
    assert significant_ulps([1e-20], [0.0], [1e-10], "float64") is None
    # a bound of 2^40 ulps of the value: its absolute terms rule, the figure would say nothing
    assert significant_ulps([1.0 + 2**-20], [1.0], [2**-12], "float64") is None
    assert significant_ulps([1.0 + 2**-40, 0.5], [1.0, 0.5], [2**-12, 1e-15], "float64") == 0.0
    assert significant_ulps([float("nan")], [1.0], [1e-12], "float64") == float("inf")


def _matrix(fake_module: str, **kwargs: Any) -> Any:
    entries = [
        BuiltinTarget("reference", "paper", (), "normspec reference"),
        BuiltinTarget(f"{fake_module}:scaled", "torch", (), "scaled"),
        BuiltinTarget(f"{fake_module}:raising", "torch", (), "raising"),
        BuiltinTarget("keras_zz", "keras", ("no_such_framework_zz",), "missing"),
    ]
    return run_matrix(entries, QUICK, **kwargs)


@pytest.fixture
def built(fake_module: str) -> Any:
    return _matrix(fake_module)


def test_matrix_cells_and_schema(built: Any) -> None:
    pytest.importorskip("jsonschema")
    document = matrix_to_json(built)
    validate_matrix(json.loads(json.dumps(document)))
    columns = {c["label"]: c for c in document["columns"]}
    assert set(columns) == {"normspec reference", "scaled", "raising"}
    # torch has the paper's BN parameters and no renorm: one run stands for both
    assert columns["scaled"]["also_under"] == ["paper"]
    assert columns["normspec reference"]["cells"]["bn.train.output"]["outcome"] == "pass"
    scaled = columns["scaled"]["cells"]["bn.train.output"]
    assert scaled["outcome"] == "fail" and scaled["max_ulps"] > 1e9  # 0.1% in float64
    assert scaled["ulp_dtype"] == "float64"
    reference = columns["normspec reference"]["cells"]["bn.train.output"]
    assert reference["ulp_dtype"] in ("float64", None)
    raising = {k: v["outcome"] for k, v in columns["raising"]["cells"].items()}
    assert raising["conv.io.shape_dtype"] == "error" and raising["bn.train.output"] == "skipped"
    assert columns["raising"]["report"]["profile"] == "torch"
    assert document["unavailable"] == [
        {
            "target": "keras_zz",
            "label": "missing",
            "profile": "keras",
            "reason": "no_such_framework_zz is not installed",
        }
    ]
    assert document["interrupted"] is False and document["pending"] == []


def test_matrix_schema_rejects_a_broken_document(built: Any) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    document = json.loads(json.dumps(matrix_to_json(built)))
    document["columns"][0]["report"]["results"][0]["outcome"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        validate_matrix(document)


def test_markdown_is_a_table_with_failures_and_escapes(built: Any) -> None:
    text = render_markdown(built)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 3 and all(line.count(" | ") == 4 for line in rows)
    assert "| `bn.train.output` | MUST | ✅" in text and "❌ fail" in text
    assert re.search(r"❌ fail [0-9.e+]+ float64 ulps", text)
    assert "reproduce: `normspec check" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "no\\_such\\_framework\\_zz is not installed" in text


def test_html_is_self_contained_and_escapes_implementation_text(built: Any) -> None:
    page = render_html(built)
    assert "<script>document" not in page and "<img src=x" not in page
    assert html.escape(PAYLOAD, quote=True)[:40] in page
    assert "scaled &lt;b&gt;bn&lt;/b&gt;" in page  # the implementation's own name
    # no network: nothing is loaded from elsewhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<svg" in page and page.count("<details") >= 2
    assert 'id="matrix"' in page and "Content-Security-Policy" in page


def test_write_matrix_writes_three_files(built: Any, tmp_path: Path) -> None:
    paths = write_matrix(built, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["report.html", "report.json", "report.md"]
    assert json.loads(paths["json"].read_text())["columns"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_deviations_in_the_matrix(fake_module: str, tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        "[[deviation]]\nclause = 'bn.train.output'\ncategory = 'known_bug'\nreason = 'x'\n"
        f"targets = ['{fake_module}:scaled']\n"
    )
    built = run_matrix(
        [
            BuiltinTarget(f"{fake_module}:scaled", "torch", (), "scaled"),
            BuiltinTarget("reference", "paper"),
        ],
        QUICK,
        deviations=load_deviations(path),
    )
    scaled, reference = built.columns
    assert scaled.result("bn.train.output").outcome == "declared"
    assert scaled.report.conformant
    assert reference.result("bn.train.output").outcome == "pass"
    assert "📝 declared deviation" in render_markdown(built)


def test_an_interruption_keeps_what_finished(
    fake_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the second implementation: the files hold the first, whole."""
    out = tmp_path / "out"
    original = matrix_module.check_implementation
    calls = {"n": 0}

    def interrupted_second(implementation: Any, options: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(implementation, options, **kwargs)

    monkeypatch.setattr(matrix_module, "check_implementation", interrupted_second)
    built = _matrix(fake_module, on_update=lambda m: write_matrix(m, out))
    assert built.interrupted and len(built.columns) == 1
    document = json.loads((out / "report.json").read_text())
    assert document["interrupted"] is True
    assert [c["label"] for c in document["columns"]] == ["normspec reference"]
    assert {"target": f"{fake_module}:raising", "profile": "torch"} in document["pending"]
    assert "Interrupted: partial results" in (out / "report.html").read_text()


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    code = main(
        [
            "report",
            "--out",
            str(out),
            "--implementations",
            "reference",
            "--max-examples",
            "2",
            "--clauses",
            "bn.train.*",
            "--dtype",
            "float64",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "[1/1] normspec reference under profile paper" in printed
    assert re.search(r"pass +bn\.train\.output", printed)
    assert (out / "report.md").read_text().startswith("## normspec conformance matrix")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report", "--implementations", "nope"], "unknown implementation"),
        (["report", "--implementations", "reference@nope"], "unknown profile"),
        (["report", "--max-examples", "0"], "at least 1"),
        (["report", "--clauses", "zz.*"], "matches no checked clause"),
        (["report", "--dtype", "float8"], "unknown dtype"),
    ],
)
def test_report_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_writes_what_finished(fake_module: str, tmp_path: Path) -> None:
    """A real Ctrl-C (SIGINT) while the second implementation runs: exit 130, whole files."""
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "normspec",
            "report",
            "--out",
            str(out),
            "--implementations",
            "reference",
            f"{fake_module}:slow@torch",
            "--max-examples",
            "2",
            "--dtype",
            "float64",
            "--clauses",
            "bn.*",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test run started in the background (nohup, `cmd &` in a
        # script) ignores SIGINT, and its children would inherit that
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "report.json").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            time.sleep(0.2)
        time.sleep(1.0)  # into the slow implementation's run
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    document = json.loads((out / "report.json").read_text())
    assert document["interrupted"] is True
    labels = [c["label"] for c in document["columns"]]
    assert labels[0] == "normspec reference"
    assert "Interrupted: partial results" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().rstrip().endswith("</html>")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
