"""Double backward of the normalization family (ln/rms/gn/in.backward.second_order).

* The known-bad kernels of ``gallery.family_second_order`` (a backward with the forward's
  saved statistics, or with a detached weight: right to first order) are caught under
  their clause for seeds 0 to 4 (float64, a reduced example budget); the correct kernels
  pass every clause of their layer.
* torch's own layers offer double backward (the capability probe) and pass the clause in
  float64, float32 and bfloat16 (float16 is the README's finding: NaN for a constant slice).
* An implementation without double backward is not applicable, with the probe's reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_gallery import _summary, with_dependencies

from normspec.conformance.runner import CheckOptions, check_implementation

torch = pytest.importorskip("torch")

from gallery import family_second_order as kernels  # noqa: E402

from normspec.adapters.registry import load_target  # noqa: E402
from normspec.adapters.torch.family import recognise as recognise_layer  # noqa: E402
from normspec.adapters.torch.grouped import recognise as recognise_grouped  # noqa: E402

BUG_EXAMPLES = 10
SEEDS = range(5)


def _implementation(function: Any) -> Any:
    return recognise_layer(function, "torch") or recognise_grouped(function, "torch")


@pytest.mark.parametrize(
    ("function", "clause"), kernels.BUGS, ids=[f.__name__ for f, _ in kernels.BUGS]
)
def test_bug_is_caught_under_its_clause_for_five_seeds(function: Any, clause: str) -> None:
    implementation = _implementation(function)
    assert implementation.capabilities().double_backward
    clauses = ",".join(with_dependencies(clause))
    for seed in SEEDS:
        options = CheckOptions(
            profile="torch",
            clauses=clauses,
            seed=seed,
            dtypes=("float64",),
            max_examples=BUG_EXAMPLES,
            shrink_seconds=0.5,
        )
        report = check_implementation(implementation, options)
        assert report.outcome(clause) == "fail", f"seed {seed}: {_summary(report)}"
        assert report.outcome(clause.replace("second_order", "dx")) == "pass", _summary(report)


@pytest.mark.parametrize(
    ("function", "prefix"), kernels.CORRECT, ids=[f.__name__ for f, _ in kernels.CORRECT]
)
def test_correct_kernel_passes(function: Any, prefix: str) -> None:
    options = CheckOptions(profile="torch", clauses=f"{prefix}.*", seed=1, max_examples=6)
    report = check_implementation(_implementation(function), options)
    assert report.outcome(f"{prefix}.backward.second_order") == "pass", _summary(report)
    failed = [r.clause_id for r in report.results if r.outcome not in ("pass", "not_applicable")]
    assert failed == [f"{prefix}.params.eps"] or not failed, _summary(report)


@pytest.mark.parametrize(
    ("target", "clause"),
    [
        ("torch.nn:LayerNorm", "ln.backward.second_order"),
        ("torch.nn:RMSNorm", "rms.backward.second_order"),
        ("torch.nn.functional:group_norm", "gn.backward.second_order"),
        ("torch.nn:InstanceNorm1d", "in.backward.second_order"),
    ],
)
def test_torch_layers_offer_and_pass_double_backward(target: str, clause: str) -> None:
    implementation = load_target(target, "torch")
    assert implementation.capabilities().double_backward
    options = CheckOptions(
        profile="torch", clauses=clause, dtypes=("float64", "float32", "bfloat16"), max_examples=6
    )
    report = check_implementation(implementation, options)
    assert report.outcome(clause) == "pass", _summary(report)


def test_without_double_backward_the_clause_is_not_applicable() -> None:
    """A kernel whose backward leaves autograd (computed in NumPy): nothing to differentiate."""

    class NumpyBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:  # type: ignore[override]
            ctx.save_for_backward(x)
            return torch.nn.functional.layer_norm(x, x.shape[-1:])

        @staticmethod
        def backward(ctx: Any, dy: Any) -> Any:  # type: ignore[override]
            (x,) = ctx.saved_tensors
            xs, g = x.detach().numpy(), dy.detach().numpy()
            xhat = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + 1e-5)
            dx = g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True)
            return torch.from_numpy(dx / np.sqrt(xs.var(-1, keepdims=True) + 1e-5))

    def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):  # type: ignore[no-untyped-def]
        return NumpyBackward.apply(x)

    implementation = _implementation(layer_norm)
    capabilities = implementation.capabilities()
    assert not capabilities.double_backward
    assert "not differentiable" in capabilities.notes["double_backward"]
    options = CheckOptions(profile="torch", clauses="ln.backward.second_order", max_examples=2)
    report = check_implementation(implementation, options)
    assert report.outcome("ln.backward.second_order") == "not_applicable"
