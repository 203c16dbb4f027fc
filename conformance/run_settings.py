"""The settings of a run, validated once, when they are built.

``normspec check``, ``normspec report`` and the pytest plugin each build their settings from
their own options (:class:`~normspec.conformance.runner.CheckOptions`,
:class:`~normspec.conformance.matrix.MatrixOptions`, both :class:`RunSettings`); an invalid
value raises :class:`OptionsError` at once, naming the setting, which each front end spells
as its own option (``--timeout``, ``--normspec-timeout``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from normspec.adapters.protocol import ALL_DTYPES
from normspec.conformance.shrinking import DEFAULT_SHRINK_SECONDS

#: Seconds an implementation's call may take before it is reported hung.
DEFAULT_TIMEOUT = 60.0


class OptionsError(ValueError):
    """An invalid setting (an unknown profile, dtype or clause pattern, a value out of its
    range): a usage error. ``setting`` names it (``"timeout"``), ``None`` where the message
    says what it is."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting

    def spelled(self, option: str) -> str:
        """The message, with the setting spelled as the front end's ``option`` for it."""
        return f"{option} {self}" if self.setting else str(self)


@dataclass(frozen=True)
class RunSettings:
    """What every run shares: dtypes, clause patterns, the example budget, the seed, the
    per-call time limit, the time limit on shrinking one failure, the settings menu
    (entries per dtype, :mod:`normspec.conformance.menu`; 0: settings drawn freely;
    ``None``: the implementation's default), and the processes a run's clauses are spread
    over (:mod:`normspec.conformance.lanes`; the report is the same whatever their number)."""

    dtypes: Sequence[str] | None = None
    clauses: str | None = None
    max_examples: int | None = None
    seed: int = 0
    timeout: float = DEFAULT_TIMEOUT
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS
    menu: int | None = None
    jobs: int = 1

    def __post_init__(self) -> None:
        from normspec.conformance.runner import select_checks

        if self.max_examples is not None and self.max_examples < 1:
            raise OptionsError(f"must be at least 1, not {self.max_examples}", "max_examples")
        if not self.timeout > 0:
            raise OptionsError(f"must be positive, not {self.timeout:g}", "timeout")
        if not self.shrink_seconds > 0:
            raise OptionsError(f"must be positive, not {self.shrink_seconds:g}", "shrink_seconds")
        if self.menu is not None and self.menu < 0:
            raise OptionsError(
                f"takes 0 (settings drawn freely) or a number of entries, not {self.menu}", "menu"
            )
        if self.jobs < 1:
            raise OptionsError(f"takes a number of processes, at least 1, not {self.jobs}", "jobs")
        for name in self.dtypes or ():
            if name not in ALL_DTYPES:
                raise OptionsError(f"unknown dtype {name!r} (known: {', '.join(ALL_DTYPES)})")
        select_checks(self.clauses)


def shared_settings(settings: RunSettings) -> dict[str, Any]:
    """The :class:`RunSettings` fields of ``settings`` (of a subclass too), as keywords: what
    a run's options inherit from the settings of the command that starts it."""
    return {item.name: getattr(settings, item.name) for item in fields(RunSettings)}
