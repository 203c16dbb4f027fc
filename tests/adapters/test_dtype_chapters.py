"""Dtypes are probed per chapter, and a dtype a chapter's layers fail in is not applicable
to that chapter's clauses alone (issue 14: one dtype must not mask the others).

tf_keras 2.21's renorm raises ``InvalidArgumentError`` in float64 (a float64 variable meets a
float32 ``sqrt(epsilon)``), while its plain BN works in float64. A class derived from
tf_keras' BatchNormalization is probed with a BN, a renorm and a ghost-batch layer: its
renorm clauses are not applicable in float64, with the error's line as the reason, and are
judged on the other dtypes, where a planted renorm bug is caught under its own clause with
the default dtypes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("tf_keras")

import tf_keras

from normspec.adapters.keras.keras_layer import KerasImplementation
from normspec.adapters.protocol import ALL_DTYPES
from normspec.conformance.identify import identify
from normspec.conformance.runner import CheckOptions, check_implementation

CLAUSES = "renorm.train.statistics,renorm.train.correction"


class DerivedBatchNormalization(tf_keras.layers.BatchNormalization):  # type: ignore[misc]
    """A user's class: tf_keras' layer, unchanged (it takes renorm=True)."""


class UnclippedD(tf_keras.layers.BatchNormalization):  # type: ignore[misc]
    """A planted renorm bug: the correction d is not clipped to ``dmax``
    (renorm.train.correction; renorm.train.statistics draws no clipped case)."""

    def _renorm_correction_and_moments(self, *args: Any, **kwargs: Any) -> Any:
        clipping = self.renorm_clipping
        self.renorm_clipping = {k: v for k, v in clipping.items() if k != "dmax"}
        try:
            return super()._renorm_correction_and_moments(*args, **kwargs)
        finally:
            self.renorm_clipping = clipping


def test_renorm_layers_are_probed_apart_from_bn() -> None:
    caps = KerasImplementation(DerivedBatchNormalization, "tf_keras").capabilities()
    assert caps.renorm and set(caps.dtypes) == set(ALL_DTYPES)  # BN works in float64
    refused = caps.refused_dtypes["renorm"]
    assert set(refused) == {"float64"}
    assert refused["float64"].startswith("InvalidArgumentError")
    assert "\n" not in refused["float64"]
    assert "batchnorm" not in caps.refused_dtypes


def _check(layer_class: type) -> Any:
    implementation = KerasImplementation(layer_class, "tf_keras")
    return check_implementation(implementation, CheckOptions(profile="tf_keras", clauses=CLAUSES))


def test_a_dtype_a_chapter_refuses_is_not_applicable_to_its_clauses_only() -> None:
    report = _check(DerivedBatchNormalization)
    assert report.dtypes == ALL_DTYPES
    for result in report.results:
        assert result.outcome == "pass", result.message
        assert result.dtype_outcomes == {
            "float64": "not_applicable",
            "float32": "pass",
            "float16": "pass",
            "bfloat16": "pass",
        }
        assert result.message.startswith("not applicable in float64: a tiny ")
        assert "InvalidArgumentError" in result.message


def test_a_planted_renorm_bug_is_caught_under_its_clause_with_the_default_dtypes() -> None:
    report = _check(UnclippedD)
    correction = next(r for r in report.results if r.clause_id == "renorm.train.correction")
    assert report.outcome("renorm.train.statistics") == "pass"
    assert correction.outcome == "fail", correction.message
    assert correction.dtype_outcomes["float64"] == "not_applicable"
    assert {f.dtype for f in correction.findings} <= {"float32", "float16", "bfloat16"}
    assert correction.dtype_outcomes["float32"] == "fail"


def test_identify_probes_renorm_in_a_dtype_its_renorm_layers_work_in() -> None:
    """``normspec identify``'s first dtype is float64, where tf_keras' renorm raises: its
    renorm probe moves to float32, and finds tf_keras' dialect."""
    found = identify(KerasImplementation(DerivedBatchNormalization, "tf_keras"), "derived")
    assert found.value("renorm") == "separate/std"
