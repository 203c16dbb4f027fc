"""The GroupNorm and InstanceNorm menu (conformance.menu_group).

* A menu is fixed by its seed, starts with the simplest entry (one value per group, the
  profile's default eps), has two groups in its second, long spatial axes in its long
  entries, and every choice meets a clause's wants.
* A GroupNorm run of an implementation that compiles per configuration sees a bounded number
  of (configuration, operation, shape) programs, far fewer than drawn freely, and passes.
* Every bug of the grouped gallery is still caught under its clause with a menu.
"""

from __future__ import annotations

from typing import Any

import pytest
from gallery.family_base import NumpyGroupNorm
from gallery.family_bugs import GROUP_BUGS
from hypothesis import given, settings
from hypothesis import strategies as st
from program_recording import RecordsPrograms
from test_gallery import with_dependencies
from test_group_gallery import BUG_EXAMPLES, HALF

from normspec.conformance.menu import ADAPTED_ENTRIES, DEFAULT_MENU_SIZE
from normspec.conformance.menu_family import LONG_ENTRIES, LONG_SIZES, FamilyWants
from normspec.conformance.menu_group import group_menu
from normspec.conformance.runner import CheckOptions, check_implementation


def _menu(seed: int, size: int = DEFAULT_MENU_SIZE, instance: bool = False) -> Any:
    ranks = (1, 2, 3) if instance else (0, 1, 2, 3)
    return group_menu(seed, size, 1e-5, instance=instance, spatial_ranks=ranks, without_affine=True)


def test_a_group_menu_is_fixed_by_its_seed_and_starts_simple() -> None:
    assert _menu(7) == _menu(7) != _menu(8)
    first, channel, second = _menu(7).entries[:3]
    assert (first.shape, first.eps, first.affine, first.group_values) == ((1, 1), 1e-5, True, 1)
    assert (channel.shape, channel.eps) == ((1, 1, 2), 1e-5)
    assert second.groups >= 2 and second.width == 2
    assert _menu(7, instance=True).entries[0].shape == (1, 1, 2)
    assert {e.affine for e in _menu(7).variants} == {False}
    assert len(_menu(7).long_entries) == LONG_ENTRIES
    assert all(set(e.spatial) & set(LONG_SIZES) for e in _menu(7).long_entries)


WANTS = st.builds(
    FamilyWants,
    affine=st.sampled_from([None, True, False]),
    long_reductions=st.booleans(),
    min_slices=st.sampled_from([1, 2]),
    eps=st.sampled_from([None, 1e-5, 1e-12, 0.5]),
    min_group_values=st.sampled_from([1, 2]),
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 1000),
    size=st.integers(1, 8),
    wants=WANTS,
    simple=st.booleans(),
    instance=st.booleans(),
)
def test_every_choice_meets_the_wants(
    seed: int, size: int, wants: FamilyWants, simple: bool, instance: bool
) -> None:
    menu = _menu(seed, size, instance)
    chosen = menu.choices(wants, simple=simple)
    assert chosen and all(e.meets(wants) for e in chosen)
    pool = menu.long_entries if wants.long_reductions else (*menu.entries, *menu.variants)
    assert len(chosen) <= len(pool)


class Compiling(RecordsPrograms, NumpyGroupNorm):
    """The correct GroupNorm, declaring it compiles per configuration, recording each
    (configuration, operation, shape) it runs: what a JAX implementation compiles."""


def test_a_menu_bounds_the_programs_of_a_group_run() -> None:
    """Per dtype: each entry (variants, long and adapted ones included) in two operations,
    the empty batch's and the invalid-parameter clauses' few programs each."""
    counts = {}
    for menu in (None, 0):
        implementation = Compiling()
        options = CheckOptions(profile="torch", clauses="gn.*", max_examples=40, menu=menu)
        report = check_implementation(implementation, options)
        assert report.conformant, report.results
        counts[menu] = len(implementation.programs)
    entries = DEFAULT_MENU_SIZE + 1 + 3 + LONG_ENTRIES + 3 * ADAPTED_ENTRIES
    # params.shape: 3 sizes; params.eps: 4 values; params.groups: ten group counts at most
    invalid = (ADAPTED_ENTRIES + 3) * (3 + 4) + 10
    assert counts[None] / 4 <= 2 * entries + invalid  # measured: 32 (free draws: 113)
    assert counts[0] > 3 * counts[None]


@pytest.mark.parametrize("bug", GROUP_BUGS, ids=lambda b: b.__name__)
def test_group_bugs_are_caught_under_a_menu(bug: type[NumpyGroupNorm]) -> None:
    primary = bug.expected_clauses[0]
    options = CheckOptions(
        profile=bug.profile,
        clauses=",".join(with_dependencies(primary)),
        dtypes=("float16",) if bug in HALF else ("float64",),
        max_examples=BUG_EXAMPLES,
        shrink_seconds=0.5,
        menu=DEFAULT_MENU_SIZE,
    )
    report = check_implementation(bug(), options)
    assert report.outcome(primary) in ("fail", "error"), report.results
