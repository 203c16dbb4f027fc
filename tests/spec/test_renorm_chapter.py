"""The renorm chapter: its clauses, the index, the CLI, and the reference's citations."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from normspec import cli, spec

EXPECTED = {
    "renorm.train.statistics": "MUST",
    "renorm.train.correction": "MUST",
    "renorm.train.pre_update": "MUST",
    "renorm.train.output": "MUST",
    "renorm.train.affine": "MUST",
    "renorm.train.reduces_to_bn": "MUST",
    "renorm.moving.initial": "MUST",
    "renorm.moving.mean": "MUST",
    "renorm.moving.average": "MUST",
    "renorm.moving.separate": "MUST",
    "renorm.moving.steps": "MUST",
    "renorm.moving.no_inference_update": "MUST",
    "renorm.infer.output": "MUST",
    "renorm.backward.train.dx": "MUST",
    "renorm.backward.train.dparams": "MUST",
    "renorm.backward.infer": "MUST",
    "renorm.schedule.step": "MUST",
    "renorm.schedule.constant": "MUST",
    "renorm.schedule.paper": "MUST",
    "renorm.schedule.switch": "MUST",
    "renorm.degenerate.single_value": "MUST",
    "renorm.degenerate.zero_variance": "MUST",
    "renorm.degenerate.empty_batch": "MUST",
    "renorm.degenerate.nonfinite_isolated": "MUST",
    "renorm.params.shape": "MUST",
    "renorm.params.invalid": "SHOULD",
    "renorm.params.sigma": "SHOULD",
    "renorm.params.no_nan_state": "MUST",
    "renorm.accuracy.forward": "SHOULD",
    "renorm.accuracy.inference": "SHOULD",
    "renorm.accuracy.backward": "SHOULD",
    "renorm.accuracy.moving": "SHOULD",
}


def _renorm_clauses() -> dict[str, str]:
    return {c.id: c.level for c in spec.clauses() if c.chapter == "renorm"}


def test_the_renorm_chapter_defines_its_clauses() -> None:
    assert _renorm_clauses() == EXPECTED


def test_the_published_index_lists_the_renorm_clauses() -> None:
    published = {item["id"]: item for item in spec.published_index() if item["chapter"] == "renorm"}
    current = {item["id"]: item for item in spec.clause_index() if item["chapter"] == "renorm"}
    assert published == current, "run python -m normspec.spec.build"


def test_normspec_spec_lists_and_prints_renorm_clauses(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spec"]) == 0
    listing = capsys.readouterr().out
    for clause_id in EXPECTED:
        assert re.search(rf"^{re.escape(clause_id)}\s", listing, re.MULTILINE), clause_id
    assert cli.main(["spec", "renorm.train.output"]) == 0
    assert "gamma * ((x_i - mu_B) / sigma_B * r + d) + beta" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["renorm.py", "schedules.py", "dialects.py"])
def test_clause_ids_cited_by_the_reference_exist(module: str) -> None:
    """Every ``renorm.*`` ID in the reference's docstrings names a clause (or a group of them)."""
    text = resources.files("normspec.reference").joinpath(module).read_text(encoding="utf-8")
    known = {c.id for c in spec.clauses()}
    cited = set(re.findall(r"\b(renorm\.[a-z_]+(?:\.[a-z_*]+)+)", text))
    # module attribute uses such as renorm.train_forward are not citations
    cited = {
        c
        for c in cited
        if c.split(".")[1]
        in {"train", "moving", "infer", "backward", "schedule", "degenerate", "params", "accuracy"}
    }
    for citation in cited:
        if citation.endswith(".*"):
            prefix = citation[:-1]
            assert any(k.startswith(prefix) for k in known), citation
        else:
            assert citation in known, citation
