"""A profile file wherever a profile is named: ``normspec check``, ``report`` and ``identify``.

The implementation is the gallery's zero-debiased NumPy fixture (tests/gallery), whose dialect
no built-in profile has, under the profile file tests/gallery/zero_debiased.toml copied into
the working directory and named by a relative path, as a user would.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from normspec.cli import main
from normspec.conformance.report_json import schema
from normspec.reference.dialects import profile

GALLERY_PROFILE = Path(__file__).parents[1] / "gallery" / "zero_debiased.toml"
FIXTURE = """import sys
sys.path.insert(0, {tests!r})
from gallery.base import NumpyBatchNorm, ZeroDebiasedNumpyBatchNorm
from gallery.bugs import ZeroDebiasedPowerOffByOne
impl = ZeroDebiasedNumpyBatchNorm()
buggy = ZeroDebiasedPowerOffByOne()


# zero-debiased averages of the unbiased variance: a dialect no built-in profile has
class UnbiasedZeroDebiased(ZeroDebiasedNumpyBatchNorm):
    running_variance = NumpyBatchNorm.running_variance


unbiased = UnbiasedZeroDebiased()
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with the fixture module (zd_fixture) and the profile file (zd.toml)."""
    (tmp_path / "zd_fixture.py").write_text(FIXTURE.format(tests=str(Path(__file__).parents[1])))
    shutil.copy(GALLERY_PROFILE, tmp_path / "zd.toml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("zd_fixture", None)


def _invalid(workdir: Path, old: str, new: str) -> str:
    text = (workdir / "zd.toml").read_text()
    assert old in text
    (workdir / "bad.toml").write_text(text.replace(old, new))
    return "bad.toml"


_RMS = 'default_eps = 1e-6, scale = "1 + w", eps = "inside_root", cast = "after_weight"'
INVALID = [
    ("[batchnorm]\n", "[batchnorm]\ncolour = 1\n", "bad.toml: batchnorm.colour: unknown key"),
    ("renorm = false\n", "", "bad.toml: renorm: missing (a table, or false)"),
    ('"[0, 1)"', '"[0, 1]"', "bad.toml: batchnorm.momentum_domain: [0, 1] holds momentum 1"),
    ("default_eps = 1e-05", "default_eps = -1.0", "bad.toml: batchnorm.default_eps: must be"),
    ("format = 1", "format = ", "bad.toml is not valid TOML"),
    ("rmsnorm = false\n", "", "bad.toml: rmsnorm: missing (a table, or false)"),
    (
        "rmsnorm = false",
        f"rmsnorm = {{ {_RMS}, colour = 1 }}",
        "bad.toml: rmsnorm.colour: unknown key",
    ),
    ("rmsnorm = false", "rmsnorm = { default_eps = 1e-6 }", "bad.toml: rmsnorm.scale: missing"),
    (
        "rmsnorm = false",
        f"rmsnorm = {{ {_RMS.replace('1 + w', '2 * w')} }}",
        "rmsnorm.scale: must be",
    ),
    ("layernorm = false", "layernorm = { default_eps = 0 }", "layernorm.default_eps: must be"),
]
COMMANDS = [
    ["check", "zd_fixture:impl", "--profile", "{file}"],
    ["report", "--implementations", "zd_fixture:impl@{file}"],
    ["identify", "zd_fixture:impl", "--profile", "{file}"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("old", "new", "message"), INVALID, ids=[m for _, _, m in INVALID])
def test_an_invalid_profile_file_is_one_line_and_exit_2(
    workdir: Path,
    command: list[str],
    old: str,
    new: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = _invalid(workdir, old, new)
    assert main([word.format(file=file) for word in command]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "profile file bad.toml" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert main([word.format(file="missing.toml") for word in command]) == 2
    assert "cannot read profile file missing.toml" in capsys.readouterr().err


def test_check_names_the_file_and_its_reproduce_command_carries_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    argv = ["check", "zd_fixture:buggy", "--profile", "zd.toml", "--clauses", "bn.infer.output"]
    argv += ["--dtype", "float64", "--json", "r.json", "--junit", "r.xml"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "profile gallery_zero_debiased (profile file zd.toml)" in out
    assert "NOT CONFORMANT under profile gallery_zero_debiased (profile file zd.toml)" in out
    report = json.loads((workdir / "r.json").read_text())
    jsonschema.validate(report, schema())
    assert (report["profile"], report["profile_source"]) == ("gallery_zero_debiased", "zd.toml")
    failed = report["results"][0]
    assert failed["outcome"] == "fail"
    reproduce = failed["details"]["reproduce"]
    assert "--profile zd.toml --clauses bn.infer.output" in reproduce
    assert ET.parse(workdir / "r.xml").getroot().get("failures") == "1"
    assert main(shlex.split(reproduce)[1:]) == 1  # the command reproduces the failure
    passing = ["check", "zd_fixture:impl", "--profile", "zd.toml", "--clauses", "bn.*"]
    assert main([*passing, "--max-examples", "10"]) == 0


def test_report_checks_target_at_file_and_names_the_file(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("jsonschema")
    from normspec.conformance.matrix import validate_matrix

    argv = ["report", "--implementations", "zd_fixture:impl@./zd.toml", "--out", "out"]
    argv += ["--clauses", "bn.running.*,bn.infer.output", "--max-examples", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "gallery_zero_debiased (profile file ./zd.toml)" in out
    document = json.loads((workdir / "out" / "report.json").read_text())
    validate_matrix(document)
    own, paper = document["columns"]
    assert (own["profile"], own["profile_source"]) == ("gallery_zero_debiased", "./zd.toml")
    assert own["conformant"] and (paper["profile"], paper["profile_source"]) == ("paper", None)
    assert not paper["conformant"]  # the paper's running statistics are plain averages
    for page in ("report.md", "report.html"):
        assert "(profile file ./zd.toml)" in (workdir / "out" / page).read_text(), page


def test_identify_writes_the_profile_no_builtin_one_has(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fixture's dialect (zero-debiased averages of the unbiased variance, decay in
    [0, 1)) is no built-in profile's: identify writes ./normspec-profile.toml, which the
    fixture then passes under, keeps an existing file, and writes elsewhere (JSON too) when
    told."""
    assert main(["identify", "zd_fixture:unbiased"]) == 0
    out = capsys.readouterr().out
    assert "running_average: zero_debiased" in out and "momentum_domain: [0, 1)" in out
    assert "running_variance: unbiased" in out
    assert "no profile matches; the closest: haiku (differs in running_variance)" in out
    assert (
        "wrote the profile it measured to normspec-profile.toml (profile zd_fixture.unbiased): "
        "check it with: normspec check zd_fixture:unbiased --profile normspec-profile.toml"
    ) in out
    written = profile("normspec-profile.toml")
    expected = profile("zd.toml")
    assert written.running_variance == "unbiased"
    for parameter in ("update_rate", "running_average", "momentum_domain"):
        assert getattr(written, parameter) == getattr(expected, parameter), parameter
    assert (written.renorm, written.ghost, written.cumulative_average) == (None, None, False)
    text = (workdir / "normspec-profile.toml").read_text()
    assert 'running_average = "zero_debiased"  # measured' in text
    assert "default_eps = 1e-05  # not measured: haiku's" in text
    check = [
        "check",
        "zd_fixture:unbiased",
        "--profile",
        "normspec-profile.toml",
        "--clauses",
        "bn.*",
    ]
    assert main([*check, "--max-examples", "8"]) == 0
    capsys.readouterr()
    (workdir / "normspec-profile.toml").write_text("# mine\n")
    assert main(["identify", "zd_fixture:unbiased"]) == 0
    assert "normspec-profile.toml exists: not overwritten" in capsys.readouterr().out
    assert (workdir / "normspec-profile.toml").read_text() == "# mine\n"
    assert main(["identify", "zd_fixture:unbiased", "--write-profile", "p.json", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["matching_profiles"] == [] and "p.json" in document["profile_file"]
    assert profile("p.json").running_average == "zero_debiased"


def test_identify_matches_the_profile_file_it_is_given(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["identify", "zd_fixture:impl", "--profile", "zd.toml"]) == 0
    out = capsys.readouterr().out
    assert "matching profiles: gallery_zero_debiased, haiku, equinox_batch" in out
    assert "check it with: normspec check zd_fixture:impl --profile zd.toml" in out
    assert not (workdir / "normspec-profile.toml").exists()
