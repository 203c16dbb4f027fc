"""Double backward of the JAX family adapters (*.backward.second_order): jax.grad of ``S``
through the layer's jax.vjp, checked against the reference's differences (few examples: a
program is compiled per configuration)."""

from __future__ import annotations

import pytest

from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation

pytest.importorskip("flax")


@pytest.mark.parametrize(
    ("target", "clause"),
    [
        ("flax.linen:RMSNorm", "rms.backward.second_order"),
        ("flax.linen:GroupNorm", "gn.backward.second_order"),
    ],
)
def test_flax_layers_offer_and_pass_double_backward(target: str, clause: str) -> None:
    implementation = load_target(target, "flax")
    assert implementation.capabilities().double_backward
    options = CheckOptions(
        profile="flax", clauses=clause, dtypes=("float64", "float32"), max_examples=4
    )
    report = check_implementation(implementation, options)
    assert report.outcome(clause) == "pass", [r.findings for r in report.results]
