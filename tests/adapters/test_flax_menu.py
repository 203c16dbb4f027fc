"""A Flax module is checked under a settings menu (conformance.menu): its bugs are still
caught, under their own clause, and a correct module still passes.

The buggy modules here are the third-party fixture with one mistake each, written for this
test: the menu was not tuned to them.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flax")
import adapter_cases  # noqa: F401  (puts tests/fixtures on sys.path)
import jax
import jax.numpy as jnp
from flax import linen as nn
from thirdparty_flax_bn import (
    ThirdPartyLinenBatchNorm,
    _batch_moments,
    _normalize,
    _validate,
)

from normspec.adapters.jax.flax_linen import FlaxLinenImplementation
from normspec.conformance.menu import DEFAULT_MENU_SIZE
from normspec.conformance.runner import CheckOptions, check_implementation


class OneMistake(ThirdPartyLinenBatchNorm):
    """The fixture's fields; ``mistake`` names the one thing its ``__call__`` gets wrong."""

    mistake: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        _validate(self.epsilon, self.momentum)
        use_running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        axis = self.axis % x.ndim
        features = x.shape[axis]
        values = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros(features, values.dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones(features, values.dtype))
        if use_running:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = _batch_moments(values, axis)
            count = values.size // features
            if self.mistake == "unbiased normalization":
                var = var * count / max(count - 1, 1)
            if not self.is_initializing():
                keep = 1 - self.momentum if self.mistake == "momentum as rate" else self.momentum
                update = var * count / max(count - 1, 1) if self.mistake == "unbiased" else var
                ra_mean.value = keep * ra_mean.value + (1 - keep) * mean
                ra_var.value = keep * ra_var.value + (1 - keep) * update
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        if self.mistake == "eps outside the root":
            var = (jnp.sqrt(var) + self.epsilon) ** 2 - self.epsilon
        out = self.dtype or x.dtype
        return _normalize(values, axis, mean, var, self.epsilon, scale, bias, out)


def _module(mistake: str) -> type[nn.Module]:
    return type(
        f"With{mistake.title().replace(' ', '')}",
        (OneMistake,),
        {
            "__annotations__": {"mistake": str},
            "mistake": mistake,
        },
    )


MISTAKES = {
    "momentum as rate": "bn.running.mean",
    "unbiased": "bn.running.var",
    "unbiased normalization": "bn.train.output",
    "eps outside the root": "bn.train.output",
}


def _check(module: type[nn.Module], clause: str) -> Any:
    implementation = FlaxLinenImplementation.recognise(module, "flax")
    assert implementation is not None
    options = CheckOptions(profile="flax", clauses=clause, dtypes=("float32",), max_examples=20)
    return check_implementation(implementation, options)


@pytest.mark.parametrize(("mistake", "clause"), MISTAKES.items(), ids=list(MISTAKES))
def test_a_mistake_is_caught_under_its_clause(mistake: str, clause: str) -> None:
    report = _check(_module(mistake), clause)
    assert report.menu == DEFAULT_MENU_SIZE
    assert report.outcome(clause) == "fail", report.results


def test_the_correct_module_passes_the_same_clauses() -> None:
    report = _check(ThirdPartyLinenBatchNorm, ",".join(sorted(set(MISTAKES.values()))))
    assert report.menu == DEFAULT_MENU_SIZE
    assert report.conformant and report.counts()["pass"] == 3, report.results
