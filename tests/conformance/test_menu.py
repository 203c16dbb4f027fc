"""The settings menu (conformance.menu): fixed by the seed, within the capabilities and a
clause's constraints, and what it buys: few distinct programs per check, bugs still caught."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from gallery.bugs import BUGS
from hypothesis import given, settings
from hypothesis import strategies as st
from program_recording import RecordsPrograms
from test_gallery import with_dependencies

from normspec.adapters.protocol import Capabilities
from normspec.adapters.reference import ReferenceImplementation
from normspec.cli import main
from normspec.conformance import strategies
from normspec.conformance.menu import (
    COMMON_RATES,
    DEFAULT_MENU_SIZE,
    Constraints,
    Menu,
    feature_axis_for,
    partner_rate,
)
from normspec.conformance.runner import CheckOptions, check_implementation, menu_size
from normspec.conformance.strategies_renorm import MAX_BATCH as RENORM_MAX_BATCH
from normspec.conformance.strategies_renorm import MAX_SPATIAL as RENORM_MAX_SPATIAL
from normspec.conformance.strategies_renorm import renorm_cases
from normspec.reference.dialects import profile

FLAX = profile("flax")
BROAD = Capabilities(feature_axes=("first", "last"), untracked=True, without_affine=True)


def test_a_menu_is_fixed_by_its_seed() -> None:
    first = Menu.generate(BROAD, FLAX, 7, 4)
    assert first == Menu.generate(BROAD, FLAX, 7, 4)
    assert first != Menu.generate(BROAD, FLAX, 8, 4)


def test_the_first_entry_is_the_simplest_setting() -> None:
    entry = Menu.generate(BROAD, FLAX, 3, 4).entries[0]
    assert (entry.rank, entry.position, entry.features, entry.batch) == (2, "first", 1, 2)
    assert (entry.rate, entry.eps) == (COMMON_RATES[0], FLAX.default_eps)


@pytest.mark.parametrize("seed", range(5))
def test_entries_spread_over_ranks_batches_and_variants(seed: int) -> None:
    menu = Menu.generate(BROAD, FLAX, seed, DEFAULT_MENU_SIZE)
    plain = [e for e in menu.entries if e.position == "first" and e.affine and e.tracked]
    assert len(plain) == DEFAULT_MENU_SIZE
    assert {e.rank for e in plain} == set(BROAD.ranks)
    assert {1, 2} <= {e.batch for e in plain}
    assert any(1 in e.spatial[: e.rank - 2] for e in plain if e.rank > 3)  # among others
    assert any(e.rate not in COMMON_RATES for e in plain)  # an arbitrary rate
    variants = [e for e in menu.entries if e not in plain]
    assert sorted((e.position, e.affine, e.tracked) for e in variants) == [
        ("first", False, True),
        ("first", True, False),
        ("last", True, True),
    ]


def test_a_narrow_implementation_gets_no_variants() -> None:
    narrow = Capabilities(ranks=frozenset({2}), without_affine=False)
    menu = Menu.generate(narrow, FLAX, 0, 3)
    assert len(menu.entries) == 3
    assert all(e.rank == 2 and e.affine and e.position == "first" for e in menu.entries)


def test_a_menu_has_at_least_one_entry() -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        Menu.generate(BROAD, FLAX, 0, 0)


@st.composite
def constraints(draw: st.DrawFn) -> Constraints:
    low = draw(st.integers(1, 4))
    fixed = draw(st.booleans())
    return Constraints(
        positions=draw(st.sampled_from([("first",), ("last",), ("first", "last")])),
        min_features=low,
        max_features=draw(st.integers(low, 4)),
        min_count=draw(st.integers(1, 3)),
        max_batch=draw(st.integers(1, 64)),
        max_spatial=draw(st.integers(1, 12)),
        long_reductions=draw(st.booleans()),
        fixed_rate=fixed,
        rate=draw(st.sampled_from([0.0, 0.3, 1.0])) if fixed else None,
        affine=draw(st.sampled_from([True, False, None])),
        tracked=draw(st.sampled_from([True, False, None])),
    )


@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 6), wanted=constraints())
def test_every_choice_meets_the_constraints(seed: int, size: int, wanted: Constraints) -> None:
    choices = Menu.generate(BROAD, FLAX, seed, size).choices(wanted)
    assert choices and len(set(choices)) == len(choices)
    for setting in choices:
        shape = setting.shape
        assert len(shape) == setting.rank and setting.rank in BROAD.ranks
        positions = [feature_axis_for(setting.rank, p) for p in wanted.positions]
        assert setting.feature_axis in positions
        assert shape[setting.feature_axis] == setting.features
        assert wanted.min_features <= setting.features <= wanted.max_features
        spatial = [n for a, n in enumerate(shape) if a not in (0, setting.feature_axis)]
        assert all(n <= wanted.max_spatial for n in spatial)
        per_sample = int(np.prod(spatial, dtype=np.int64))
        assert shape[0] * per_sample >= wanted.min_count
        assert shape[0] <= max(wanted.max_batch, -(-wanted.min_count // per_sample))
        if wanted.fixed_rate:
            assert setting.rate == wanted.rate
        assert wanted.affine in (None, setting.affine)
        assert wanted.tracked in (None, setting.tracked)


def test_sequence_shapes_keep_the_layer_and_start_with_its_own() -> None:
    menu = Menu.generate(BROAD, FLAX, 11, 4)
    shape = (6, 3, 2, 5)
    found = menu.shapes(shape, 1)
    assert found[0] == shape and len(set(found)) == len(found) > 1
    assert all(len(s) == 4 and s[1] == 3 and s[0] * s[2] * s[3] >= 2 for s in found)


class Compiling(RecordsPrograms, ReferenceImplementation):
    """The reference, declaring it compiles per shape, recording each (configuration, shape)
    it is called with: what a JAX implementation would compile."""

    operations = ("train_step", "infer", "vjp")

    def __init__(self) -> None:
        super().__init__("flax")


def test_a_menu_bounds_what_a_compiling_implementation_sees() -> None:
    """Distinct (configuration, operation, shape) triples over the BN and convention clauses:
    the menu's are bounded by its entries, the free draws' grow with the examples."""
    counts = {}
    for menu in (None, 0):
        implementation = Compiling()
        options = CheckOptions(profile="flax", clauses="bn.*,conv.*", max_examples=40, menu=menu)
        report = check_implementation(implementation, options)
        assert report.menu == (DEFAULT_MENU_SIZE if menu is None else 0)
        assert report.conformant
        counts[menu] = len(implementation.programs)
    per_dtype = counts[None] / 4
    # per dtype: each entry (variants and long ones included) in a few shapes and 3 operations
    assert per_dtype <= 3 * 3 * (DEFAULT_MENU_SIZE + 3 + 2)
    assert counts[0] > 4 * counts[None]


# bugs whose detection needs particular settings: a rank with spatial axes, the last feature
# axis, batch sizes of one or two, a momentum convention, an untracked layer
SETTING_SENSITIVE = (
    "UnbiasedWithBatchSize",
    "BatchAxisOnly",
    "FeatureLastReshape",
    "BatchOfOneUsesRunningStatistics",
    "MomentumAsDecay",
    "UntrackedInferenceUsesBuffers",
)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize(
    "bug", [b for b in BUGS if b.__name__ in SETTING_SENSITIVE], ids=lambda b: b.__name__
)
def test_setting_sensitive_bugs_are_caught_under_a_menu(bug: Any, seed: int) -> None:
    primary = bug.expected_clauses[0]
    options = CheckOptions(
        profile=bug.profile,
        clauses=",".join(with_dependencies(primary)),
        seed=seed,
        menu=DEFAULT_MENU_SIZE,
    )
    report = check_implementation(bug(), options)
    assert report.outcome(primary) in ("fail", "error"), report.results


@pytest.mark.parametrize(("examples", "size"), [(None, 4), (10, 4), (40, 4), (100, 8), (400, 40)])
def test_a_longer_run_gets_a_larger_menu(examples: int | None, size: int) -> None:
    compiling = Capabilities(compiles_per_shape=True)
    assert menu_size(CheckOptions(max_examples=examples), compiling) == size
    assert menu_size(CheckOptions(max_examples=examples), Capabilities()) == 0
    assert menu_size(CheckOptions(max_examples=examples, menu=2), Capabilities()) == 2


def test_the_cli_takes_and_reports_a_menu(tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "report.json"
    argv = ["check", "reference", "--profile", "flax", "--clauses", "bn.train.output"]
    assert main([*argv, "--menu", "3", "--max-examples", "4", "--json", str(out)]) == 0
    assert "settings from a menu of 3 per dtype" in capsys.readouterr().out
    assert json.loads(out.read_text())["menu"] == 3
    assert main([*argv, "--menu", "-1"]) == 2
    assert "--menu" in capsys.readouterr().err


TF_KERAS = profile("tf_keras")


@settings(max_examples=5, deadline=None)
@given(data=st.data(), seed=st.integers(0, 50))
def test_renorm_cases_take_their_settings_from_the_menu(data: Any, seed: int) -> None:
    """A renorm case's layer setting (shape, eps, rate, affine) is one of the menu's choices
    for its constraints, and its correction rate the partner of its rate among theirs (one
    correction rate per entry, another than the entry's)."""
    menu = Menu.generate(BROAD, TF_KERAS, seed, DEFAULT_MENU_SIZE)
    wanted = strategies.Wanted(
        strategies.Sizes(max_batch=RENORM_MAX_BATCH, max_spatial=RENORM_MAX_SPATIAL),
        positions=BROAD.feature_axes,
        affine=None,
    ).within(BROAD)
    offered = menu.choices(wanted)
    case = data.draw(
        renorm_cases(BROAD, TF_KERAS, ("float32",), strategies.Wanted(affine=None), menu=menu)
    )
    drawn = (case.x.shape, case.config.eps, case.rate, case.config.affine)
    assert drawn in {(s.shape, s.eps, s.rate, s.affine) for s in offered}
    assert case.config.renorm is not None
    rates = sorted({s.rate for s in offered if s.rate is not None})
    assert case.config.renorm.correction_rate == partner_rate(case.rate, rates)
    assert len(rates) == 1 or case.config.renorm.correction_rate != case.rate


def test_a_partner_rate_is_the_next_offered() -> None:
    assert partner_rate(0.1, [0.0, 0.1, 0.5]) == 0.5
    assert partner_rate(0.5, [0.0, 0.1, 0.5]) == 0.0
    assert partner_rate(0.3, [0.0, 0.1, 0.5]) == 0.0
    assert partner_rate(0.1, [0.1]) == 0.1


def _program(case: Any) -> tuple[Any, ...]:
    """What a compiled renorm layer is made of: its configuration (rates, eps, affine, the
    schedule's bounds and switch step, not the step counter) and the input's shape."""
    return (case.config, case.x.shape, case.x.dtype)


def _programs(strategy: st.SearchStrategy[Any]) -> set[tuple[Any, ...]]:
    """The programs of 200 drawn renorm cases."""
    seen: set[tuple[Any, ...]] = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(case=strategy)
    def draw(case: Any) -> None:
        seen.add(_program(case))

    draw()
    return seen


@pytest.mark.parametrize("name", ["paper", "tf_keras"])
def test_a_menu_bounds_the_renorm_programs(name: str) -> None:
    """A menu-drawn renorm run sees a few programs (bounds, switch steps and rates among the
    menu's); the free draws a new one nearly every example."""
    dialect = profile(name)
    menu = Menu.generate(BROAD, dialect, 0, DEFAULT_MENU_SIZE)
    programs = {
        use_menu: _programs(
            renorm_cases(BROAD, dialect, ("float32",), menu=menu if use_menu else None)
        )
        for use_menu in (True, False)
    }
    # constant bounds and switches among the menu's bounds (under independent clipping 3
    # forms, each with one of the menu's pairs), the paper's ramp, batch norm's bounds
    assert dialect.renorm is not None
    bounds = len(menu.renorm_bounds) if dialect.renorm.clipping == "symmetric" else 3
    offered = bounds * (1 + len(menu.switch_steps)) + 2
    schedules = {config.renorm.schedule for config, *_ in programs[True]}
    assert len(schedules) <= offered, schedules
    assert len({config.renorm.schedule for config, *_ in programs[False]}) > offered
    assert len(programs[True]) <= 40
    assert len(programs[False]) > 2 * len(programs[True])


class CompilingRenorm(RecordsPrograms, ReferenceImplementation):
    """The reference under tf_keras (two sets of moving statistics), declaring it compiles
    per shape: the renorm programs a JAX implementation would compile."""

    operations = ("train_step", "infer", "vjp")

    def __init__(self) -> None:
        super().__init__("tf_keras")


def _setting(config: Any) -> tuple[Any, ...]:
    """What a menu entry fixes of a renorm layer, less its features (and bounds): dtype,
    rank, feature axis, eps and the rates (its own and its partner correction rate)."""
    renorm = config.renorm
    rates = (renorm.rate, renorm.correction_rate)
    return (config.dtype, config.rank, config.feature_axis, config.eps, rates)


@pytest.mark.parametrize(
    "clause",
    [
        "renorm.degenerate.nonfinite_isolated",
        "renorm.train.correction",
        "renorm.train.pre_update",
    ],
)
def test_renorm_clauses_that_fix_rates_or_features_take_the_menus(clause: str) -> None:
    """Their rates and feature counts are the menu entries' (pre_update's large rate one per
    entry, 2 to 4 features those of the entries that have them): a setting per entry, each
    with its own feature count, not one per draw."""
    dtypes = ("float32", "float64")
    for seed in range(3):
        implementation = CompilingRenorm()
        options = CheckOptions(
            profile="tf_keras", clauses=clause, max_examples=40, dtypes=dtypes, seed=seed
        )
        report = check_implementation(implementation, options)
        assert report.menu == DEFAULT_MENU_SIZE
        assert report.outcome(clause) == "pass"
        features: dict[tuple[Any, ...], set[int]] = {}
        for config, *_ in implementation.programs:
            features.setdefault(_setting(config), set()).add(config.num_features)
        assert all(len(counts) == 1 for counts in features.values()), features
        entries = DEFAULT_MENU_SIZE + 2  # and the variants (other feature axis, no affine)
        for dtype in dtypes:
            assert len([s for s in features if s[0] == dtype]) <= entries, features
