"""The float64 NumPy reference of Batch Normalization and Batch Renormalization.

Every function is pure: it returns new arrays and new state values and never modifies its
arguments. Docstrings cite the clauses of the specification each function defines.
"""

from normspec.reference import renorm, schedules
from normspec.reference.batchnorm import (
    Gradients,
    batch_statistics,
    inference_backward,
    inference_forward,
    inverse_std,
    train_backward,
    train_forward,
)
from normspec.reference.dialects import load_profile_file, profile, renorm_config
from normspec.reference.layer import Affine, BatchNormConfig, backward, inference, training_step
from normspec.reference.renorm import (
    RenormConfig,
    RenormCorrection,
    RenormDialect,
    RenormStatistics,
)
from normspec.reference.renorm import backward as renorm_backward
from normspec.reference.renorm import inference as renorm_inference
from normspec.reference.renorm import inference_backward as renorm_inference_backward
from normspec.reference.renorm import inference_forward as renorm_inference_forward
from normspec.reference.renorm import train_backward as renorm_train_backward
from normspec.reference.renorm import train_forward as renorm_train_forward
from normspec.reference.renorm import training_step as renorm_training_step
from normspec.reference.running import (
    RunningAverage,
    VarianceEstimator,
    debias_factor,
    inference_statistics,
    step_rate,
    update_running_statistics,
    variance_estimate,
)
from normspec.reference.schedules import (
    BN_BOUNDS,
    PAPER_SCHEDULE,
    ConstantSchedule,
    LinearRamp,
    RenormBounds,
    Schedule,
    SwitchSchedule,
)
from normspec.reference.state import BatchStatistics, RunningStatistics

__all__ = [
    "BN_BOUNDS",
    "PAPER_SCHEDULE",
    "Affine",
    "BatchNormConfig",
    "BatchStatistics",
    "ConstantSchedule",
    "Gradients",
    "LinearRamp",
    "RenormBounds",
    "RenormConfig",
    "RenormCorrection",
    "RenormDialect",
    "RenormStatistics",
    "RunningAverage",
    "RunningStatistics",
    "Schedule",
    "SwitchSchedule",
    "VarianceEstimator",
    "backward",
    "batch_statistics",
    "debias_factor",
    "inference",
    "inference_backward",
    "inference_forward",
    "inference_statistics",
    "inverse_std",
    "load_profile_file",
    "profile",
    "renorm",
    "renorm_backward",
    "renorm_config",
    "renorm_inference",
    "renorm_inference_backward",
    "renorm_inference_forward",
    "renorm_train_backward",
    "renorm_train_forward",
    "renorm_training_step",
    "schedules",
    "step_rate",
    "train_backward",
    "train_forward",
    "training_step",
    "update_running_statistics",
    "variance_estimate",
]
