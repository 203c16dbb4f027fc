"""Not applicable per dtype (issue 14: one dtype must not mask the others).

A clause that cannot be exercised in one dtype -- its chapter's tiny layer fails in it
(``Capabilities.refused_dtypes``, probed per chapter), or its ``applies`` says so of that
dtype alone -- is not applicable in that dtype and judged on the others; its summary is the
worst of its dtypes, and every report shows which dtype did not apply and why.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from normspec.adapters._common import (
    chapter_of,
    check_config,
    family_probe_config,
    probe_case,
    probe_dtypes,
)
from normspec.adapters.framework import ProbedImplementation
from normspec.adapters.protocol import (
    ALL_DTYPES,
    Capabilities,
    Chapter,
    Layer,
    LayerConfig,
    ReplicatedLayer,
    UnsupportedConfig,
)
from normspec.adapters.reference import ReferenceImplementation
from normspec.conformance.checks import Check
from normspec.conformance.matrix import Column, MatrixOptions, new_matrix
from normspec.conformance.report_html import render_html
from normspec.conformance.report_json import report_text
from normspec.conformance.report_junit import junit_xml
from normspec.conformance.report_markdown import render_markdown
from normspec.conformance.report_terminal import progress_line
from normspec.conformance.results import Report
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.reference.dialects import profile
from normspec.reference.schedules import ConstantSchedule

HALF_REFUSAL = "RuntimeError: no half kernel"
CLAUSES = "bn.train.output,bn.running.mean,ghost.train.output"


def _marked(chapter: Chapter, config: LayerConfig) -> LayerConfig | None:
    """A ghost layer marked by its virtual batch size; no renorm probe."""
    return replace(config, virtual_batch_size=2) if chapter == "ghost_batches" else config


def test_each_chapter_is_probed_apart() -> None:
    base = Capabilities(renorm=True, ghost_batches=True)
    calls: list[tuple[str, int | None]] = []

    def probe(config: LayerConfig, x: np.ndarray) -> str | None:
        calls.append((config.dtype, config.virtual_batch_size))
        if config.dtype == "bfloat16":
            raise TypeError("no bfloat16 at all")
        if config.dtype == "float16" and config.virtual_batch_size is not None:
            raise ValueError("ghost batches fail in float16\nsecond line")
        return None

    probed = probe_dtypes(base, probe, chapter_config=_marked)
    assert probed.dtypes == {"float64", "float32", "float16"}
    assert probed.refused_dtypes == {
        "ghost_batches": {"float16": "ValueError: ghost batches fail in float16"}
    }
    assert "bfloat16: TypeError: no bfloat16 at all" in probed.notes["dtypes"]
    assert ("float32", 2) in calls and ("float32", None) in calls  # the BN and ghost layers
    # a chapter failing wherever BN works fails for its configuration, not for a dtype
    everywhere = probe_dtypes(
        base, lambda c, x: "no" if c.virtual_batch_size else None, chapter_config=_marked
    )
    assert everywhere.dtypes == set(ALL_DTYPES) and not everywhere.refused_dtypes
    ghost = LayerConfig(2, 2, 1, "float16", 1e-5, 0.1, virtual_batch_size=2)
    with pytest.raises(UnsupportedConfig, match="ghost-batch layer fails in float16: ValueError"):
        check_config(probed, ghost)
    check_config(probed, replace(ghost, virtual_batch_size=None))  # BN in float16: fine
    check_config(probed, replace(ghost, dtype="float32"))


def test_a_clause_the_applies_rule_excludes_in_one_dtype_applies_in_the_others() -> None:
    def applies(caps: Capabilities, dialect: Any, dtypes: tuple[str, ...]) -> str | None:
        return "float16 lacks it" if "float16" in dtypes else None

    item = Check("bn.train.output", lambda ctx, data: None, applies=applies)
    caps, dialect = Capabilities(), profile("torch")
    assert item.not_applicable(caps, dialect, ALL_DTYPES) is None
    assert item.dtype_reasons(caps, dialect, ALL_DTYPES) == {"float16": "float16 lacks it"}
    assert item.not_applicable(caps, dialect, ("float16",)) == "float16 lacks it"


class HalfRefusedForBN:
    """The reference, whose BN layers (and no other chapter's) fail in float16."""

    def __init__(self) -> None:
        self.inner = ReferenceImplementation("paper")
        self.name = "reference, BN refused in float16"

    def capabilities(self) -> Capabilities:
        refused: dict[Chapter, dict[Any, str]] = {"batchnorm": {"float16": HALF_REFUSAL}}
        return replace(self.inner.capabilities(), refused_dtypes=refused)

    def versions(self) -> dict[str, str]:
        return {}

    def build(self, config: LayerConfig) -> Layer:
        check_config(self.capabilities(), config)
        return self.inner.build(config)


@pytest.fixture(scope="module")
def report() -> Report:
    options = CheckOptions(profile="paper", clauses=CLAUSES, max_examples=8, seed=3)
    return check_implementation(HalfRefusedForBN(), options)


def test_the_refused_dtype_is_not_applicable_to_its_chapters_clauses_only(report: Report) -> None:
    for result in report.results:
        if result.clause_id.startswith("ghost."):  # another chapter: every dtype checked
            assert set(result.dtype_outcomes.values()) == {"pass"}, result.dtype_outcomes
            assert result.message == ""
            continue
        assert result.outcome == "pass", result.message
        assert result.examples >= 9  # the 8 examples shared by the 3 dtypes it applies in
        assert result.dtype_outcomes["float16"] == "not_applicable"
        assert {result.dtype_outcomes[d] for d in ("float64", "float32", "bfloat16")} == {"pass"}
        assert result.message == (
            "not applicable in float16: a tiny batch-normalization layer fails in float16: "
            + HALF_REFUSAL
        )
    assert report.verdict == "conformant"


def test_every_report_shows_which_dtype_did_not_apply_and_why(report: Report) -> None:
    result = report.results[0]
    assert result.clause_id == "bn.train.output"
    assert HALF_REFUSAL in progress_line(result) and "float16 n/a" in progress_line(result)
    assert '"float16": "not_applicable"' in report_text(report)
    assert HALF_REFUSAL in report_text(report)
    assert f"{result.message} (float64 pass, float32 pass, float16 n/a" in junit_xml(report)
    matrix = new_matrix(MatrixOptions(clauses=CLAUSES))
    matrix.columns.append(Column("reference", "reference", "paper", report))
    assert "(n/a in float16)" in render_markdown(matrix)
    assert HALF_REFUSAL in render_html(matrix)


class WarmUpRefusedInFloat16(ReferenceImplementation):
    """The reference, whose renorm layers take no warm-up schedule in float16 alone (a
    configuration refused at build time in one dtype)."""

    def build(self, config: LayerConfig) -> Layer:
        if (
            config.dtype == "float16"
            and config.renorm is not None
            and not isinstance(config.renorm.schedule, ConstantSchedule)
        ):
            raise UnsupportedConfig("no warm-up schedule in float16")
        return super().build(config)


def test_a_configuration_refused_in_one_dtype_is_not_applicable_in_that_dtype_only() -> None:
    options = CheckOptions(profile="paper", clauses="renorm.schedule.paper", max_examples=8)
    result = check_implementation(WarmUpRefusedInFloat16("paper"), options).results[0]
    assert result.dtype_outcomes == {
        "float64": "pass",
        "float32": "pass",
        "float16": "not_applicable",
        "bfloat16": "pass",
    }
    assert result.outcome == "pass"
    assert result.message.startswith("not applicable in float16: the implementation does not")
    assert "no warm-up schedule in float16" in result.message


LN_REFUSAL = "RuntimeError: no LayerNorm kernel for float16"
SYNC_REFUSAL = "RuntimeError: no bfloat16 all-reduce"


class FamilyAndReplicasRefusals(ProbedImplementation):
    """The reference, probed per chapter, whose LayerNorm layers fail in float16 and whose
    replicated layers fail in bfloat16 (every other chapter works in every dtype)."""

    name = "reference, LayerNorm refused in float16, replicas in bfloat16"

    def __init__(self) -> None:
        self.inner = ReferenceImplementation("paper")

    def base_capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def make_layer(self, config: LayerConfig) -> Layer:
        if config.dtype == "float16" and chapter_of(config) == "layernorm":
            raise RuntimeError(LN_REFUSAL.partition(": ")[2] + "\nsecond line")
        return self.inner.build(config)

    def make_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedLayer:
        if config.dtype == "bfloat16":
            raise RuntimeError(SYNC_REFUSAL.partition(": ")[2])
        return self.inner.build_replicated(config, replicas)

    def build_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedLayer:
        check_config(self.capabilities(), config)
        return self.make_replicated(config, replicas)


def test_the_family_and_replicas_chapters_are_probed_apart() -> None:
    caps = FamilyAndReplicasRefusals().capabilities()
    assert caps.dtypes == set(ALL_DTYPES)
    assert caps.refused_dtypes == {
        "layernorm": {"float16": LN_REFUSAL},
        "replicas": {"bfloat16": SYNC_REFUSAL},
    }
    for chapter in ("rmsnorm", "groupnorm", "instancenorm"):  # their tiny layers work
        assert chapter_of(family_probe_config(chapter, probe_case(caps, "float32")[0])) == chapter
    layernorm = family_probe_config("layernorm", probe_case(caps, "float16")[0])
    with pytest.raises(UnsupportedConfig, match="tiny LayerNorm layer fails in float16"):
        check_config(caps, layernorm)
    check_config(caps, replace(layernorm, dtype="float32"))
    with pytest.raises(UnsupportedConfig, match="layernorm layers are not supported"):
        check_config(Capabilities(), replace(layernorm, dtype="float32"))


def test_a_dtype_the_family_or_replicas_chapter_refuses_is_not_applicable_there_only() -> None:
    clauses = "bn.train.output,ln.train.output,rms.train.output,gn.train.output,sync.train.output"
    report = check_implementation(
        FamilyAndReplicasRefusals(), CheckOptions(profile="paper", clauses=clauses, max_examples=8)
    )
    refused = {
        "ln.train.output": ("float16", f"a tiny LayerNorm layer fails in float16: {LN_REFUSAL}"),
        "sync.train.output": (
            "bfloat16",
            f"a tiny replicated layer fails in bfloat16: {SYNC_REFUSAL}",
        ),
    }
    for result in report.results:
        assert result.outcome == "pass", (result.clause_id, result.message)
        if result.clause_id not in refused:
            assert set(result.dtype_outcomes.values()) == {"pass"}, result.clause_id
            continue
        dtype, why = refused[result.clause_id]
        assert result.dtype_outcomes[dtype] == "not_applicable"
        assert {o for d, o in result.dtype_outcomes.items() if d != dtype} == {"pass"}
        assert result.message == f"not applicable in {dtype}: {why}"
