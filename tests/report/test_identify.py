"""`normspec identify`: the dialect an implementation follows, from probes, with the numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from normspec.adapters.reference import ReferenceImplementation
from normspec.cli import main
from normspec.conformance.identify import identify
from normspec.reference.dialects import profile


@pytest.mark.parametrize(
    ("dialect", "rate", "variance", "cumulative", "best"),
    [
        ("torch", "rate", "unbiased", "true", "paper"),
        ("keras", "decay", "biased", "false", "keras"),
        ("flax", "decay", "biased", "false", "keras"),
    ],
)
def test_the_reference_in_each_dialect_is_recognised(
    dialect: str, rate: str, variance: str, cumulative: str, best: str
) -> None:
    found = identify(ReferenceImplementation(dialect), "reference")
    assert found.value("update_rate") == rate
    assert found.value("running_variance") == variance
    assert found.value("cumulative_average") == cumulative
    assert found.recommended == best
    assert dialect in found.profiles


def test_renorm_averages_are_probed() -> None:
    found = identify(ReferenceImplementation("tf_keras"), "reference")
    assert found.value("renorm") == "separate/std"
    assert found.recommended == "tf_keras"  # the profile that can check its renorm too
    paper = identify(ReferenceImplementation("paper"), "reference")
    assert paper.value("renorm") == "shared/std" and paper.recommended == "paper"


def test_the_fused_tf_keras_dialect_is_its_own_profile() -> None:
    """tf_keras' fused path: decay, but an unbiased running variance (tf_keras_fused)."""
    found = identify(ReferenceImplementation("tf_keras_fused"), "fused:impl")
    assert found.value("update_rate") == "decay"
    assert found.value("running_variance") == "unbiased"
    assert "tf_keras_fused" in found.profiles and "keras" not in found.profiles


def test_a_dialect_no_profile_has_is_named_with_the_closest() -> None:
    """Momentum as the rate, but a biased running variance: no library's profile."""
    odd = ReferenceImplementation("torch")
    odd.dialect = dataclasses.replace(profile("torch"), running_variance="biased")
    found = identify(odd, "odd:impl")
    assert found.value("update_rate") == "rate"
    assert found.value("running_variance") == "biased"
    assert found.profiles == []
    closest = dict(found.closest)
    assert closest["torch"] == ["running_variance"]
    assert "no profile matches" in found.render()


def test_the_evidence_has_the_numbers() -> None:
    text = identify(ReferenceImplementation("torch"), "reference").render()
    assert "running mean after one step [0.875, 0.25]" in text
    assert "alpha = 1 - momentum (decay) predicts [2.625, 0.75]" in text
    assert "running variance after the step [2.5, 3.75]" in text
    assert "check it with: normspec check reference --profile paper" in text


def test_torch_batchnorm_is_the_torch_dialect() -> None:
    pytest.importorskip("torch")
    from normspec.adapters.registry import load_target

    found = identify(load_target("torch.nn:BatchNorm2d", "paper"), "torch.nn:BatchNorm2d")
    assert (found.value("update_rate"), found.value("running_variance")) == ("rate", "unbiased")
    assert found.value("cumulative_average") == "true"
    assert found.value("step_counter") == "yes"
    assert {"paper", "torch"} <= set(found.profiles)


def test_identify_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["identify", "reference", "--profile", "keras"]) == 0
    out = capsys.readouterr().out
    assert "update_rate: decay" in out and "matching profiles: keras" in out
    assert main(["identify", "reference", "--profile", "torch", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["recommended_profile"] == "paper"
    assert {f["parameter"]: f["value"] for f in document["findings"]}["update_rate"] == "rate"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["identify", "no_such_module_zz:x"], "cannot import"),
        (["identify", "reference", "--profile", "nope"], "unknown profile"),
        (["identify"], "required"),
    ],
)
def test_identify_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("dialect", ["torch", "keras", "tf_keras"])
def test_the_running_average_and_momentum_domain_of_builtin_dialects(dialect: str) -> None:
    found = identify(ReferenceImplementation(dialect), "reference")
    assert found.value("running_average") == "plain"
    assert found.value("momentum_domain") == "[0, 1]"


def test_the_fused_tf_keras_path_writes_the_tf_keras_fused_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tf_keras' fused path (decay with an unbiased variance) matches the built-in
    tf_keras_fused; asked to, identify writes the file of what it measured, which has the
    built-in's parameters."""
    pytest.importorskip("tf_keras")
    path = tmp_path / "fused.toml"
    assert main(["identify", "tf_keras.fused", "--write-profile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "matching profiles: tf_keras_fused" in out
    assert f"wrote the profile it measured to {path} (profile tf_keras.fused)" in out
    written, builtin = profile(str(path)), profile("tf_keras_fused")
    assert dataclasses.replace(written, name=builtin.name, description="", source=None) == (
        dataclasses.replace(builtin, description="")
    )
