"""The BN checks under the dialect parameters running_average and momentum_domain.

* The value clauses draw only momenta inside the profile's domain (free draws and menus);
  bn.params.invalid draws the ends it leaves out, and an implementation that accepts one
  (equinox 0.13.8 accepts momentum 1) fails it.
* A zero-debiased profile's states come with small step counters often, the hidden
  averages ``c_t`` times averages near the data.
* The checks tell the dialects apart: a plain implementation fails under the zero-debiased
  profile (bn.running.initial, bn.infer.output), the zero-debiased one under the plain
  profile of its convention (keras; bn.running.initial).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from gallery.base import KerasNumpyBatchNorm, ZeroDebiasedNumpyBatchNorm
from hypothesis import given, settings

from normspec.adapters.protocol import LayerConfig
from normspec.conformance.checks import load_builtin_checks
from normspec.conformance.menu import Menu
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.strategies import cases
from normspec.reference import debias_factor
from normspec.reference.dialects import profile

ZERO_DEBIASED = profile(ZeroDebiasedNumpyBatchNorm.profile)
CAPABILITIES = ZeroDebiasedNumpyBatchNorm().capabilities()


@settings(max_examples=300, database=None)
@given(case=cases(CAPABILITIES, ZERO_DEBIASED, ["float64", "float32"]))
def test_value_clauses_draw_momenta_inside_the_domain_and_debiasable_states(case: Any) -> None:
    assert case.config.momentum is not None and 0.0 <= case.config.momentum < 1.0
    assert case.state is not None
    factor = debias_factor(case.rate, case.state.steps)
    assert np.all(case.state.var >= 0) and 0 < factor <= 1


def test_zero_debiased_states_have_small_counters_often() -> None:
    steps: Counter[int] = Counter()

    @settings(max_examples=200, database=None)
    @given(case=cases(CAPABILITIES, ZERO_DEBIASED, ["float64"]))
    def draw(case: Any) -> None:
        steps[min(case.state.steps, 5)] += 1

    draw()
    assert sum(steps[t] for t in range(5)) >= 0.3 * sum(steps.values()), steps
    assert steps[0] and steps[1] and steps[5]


@pytest.mark.parametrize("seed", range(4))
def test_menus_hold_only_rates_inside_the_domain(seed: int) -> None:
    menu = Menu.generate(CAPABILITIES, ZERO_DEBIASED, seed, 8)
    assert all(ZERO_DEBIASED.allows_rate(entry.rate) for entry in menu.entries)
    assert 0.0 in {e.rate for e in Menu.generate(CAPABILITIES, profile("keras"), seed, 8).entries}


class AcceptsDecayOne(ZeroDebiasedNumpyBatchNorm):
    """Documents the decay in [0, 1) but accepts 1 (equinox 0.13.8 does)."""

    def validate_config(self, config: LayerConfig) -> None:
        KerasNumpyBatchNorm.validate_config(self, config)


def test_a_momentum_outside_the_domain_belongs_to_params_invalid() -> None:
    options = CheckOptions(profile=ZeroDebiasedNumpyBatchNorm.profile, clauses="bn.params.*")
    correct = check_implementation(ZeroDebiasedNumpyBatchNorm(), options)
    assert correct.outcome("bn.params.invalid") == "pass"
    accepting = check_implementation(AcceptsDecayOne(), options)
    invalid = next(r for r in accepting.results if r.clause_id == "bn.params.invalid")
    assert invalid.outcome == "fail" and "momentum=1.0 was accepted" in invalid.message
    # under a profile whose domain holds 1, the same implementation is not at fault
    plain = check_implementation(
        AcceptsDecayOne(), CheckOptions(profile="keras", clauses="bn.params.invalid")
    )
    assert plain.outcome("bn.params.invalid") == "pass"


def test_alpha_one_clauses_are_not_applicable_where_the_domain_leaves_it_out() -> None:
    no_alpha_one = profile("keras").__class__(
        **{**vars(profile("keras")), "name": "no_one", "momentum_domain": "(0, 1]"}
    )
    for clause in ("bn.train.statistics", "sync.train.statistics"):
        check = load_builtin_checks()[clause]
        reason = check.applies(CAPABILITIES, no_alpha_one, ("float64",))  # type: ignore[misc]
        assert reason is not None and "(0, 1]" in reason
        assert check.applies(CAPABILITIES, ZERO_DEBIASED, ("float64",)) is None  # type: ignore[misc]


@pytest.mark.parametrize(
    ("implementation", "claimed"),
    [
        (KerasNumpyBatchNorm, ZeroDebiasedNumpyBatchNorm.profile),
        (ZeroDebiasedNumpyBatchNorm, "keras"),
    ],
    ids=["plain under zero_debiased", "zero_debiased under plain"],
)
def test_the_checks_tell_the_running_averages_apart(implementation: Any, claimed: str) -> None:
    """Both fail bn.running.initial; inference tells them apart where the debias factor is
    far from 1 (small step counters, which the zero-debiased profile draws often)."""
    report = check_implementation(
        implementation(),
        CheckOptions(
            profile=claimed, clauses="bn.running.initial,bn.infer.output", max_examples=20
        ),
    )
    # the initial statistics tell them apart (under keras's profile the zero-debiased layer
    # also raises on momentum 1, which keras allows and it does not: an error beside the fail)
    initial = next(r for r in report.results if r.clause_id == "bn.running.initial")
    assert any(
        f.outcome == "fail" and f.message.startswith("initial ") for f in initial.findings
    ), initial.findings
    if claimed == ZeroDebiasedNumpyBatchNorm.profile:
        assert report.outcome("bn.infer.output") == "fail"


def test_inference_clauses_need_the_step_counter_under_zero_debiasing() -> None:
    from dataclasses import replace

    class NoCounter(ZeroDebiasedNumpyBatchNorm):
        def capabilities(self) -> Any:
            return replace(super().capabilities(), step_counter=False)

    report = check_implementation(
        NoCounter(), CheckOptions(profile=NoCounter.profile, clauses="bn.infer.*,bn.backward.infer")
    )
    result = next(r for r in report.results if r.clause_id == "bn.infer.output")
    assert result.outcome == "not_applicable" and "step counter" in result.message
    assert report.outcome("bn.backward.infer") == "not_applicable"
    assert report.outcome("bn.infer.untracked") == "pass"
