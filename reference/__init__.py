"""The float64 NumPy reference of Batch Normalization and Batch Renormalization.

Every function is pure: it returns new arrays and new state values and never modifies its
arguments. Docstrings cite the clauses of the specification each function defines.
"""

from normspec.reference.batchnorm import (
    Gradients,
    batch_statistics,
    inference_backward,
    inference_forward,
    inverse_std,
    train_backward,
    train_forward,
)
from normspec.reference.layer import Affine, BatchNormConfig, backward, inference, training_step
from normspec.reference.running import (
    VarianceEstimator,
    step_rate,
    update_running_statistics,
    variance_estimate,
)
from normspec.reference.state import BatchStatistics, RunningStatistics

__all__ = [
    "Affine",
    "BatchNormConfig",
    "BatchStatistics",
    "Gradients",
    "RunningStatistics",
    "VarianceEstimator",
    "backward",
    "batch_statistics",
    "inference",
    "inference_backward",
    "inference_forward",
    "inverse_std",
    "step_rate",
    "train_backward",
    "train_forward",
    "training_step",
    "update_running_statistics",
    "variance_estimate",
]
