"""The public adapter helper (normspec.adapters.framework) on tinyframe, a toy framework
normspec ships no adapter for: the README's dozen-line adapter is this fixture, a correct
layer is conformant through it, a library's mistakes show under their clauses, malformed
results are failures, and an inference-only layer is checked for what it promises."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from adapter_cases import FIXTURES  # puts tests/fixtures on sys.path

from normspec.adapters import Capabilities, LayerConfig, WrongOutput
from normspec.conformance.identify import identify
from normspec.conformance.runner import CheckOptions, check_implementation

tinyframe = importlib.import_module("tinyframe")
TinyFrame = importlib.import_module("tinyframe_adapter").TinyFrame

README = Path(__file__).resolve().parents[2] / "README.md"
CONFIG = LayerConfig(
    num_features=2, rank=3, feature_axis=1, dtype="float16", eps=1e-5, momentum=0.1
)


def outcomes(implementation: Any, clauses: str | None = None, **options: Any) -> dict[str, str]:
    options = {"max_examples": 10, **options}
    report = check_implementation(
        implementation, CheckOptions(profile="torch", clauses=clauses, **options)
    )
    return {r.clause_id: r.outcome for r in report.results}


def test_the_readme_shows_the_tested_adapter_in_about_a_dozen_lines() -> None:
    source = (FIXTURES / "tinyframe_adapter.py").read_text()
    assert source in README.read_text()
    (adapter,) = [node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)]
    statements = [node for node in ast.walk(adapter) if isinstance(node, ast.stmt)]
    assert len(statements) <= 14  # the class, 3 settings, 5 methods of one line each


def test_a_correct_layer_is_conformant_through_the_helper() -> None:
    caps = TinyFrame().capabilities()
    assert caps.dtypes == {"float64", "float32", "float16"}
    assert "bfloat16: TypeError: tinyframe has no dtype bfloat16" in caps.notes["dtypes"]
    found = outcomes(TinyFrame())
    bn = {c: o for c, o in found.items() if c.startswith(("bn.", "conv."))}
    assert set(bn.values()) == {"pass", "not_applicable"}
    assert (
        bn["bn.running.steps"] == bn["bn.backward.train.dx"] == bn["bn.accuracy.running"] == "pass"
    )


class SignSlip(tinyframe.BatchNorm):
    """Moves the running variance away from the batch's: it can go negative."""

    def update(self, mean: np.ndarray, var: np.ndarray, count: int) -> None:
        super().update(mean, -var, count)


class Unvalidated(tinyframe.BatchNorm):
    """Takes any momentum: one above 1 or below 0 can drive the running variance negative."""

    def validate(self, eps: float, momentum: float) -> None:
        pass


@pytest.mark.parametrize(
    ("layer", "clause"), [(SignSlip, "bn.running.var"), (Unvalidated, "bn.params.no_nan_state")]
)
def test_a_negative_running_variance_fails_its_clause_never_errs(
    layer: type, clause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state is reported as held: the clause judges the negative variance."""
    monkeypatch.setattr(tinyframe, "BatchNorm", layer)
    assert outcomes(TinyFrame(), clause, dtypes=["float64"])[clause] == "fail"


class Promoting(tinyframe.BatchNorm):
    def __call__(self, x: tinyframe.Tensor, *, training: bool) -> Any:
        return tinyframe.Tensor(super().__call__(x, training=training).data.astype(np.float32))


class Tupled(tinyframe.BatchNorm):
    def __call__(self, x: tinyframe.Tensor, *, training: bool) -> Any:
        return (super().__call__(x, training=training),)


class ShortGradient(tinyframe.BatchNorm):
    def backward(self, x: Any, dy: Any, *, training: bool) -> Any:
        dx, dweight, dbias = super().backward(x, dy, training=training)
        return dx, tinyframe.Tensor(dweight.data[:1]), dbias


@pytest.mark.parametrize(
    ("layer", "call", "message"),
    [
        (Promoting, "train_step", "the output has dtype float32, expected float16"),
        (Tupled, "infer", "the output is a tuple that to_numpy cannot convert"),
        (ShortGradient, "vjp", r"dgamma has shape \(1,\), expected \(2,\)"),
    ],
)
def test_malformed_results_are_wrong_output(
    layer: type, call: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tinyframe, "BatchNorm", layer)
    built = TinyFrame().make_layer(CONFIG)
    x = np.arange(6.0).reshape(3, 2, 1)
    with pytest.raises(WrongOutput, match=message):
        if call == "vjp":
            built.vjp(x, x, training=True)
        else:
            getattr(built, call)(x)


class Frozen(tinyframe.BatchNorm):
    """Inference only: a call normalizes with the running statistics whatever the mode."""

    def __call__(self, x: tinyframe.Tensor, *, training: bool) -> Any:
        return super().__call__(x, training=False)

    def backward(self, x: Any, dy: Any, *, training: bool) -> Any:
        return super().backward(x, dy, training=False)


class FrozenFrame(TinyFrame):
    name = "tinyframe frozen BatchNorm"
    supports = Capabilities(training=False, untracked=False, without_affine=False)


def test_a_declared_inference_only_layer_is_checked_for_what_it_promises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tinyframe, "BatchNorm", Frozen)
    found = outcomes(
        FrozenFrame(),
        "conv.io.*,bn.train.output,bn.running.*,bn.infer.*,bn.backward.*,bn.accuracy.*",
    )
    promised = (
        "conv.io.shape_dtype",
        "bn.infer.output",
        "bn.backward.infer",
        "bn.accuracy.inference",
    )
    assert {c: found[c] for c in promised} == dict.fromkeys(promised, "pass")
    for clause in (
        "bn.train.output",
        "bn.running.mean",
        "bn.backward.train.dx",
        "bn.accuracy.running",
    ):
        assert found[clause] == "not_applicable", clause
    report = check_implementation(
        FrozenFrame(), CheckOptions(profile="torch", clauses="bn.train.output", max_examples=2)
    )
    assert "does not support training" in report.results[0].message


def test_identify_does_not_train_a_layer_without_a_training_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Untrainable(Frozen):
        def __call__(self, x: tinyframe.Tensor, *, training: bool) -> Any:
            assert not training, "a layer without a training mode was trained"
            return super().__call__(x, training=False)

    monkeypatch.setattr(tinyframe, "BatchNorm", Untrainable)
    found = identify(FrozenFrame(), "frozen")
    assert "declares no training mode" in found.findings[0].evidence[0]
