"""The reference's own accuracy, as batchnorm.md states it ("Reference accuracy").

Errors are measured against the 60-digit mpmath oracle (bn_oracle.py) in ulps of each
output's natural scale (defined in bn_bounds.py and in the chapter), beyond the underflow
allowance ``tiny (1 + |gamma| s)`` of the accuracy clauses. ``STATED`` holds the bounds the
chapter states for n <= 64 values per feature, whatever the conditioning (centred features,
means offset by 1e6 to 1e20 times the spread, constant features), rank, feature axis and
layout; ``STATED_LARGE`` those for the blocked summation of inputs of more than 2^12 values.
The figures the chapter gives as measured come from benchmarks/reference_accuracy.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from bn_measure import KINDS, Case, measure
from bn_strategies import cases
from hypothesis import given

#: ulps of the natural scale, n <= 64 (batchnorm.md, "Reference accuracy").
STATED = {
    "y": 4,
    "mean": 3,
    "var": 6,
    "dx": 6,
    "dgamma": 4,
    "dbeta": 4,
    "infer_y": 6,
    "infer_dx": 5,
    "infer_dgamma": 6,
    "infer_dbeta": 4,
    "running_mean": 3,
    "running_var": 4,
}

#: ulps of the natural scale, inputs of more than 2^12 values (blocked summation).
STATED_LARGE = {"y": 4, "mean": 3, "var": 6, "dx": 6, "dgamma": 6, "dbeta": 6}


def assert_stated(case: Case, stated: dict[str, float], kinds: tuple[str, ...] = KINDS) -> None:
    for kind, tally in measure(case, kinds).items():
        worst = max(tally.ulps, default=0.0)
        assert worst <= stated[kind], (
            f"{kind}: {worst:.3g} ulps > {stated[kind]}; {tally.worst_ulps}"
        )


@given(case=cases(offsets=(1e6, 1e8, 1e12, 1e16, 1e20)))
def test_stated_bounds_hold(case: Case) -> None:
    """Every output within its stated bound in ulps of its natural scale (n <= 64), for
    well-conditioned, ill-conditioned (mean offset up to 1e20 x spread) and constant
    features, ranks 2-5, any feature axis and layout."""
    assert_stated(case, STATED)


def large_case(seed: int, *, last: bool, offset: float) -> Case:
    """n = 8 x 25 x 25 = 5000 values of one feature: more than the 2^12 values the reference
    sums pairwise throughout, so the blocked summation runs, with a partial last block."""
    rng = np.random.default_rng(seed)
    shape = (8, 25, 25, 1) if last else (8, 1, 25, 25)
    spread = 10.0 ** rng.uniform(-3, 3)
    x = (rng.normal(size=shape) + offset * rng.choice([-1.0, 1.0])) * spread
    return Case(
        x=x,
        axis=3 if last else 1,
        gamma=rng.normal(size=1),
        beta=rng.normal(size=1),
        eps=spread**2 * 1e-3,
        dy=rng.normal(size=shape),
        running_mean=np.zeros(1),
        running_var=np.ones(1),
        steps=0,
        rate=0.1,
        estimator="unbiased",
    )


@pytest.mark.parametrize(("last", "offset"), [(False, 0.0), (True, 1e8)])
def test_stated_bounds_hold_for_large_inputs(last: bool, offset: float) -> None:
    """The blocked summation path (more than 2^12 values), NCHW and NHWC layouts."""
    case = large_case(7 if last else 3, last=last, offset=offset)
    assert case.x.size > 2**12
    assert_stated(case, STATED_LARGE, tuple(STATED_LARGE))
