"""Ending a dtype's run at once where its examples are unusable.

A check discards an example it cannot judge (``reject()``: the state of
``bn.train.statistics`` did not move, a configuration refused). Hypothesis gives up on a
run only after 458 discarded examples without a usable one, each of them a call of the
implementation (under the ``paper`` profile ``flax.linen`` keeps its state at ``momentum=1``,
so ``bn.train.statistics`` and ``sync.train.statistics`` drew 460 examples per dtype, 76 s of
a report). :class:`Discards` ends the run after :data:`DISCARDED_IN_A_ROW` instead; the
verdict is the same, inconclusive (conformance.findings).
"""

from __future__ import annotations

import unittest
from collections.abc import Callable
from dataclasses import dataclass

from hypothesis.errors import HypothesisException, Unsatisfiable, UnsatisfiedAssumption

#: Examples discarded from the start of a dtype's run, none usable, after which the run
#: ends inconclusive: 99 % confidence that fewer than one in 20 would be usable (Hypothesis's
#: own limit, 458, is 99 % confidence of fewer than one in 100).
DISCARDED_IN_A_ROW = 90


class RunEnded(Unsatisfiable, unittest.SkipTest):
    """Ends a dtype's run at once: Hypothesis re-raises a test runner's skip as it is, with
    no shrinking and no replay. No example of the run could be judged (inconclusive, or not
    applicable for :class:`~normspec.conformance.context.NotOffered`)."""


class NothingUsable(RunEnded):
    """The first :data:`DISCARDED_IN_A_ROW` examples of a run were all discarded."""


@dataclass
class Discards:
    """The examples a dtype's run discarded before its first usable one (an example that
    passed or failed)."""

    discarded: int = 0
    usable: bool = False

    def run(self, example: Callable[[], None]) -> None:
        """Run one example; raise :class:`NothingUsable` at the limit."""
        if self.usable:
            example()
            return
        try:
            example()
        except UnsatisfiedAssumption:
            self.discarded += 1
            if self.discarded >= DISCARDED_IN_A_ROW:
                raise NothingUsable(
                    f"the first {self.discarded} examples drawn were all discarded"
                ) from None
            raise
        except HypothesisException:
            raise  # Hypothesis's own flow, or a run already ended
        except Exception:
            self.usable = True  # a failure is a judged example
            raise
        self.usable = True
