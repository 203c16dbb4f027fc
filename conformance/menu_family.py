"""A run's menu of LayerNorm and RMSNorm settings, for implementations that compile per
configuration (layernorm.md; README: "Implementations that compile per shape").

The family's counterpart of :class:`menu.Menu`, derived from the run's BN menu (its seed
and size), so that a run has one menu per dtype for every chapter. An entry fixes what a
program is compiled for: the input's leading axes and ``normalized_shape``, eps, and
whether the layer has a weight and a bias; values, parameters, cotangents and memory
layouts stay free.

The first entry is the simplest (one slice of one value, the profile's default eps), where
shrinking ends; ``size - 1`` others are drawn as free cases are (one to three normalized
axes of 1 to 4 values, up to two leading axes, batch 1 often, eps from
:data:`strategies_family.EPS_VALUES`; the second of two slices of two values at least);
then the variants the implementation supports (without affine parameters, from the first
entry and from the richest; the richest with its bias toggled) and :data:`LONG_ENTRIES`
entries whose slices are long (``ln.accuracy.forward``: one of the longest size, one of any,
each with up to two short axes beside it). A clause's :class:`FamilyWants` select the
entries that meet them (``simple``: of the first entries and the variants); when none does, the first :data:`menu.ADAPTED_ENTRIES` are adapted (eps replaced,
affine set, a leading axis added): each clause's shares (the default eps, the degenerate
slice's smallest eps, long slices, two slices at least) are kept at a bounded number of
programs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Generic, Protocol, TypeVar

import numpy as np

from normspec.conformance.menu import ADAPTED_ENTRIES

#: eps of the drawn entries (strategies_family.EPS_VALUES, the smallest included).
ENTRY_EPS: tuple[float, ...] = (1e-5, 1e-6, 1e-3, 0.25, 1.0, 1e-12)
#: Long normalized axes (strategies_family's long reductions) and entries with one.
LONG_SIZES: tuple[int, ...] = (64, 100, 257, 512)
LONG_ENTRIES = 2


@dataclass(frozen=True)
class FamilyWants:
    """What a clause asks of an entry: affine parameters (``None``: either), long slices,
    the fewest slices, a fixed eps (``None``: any); of a grouped entry (:mod:`menu_group`)
    the fewest values of a group."""

    affine: bool | None = True
    long_reductions: bool = False
    min_slices: int = 1
    eps: float | None = None
    min_group_values: int = 1


_S = TypeVar("_S")


class _Entry(Protocol):
    def meets(self, wants: FamilyWants) -> bool: ...

    def adapted(self: _S, wants: FamilyWants) -> _S: ...


E = TypeVar("E", bound=_Entry)


@dataclass(frozen=True)
class FamilyEntry:
    """One LayerNorm or RMSNorm configuration: a program of a compiling implementation."""

    leading: tuple[int, ...]
    normalized_shape: tuple[int, ...]
    eps: float
    affine: bool = True
    bias: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.leading, *self.normalized_shape)

    @property
    def slices(self) -> int:
        return int(np.prod(self.leading, dtype=np.int64))

    def meets(self, wants: FamilyWants) -> bool:
        return (
            wants.affine in (None, self.affine)
            and self.slices >= wants.min_slices
            and (wants.eps is None or self.eps == wants.eps)
        )

    def adapted(self, wants: FamilyWants) -> FamilyEntry:
        """The entry changed as little as possible to meet the wants."""
        affine = self.affine if wants.affine is None else wants.affine
        leading = self.leading
        if self.slices < wants.min_slices:
            leading = (*leading, wants.min_slices)
        return replace(
            self,
            leading=leading,
            eps=self.eps if wants.eps is None else wants.eps,
            affine=affine,
            bias=self.bias and affine,
        )


@dataclass(frozen=True)
class FamilyMenu(Generic[E]):
    """The entries one run draws every case's configuration of a family kind from
    (:class:`FamilyEntry`, or :class:`menu_group.GroupEntry`)."""

    entries: tuple[E, ...]
    variants: tuple[E, ...]
    long_entries: tuple[E, ...]

    def choices(self, wants: FamilyWants, *, simple: bool = False) -> list[E]:
        """The entries a clause draws from, the simplest first; ``simple``: of the first
        :data:`menu.ADAPTED_ENTRIES` and the variants only (a clause whose every example is
        a new program anyway: an input of the wrong shape, an invalid eps)."""
        if wants.long_reductions:
            pool = self.long_entries
        else:
            head = self.entries[:ADAPTED_ENTRIES] if simple else self.entries
            pool = (*head, *self.variants)
        meeting = [e for e in pool if e.meets(wants)]
        chosen = meeting or [e.adapted(wants) for e in pool[:ADAPTED_ENTRIES]]
        return list(dict.fromkeys(chosen))


@lru_cache(maxsize=64)
def family_menu(
    seed: int, size: int, default_eps: float, *, without_affine: bool, bias: bool
) -> FamilyMenu[FamilyEntry]:
    """The menu of ``size`` entries (at least one) and the variants, from ``seed`` alone;
    ``bias``: the implementation offers an elementwise bias."""
    rng = np.random.default_rng([seed, 0x464E])  # apart from the BN menu's stream
    eps = [float(e) for e in rng.permutation(ENTRY_EPS)]
    first = FamilyEntry((), (1,), default_eps, bias=bias)
    entries = [first]
    for k in range(1, max(size, 1)):
        axes = int(rng.integers(1, 4))
        normalized = tuple(int(s) for s in rng.integers(1, 5, axes))
        leading = tuple(int(s) if rng.uniform() < 0.5 else 1 for s in rng.integers(1, 4, 2))
        leading = leading[: int(rng.integers(0, 3))]
        if k == 1:  # two slices at least, of one short axis: a minimal example's shape
            normalized = (2,)
            if int(np.prod(leading, dtype=np.int64)) < 2:
                leading = (*leading, 2)
        with_bias = bias and bool(rng.integers(2))
        entries.append(FamilyEntry(leading, normalized, eps[(k - 1) % len(eps)], bias=with_bias))
    richest = max(entries, key=lambda e: int(np.prod(e.shape, dtype=np.int64)))
    variants: list[FamilyEntry] = []
    if without_affine:
        variants += [replace(e, affine=False, bias=False) for e in dict.fromkeys([first, richest])]
    if bias:
        variants.append(replace(richest, bias=not richest.bias))
    long_entries = []
    for k in range(LONG_ENTRIES):  # the longest slices first, then any long size
        base = entries[k % len(entries)]
        size = LONG_SIZES[-1] if k == 0 else LONG_SIZES[int(rng.integers(len(LONG_SIZES)))]
        sizes = [size, *(int(s) for s in rng.integers(1, 5, int(rng.integers(0, 3))))]
        rng.shuffle(sizes)
        long_entries.append(replace(base, normalized_shape=tuple(sizes)))
    return FamilyMenu(tuple(entries), tuple(variants), tuple(long_entries))


__all__ = ["FamilyEntry", "FamilyMenu", "FamilyWants", "family_menu"]
