"""Implementations that take their process down on some inputs, as native kernels do.

Each is the correct :class:`~gallery.base.NumpyBatchNorm` with one defect that ends or stalls
the process on a family of inputs: a segmentation fault (``ctypes.string_at(0)`` standing for
a kernel reading past its buffer), an ``abort()`` (a failed C assertion), an ``exit()`` (a
library's fatal-error handler), a deadlock, an allocation without bound. Checked in a worker
process, the clause that meets the defect reports it (``crashed`` or ``hung``) with the
example shrunk, and the clauses after it run and pass.

``clauses`` is a check that meets the defect in its first clause; ``expected`` the outcome
of that clause and the text its message holds. :meth:`CrashingBatchNorm.defect` is what
happens on the inputs that meet it: :func:`raising_twin` makes the same implementation raise
there instead what a lost worker raises, to compare with the same failure in-process.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import ClassVar

import numpy as np

from gallery.base import NumpyBatchNorm, Work
from normspec.adapters.protocol import DTypeName, LayerConfig
from normspec.worker import WorkerCrashed, WorkerHung

#: Bytes the unbounded allocation takes per step.
CHUNK = 1 << 24


class CrashingBatchNorm(NumpyBatchNorm):
    """A correct implementation with a defect that ends or stalls its process."""

    #: a check whose first clause meets the defect, the clauses after it not
    clauses: ClassVar[str] = ""
    #: the outcome of the first clause, and a text its message holds
    expected: ClassVar[tuple[str, str]] = ("", "")

    def defect(self) -> None:
        """What happens on an input that meets the defect."""
        raise NotImplementedError


class SegfaultOnPairs(CrashingBatchNorm):
    """The statistics kernel reads past its buffer for a batch of two samples holding more
    than six values (the issue's example): a segmentation fault."""

    clauses = "bn.train.output,bn.infer.output,bn.backward.infer"
    expected = ("crashed", "crashed: SIGSEGV")

    def batch_statistics(self, x: Work, dtype: DTypeName) -> tuple[Work, Work]:
        if x.shape[0] == 2 and x.size > 6:
            self.defect()
        return super().batch_statistics(x, dtype)

    def defect(self) -> None:
        ctypes.string_at(0)


class AbortOnEmptyBatch(CrashingBatchNorm):
    """``assert(n > 0)`` in the layout conversion: an empty batch aborts the process."""

    clauses = "bn.degenerate.empty_batch,bn.degenerate.nonfinite_isolated,bn.params.shape"
    expected = ("crashed", "crashed: SIGABRT")

    def to_kernel_layout(self, x: Work, feature_axis: int) -> Work:
        if x.size == 0:
            self.defect()
        return super().to_kernel_layout(x, feature_axis)

    def defect(self) -> None:
        os.abort()


class ExitOnInvalidEps(CrashingBatchNorm):
    """A fatal-error handler that calls ``exit(3)`` when eps is not positive."""

    clauses = "bn.params.invalid,bn.accuracy.running"
    expected = ("crashed", "exited with status 3")

    def validate_config(self, config: LayerConfig) -> None:
        if not config.eps > 0:
            self.defect()
        super().validate_config(config)

    def defect(self) -> None:
        os._exit(3)


class DeadlockOnNaN(CrashingBatchNorm):
    """Normalization waits forever for a lock nobody releases when the input holds NaN."""

    clauses = "bn.degenerate.nonfinite_isolated,bn.params.shape"
    expected = ("hung", "hung after")

    def normalize(self, x: Work, mean: Work, inv_std: Work, gamma: Work, beta: Work) -> Work:
        if np.isnan(x).any():
            self.defect()
        return super().normalize(x, mean, inv_std, gamma, beta)

    def defect(self) -> None:
        threading.Event().wait()


class UnboundedInferenceBackward(CrashingBatchNorm):
    """The inference-mode backward sizes its workspace from a wrapped-around count for an
    input of more than four values, and allocates without bound."""

    clauses = "bn.backward.infer,bn.degenerate.zero_variance"
    expected = ("crashed", "out of memory")

    def backward_dx_inference(self, dy: Work, inv_std: Work, gamma: Work) -> Work:
        if dy.size > 4:
            self.defect()
        return super().backward_dx_inference(dy, inv_std, gamma)

    def defect(self) -> None:
        workspace = []
        while True:
            workspace.append(np.ones(CHUNK // 8))


def raising_twin(cls: type[CrashingBatchNorm]) -> CrashingBatchNorm:
    """``cls`` raising, on the inputs that meet its defect, what a lost worker raises
    (``normspec.worker.WorkerCrashed`` or ``WorkerHung``): checked in-process, the same
    outcome with no process lost."""
    lost = WorkerHung if cls.expected[0] == "hung" else WorkerCrashed

    def defect(self: CrashingBatchNorm) -> None:
        raise lost(f"{cls.expected[1]} (simulated in-process)")

    return type(f"Raising{cls.__name__}", (cls,), {"defect": defect})()


CRASHES: tuple[type[CrashingBatchNorm], ...] = (
    SegfaultOnPairs,
    AbortOnEmptyBatch,
    ExitOnInvalidEps,
    DeadlockOnNaN,
    UnboundedInferenceBackward,
)
