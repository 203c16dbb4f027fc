"""The checks: one Hypothesis property (or state machine) per clause of the specification.

A check is registered with :func:`check`; the runner executes the registered checks in
dependency order. Importing this package registers every built-in check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from normspec.adapters._common import refused_dtype
from normspec.adapters.protocol import Capabilities, Chapter, DTypeName
from normspec.conformance.context import Bounds, CheckContext
from normspec.reference.dialects import Dialect

#: A check body: draws from ``data`` and raises on a violation (a stateful check returns
#: its state-machine class instead).
Body = Callable[[CheckContext, Any], Any]


@dataclass(frozen=True)
class Check:
    """How one clause is checked.

    ``needs``: capability flags that must be set for the clause to apply.
    ``depends_on``: clauses whose failure makes this result meaningless (reported skipped).
    ``stateful``: the body runs a Hypothesis state machine instead of drawing one case.
    ``training``: the check needs a training step (not applicable to an inference-only
    implementation, ``Capabilities.training``); a check without one says ``False``.
    ``bounds``: the bounds its results are held to (:attr:`CheckContext.bounds`).
    """

    clause_id: str
    body: Body
    needs: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    stateful: bool = False
    applies: Callable[[Capabilities, Dialect, tuple[DTypeName, ...]], str | None] | None = None
    training: bool = True
    bounds: Bounds = "value"

    @property
    def chapter(self) -> Chapter:
        """The chapter whose layers the clause is checked on (its dtypes probed apart)."""
        return CHAPTERS.get(self.clause_id.partition(".")[0], "batchnorm")

    def not_applicable(
        self, capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
    ) -> str | None:
        """Why the clause does not apply to this implementation in any of ``dtypes`` (the
        reason where all dtypes share one), or ``None`` if it applies in one at least."""
        prefix = self.clause_id.partition(".")[0]
        kind = CHAPTER_CAPABILITY.get(prefix, "batchnorm")
        for flag in (kind, *self.needs, *(("training",) if self.training else ())):
            if not getattr(capabilities, flag):
                note = capabilities.notes.get(flag, "")
                return f"the implementation does not support {flag.replace('_', ' ')}" + (
                    f" ({note})" if note else ""
                )
        if not dtypes:
            return self.applies(capabilities, dialect, dtypes) if self.applies else None
        reasons = self.dtype_reasons(capabilities, dialect, dtypes)
        if len(reasons) < len(dtypes):
            return None
        if len(set(reasons.values())) == 1:
            return next(iter(reasons.values()))
        return "; ".join(f"{dtype}: {reason}" for dtype, reason in reasons.items())

    def dtype_reasons(
        self, capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
    ) -> dict[DTypeName, str]:
        """Per dtype of ``dtypes`` where the clause cannot be exercised, why: its chapter's
        layers fail in it (``Capabilities.refused_dtypes``), or ``applies`` says so of that
        dtype alone. The clause is judged on the other dtypes (not applicable per dtype)."""
        reasons: dict[DTypeName, str] = {}
        for dtype in dtypes:
            reason = refused_dtype(capabilities, self.chapter, dtype)
            if reason is None and self.applies is not None:
                reason = self.applies(capabilities, dialect, (dtype,))
            if reason is not None:
                reasons[dtype] = reason
        return reasons


#: The capability a clause's chapter needs, by the clause ID's first part (else batchnorm).
CHAPTER_CAPABILITY: dict[str, str] = {
    "renorm": "renorm",
    "ln": "layernorm",
    "rms": "rmsnorm",
    "gn": "groupnorm",
    "in": "instancenorm",
}
#: The chapter a clause's layers belong to, by the clause ID's first part (else batchnorm).
CHAPTERS: dict[str, Chapter] = {
    "renorm": "renorm",
    "ghost": "ghost_batches",
    "sync": "replicas",
    "ln": "layernorm",
    "rms": "rmsnorm",
    "gn": "groupnorm",
    "in": "instancenorm",
}

CHECKS: dict[str, Check] = {}


def check(
    clause_id: str,
    *,
    needs: tuple[str, ...] = (),
    depends_on: tuple[str, ...] = (),
    stateful: bool = False,
    applies: Callable[[Capabilities, Dialect, tuple[DTypeName, ...]], str | None] | None = None,
    training: bool = True,
    bounds: Bounds | None = None,
) -> Callable[[Body], Body]:
    """Register ``body`` as the check of ``clause_id``; ``bounds`` defaults to the accuracy
    clauses' for a clause of an accuracy section (``*.accuracy.*``), else the value ones'."""
    held_to: Bounds = bounds or ("accuracy" if ".accuracy." in clause_id else "value")

    def register(body: Body) -> Body:
        if clause_id in CHECKS:
            raise ValueError(f"clause {clause_id} already has a check")
        CHECKS[clause_id] = Check(
            clause_id, body, needs, depends_on, stateful, applies, training, held_to
        )
        return body

    return register


def load_builtin_checks() -> dict[str, Check]:
    """Import the modules that register the built-in checks; return the registry."""
    from normspec.conformance.checks import (  # noqa: F401
        batchnorm,
        conventions,
        degenerate,
        family,
        ghost,
        renorm,
        renorm_degenerate,
        renorm_schedules,
        replicas,
        running_sequence,
    )

    return CHECKS
