"""The LayerNorm and RMSNorm chapter (layernorm.md) against its gallery and torch.

* Every known-bad implementation of ``gallery.family_bugs`` is caught under its primary
  clause (the run selects it with the clauses it depends on, as ``test_gallery`` does).
* The correct ones (``w`` and Gemma's ``1 + w`` RMSNorm among them) pass every ``ln.*`` and
  ``rms.*`` clause under 20 seeds at a reduced example budget.
* torch's modules and functions, and a user's function of ``F.layer_norm``'s signature, are
  recognised with no glue code and checked (in-process, a few examples).
"""

from __future__ import annotations

import math
import sys
import types

import pytest
from gallery.family_base import CORRECT, NumpyLayerNorm
from gallery.family_bugs import FAMILY_BUGS
from test_gallery import _summary, with_dependencies

from normspec import spec
from normspec.conformance.runner import CheckOptions, check_implementation

SEEDS = range(20)
REDUCED_EXAMPLES = 8


@pytest.mark.parametrize("bug", FAMILY_BUGS, ids=[b.__name__ for b in FAMILY_BUGS])
def test_bug_is_caught_under_its_clause(bug: type[NumpyLayerNorm]) -> None:
    primary = bug.expected_clauses[0]
    clauses = ",".join(with_dependencies(primary))
    report = check_implementation(bug(), CheckOptions(profile=bug.profile, clauses=clauses))
    assert report.outcome(primary) in ("fail", "error"), (
        f"{bug.__name__} not caught under {primary}; {_summary(report)}"
    )


def test_every_bug_names_known_clauses() -> None:
    known = {c.id for c in spec.clauses()}
    for bug in FAMILY_BUGS:
        assert bug.expected_clauses and set(bug.expected_clauses) <= known, bug.__name__


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("impl", CORRECT, ids=[c.__name__ for c in CORRECT])
def test_correct_implementation_passes(impl: type[NumpyLayerNorm], seed: int) -> None:
    options = CheckOptions(
        profile=impl.profile, seed=seed, clauses="ln.*,rms.*", max_examples=REDUCED_EXAMPLES
    )
    report = check_implementation(impl(), options)
    not_passed = [r for r in report.results if r.outcome not in ("pass", "not_applicable")]
    assert not not_passed, _summary(report)
    assert sum(r.outcome == "pass" for r in report.results) == 9


torch = pytest.importorskip("torch")


def _user_kernels() -> types.ModuleType:
    """A user's module ``mykernels`` with a function of ``F.layer_norm``'s signature."""
    module = types.ModuleType("mykernels")

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps}")
        if tuple(x.shape[x.dim() - len(normalized_shape) :]) != tuple(normalized_shape):
            raise ValueError(f"x of shape {tuple(x.shape)} does not end in {normalized_shape}")
        dims = tuple(range(-len(normalized_shape), 0))
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # half: float32 statistics
        mean = wide.mean(dims, keepdim=True)
        y = (wide - mean) * torch.rsqrt((wide - mean).square().mean(dims, keepdim=True) + eps)
        if weight is not None:
            y = y * weight.to(wide.dtype)
        if bias is not None:
            y = y + bias.to(wide.dtype)
        return y.to(x.dtype)

    module.layer_norm = layer_norm  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("torch.nn:LayerNorm", "layernorm"),
        ("torch.nn:RMSNorm", "rmsnorm"),
        ("torch.nn.functional:layer_norm", "layernorm"),
        ("torch.nn.functional:rms_norm", "rmsnorm"),
        ("mykernels:layer_norm", "layernorm"),
    ],
)
def test_torch_targets_are_recognised_and_pass(
    target: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normspec.adapters.registry import load_target

    monkeypatch.setitem(sys.modules, "mykernels", _user_kernels())
    implementation = load_target(target, "torch")
    capabilities = implementation.capabilities()
    assert getattr(capabilities, kind) and not capabilities.batchnorm
    # float16 is left out: torch's CPU LayerNorm keeps 1/sqrt(var + eps) in float16 and
    # its gradient of a constant slice is NaN for eps below 2.3e-10 (README)
    options = CheckOptions(
        profile="torch", dtypes=("float64", "float32", "bfloat16"), max_examples=6
    )
    report = check_implementation(implementation, options)
    prefix = "ln." if kind == "layernorm" else "rms."
    results = {r.clause_id: r.outcome for r in report.results if r.clause_id.startswith(prefix)}
    # torch's layers take any eps, 0, negative, NaN and infinity included (a SHOULD clause)
    eps_outcome = "pass" if target.startswith("mykernels") else "fail"
    assert results.pop(f"{prefix}params.eps") == eps_outcome, _summary(report)
    assert results and set(results.values()) == {"pass"}, _summary(report)


def test_the_command_line_checks_torch_layernorm_in_a_worker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from normspec.cli import main

    # (ln.backward.second_order fails in float16: README)
    clauses = ["--clauses", "ln.train.*,ln.backward.d*", "--max-examples", "8"]
    assert main(["check", "torch.nn:LayerNorm", *clauses]) == 0
    out = capsys.readouterr().out
    assert "calls in a worker process" in out and "4 passed, 0 failed" in out
    # float16: the gradient of a constant slice with eps 1e-12 is NaN (README)
    failing = ["--clauses", "ln.degenerate.constant", "--dtype", "float16"]
    assert main(["check", "torch.nn:LayerNorm", *failing]) == 1
    assert "non-finite where the reference is finite" in capsys.readouterr().out
