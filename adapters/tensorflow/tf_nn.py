"""TensorFlow's functional batch normalization: ``tf.nn.batch_normalization`` and the fused op.

Both functions keep no state: a layer here owns the variables a user's layer would (gamma,
beta, the running mean and variance; none of the running ones when untracked) and keeps
the running statistics the way TensorFlow documents for each function.

``tf.nn.batch_normalization`` (built-in targets ``tf.nn.batch_normalization``, ``tf.nn``):
training normalizes with ``tf.nn.moments`` over every axis but the feature axis (the biased
batch variance) and updates each running statistic as ``tf.compat.v1.train``'s moving
averages do, ``stat <- stat - (1 - momentum) * (stat - batch_stat)``: momentum is the decay
``1 - alpha``, the running variance is biased. That is the profile ``tf_keras`` (or
``keras``; they differ only in renorm). Inference normalizes with the running statistics;
an untracked layer with the batch statistics in inference too. Every tensor has the input's
dtype (the function takes one dtype), so ``parameters`` does not apply. Any rank, features
on axis 1 or last. The computation runs under ``tf.function`` traced once per rank, dtype,
feature axis and mode (``eps`` and the decay are tensor arguments).

``tf.compat.v1.nn.fused_batch_norm`` (built-in target ``tf.nn.fused_batch_norm``; TF 2 has no
``tf.nn.fused_batch_norm``): training passes the running statistics as ``mean`` and
``variance`` with ``exponential_avg_factor = momentum`` and keeps the running statistics it
returns, ``(1 - f) * running + f * batch`` with the *unbiased* batch variance: momentum is
``alpha`` itself and the running variance unbiased, the profile ``torch`` (a float momentum
only: no cumulative average). Inference passes them with ``is_training=False``; an untracked
layer calls it with ``is_training=True`` and no statistics. Rank 4 and 5 (``data_format``
NHWC/NDHWC for features last, NCHW/NCDHW for first, where the device has the kernel); the
input is float16, bfloat16 or float32 with float32 parameters and statistics. Called eagerly:
``epsilon`` and ``exponential_avg_factor`` are attributes of the op, so a traced function
would retrace for every value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from normspec.adapters.protocol import Capabilities, LayerConfig
from normspec.adapters.tensorflow._tf import (
    BatchNormVariables,
    Compiled,
    TFImplementation,
    TFLayer,
    parameter_dtype,
    tf,
    tf_dtype,
)

# -- tf.nn.batch_normalization --------------------------------------------------------------


def _broadcast(vector: tf.Tensor, rank: int, axis: int) -> tf.Tensor:
    shape = [1] * rank
    shape[axis] = -1
    return tf.reshape(vector, shape)


def _affine(params: Sequence[tf.Tensor], rank: int, axis: int) -> tuple[Any, Any]:
    if not params:
        return None, None
    gamma, beta = params
    return _broadcast(gamma, rank, axis), _broadcast(beta, rank, axis)


def _nn_batch(
    x: tf.Tensor, eps: tf.Tensor, *params: tf.Tensor, axis: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Normalize with the batch statistics of ``tf.nn.moments``; (y, mean, variance)."""
    rank = x.shape.rank
    axes = [a for a in range(rank) if a != axis]
    mean, variance = tf.nn.moments(x, axes, keepdims=True)
    scale, offset = _affine(params, rank, axis)
    y = tf.nn.batch_normalization(x, mean, variance, offset, scale, eps)
    return y, tf.reshape(mean, [-1]), tf.reshape(variance, [-1])


def _nn_train(
    x: tf.Tensor,
    eps: tf.Tensor,
    decay: tf.Tensor,
    running_mean: tf.Tensor,
    running_var: tf.Tensor,
    *params: tf.Tensor,
    axis: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A training step: (y, new running mean, new running variance)."""
    y, mean, variance = _nn_batch(x, eps, *params, axis=axis)
    # tf.compat.v1.train.assign_moving_average: variable -= (variable - value) * (1 - decay)
    new_mean = running_mean - (running_mean - tf.cast(mean, running_mean.dtype)) * decay
    new_var = running_var - (running_var - tf.cast(variance, running_var.dtype)) * decay
    return y, new_mean, new_var


def _nn_infer(
    x: tf.Tensor,
    eps: tf.Tensor,
    running_mean: tf.Tensor,
    running_var: tf.Tensor,
    *params: tf.Tensor,
    axis: int,
) -> tf.Tensor:
    rank = x.shape.rank
    scale, offset = _affine(params, rank, axis)
    mean = _broadcast(running_mean, rank, axis)
    variance = _broadcast(running_var, rank, axis)
    return tf.nn.batch_normalization(x, mean, variance, offset, scale, eps)


class NNFunctions:
    """The traced functions one implementation shares among its layers."""

    def __init__(self) -> None:
        self.batch = Compiled(lambda *a, **k: _nn_batch(*a, **k)[0], "tf.nn.batch")
        self.train = Compiled(_nn_train, "tf.nn.train")
        self.infer = Compiled(_nn_infer, "tf.nn.infer")

    @property
    def traces(self) -> int:
        return self.batch.traces + self.train.traces + self.infer.traces


def _variable(values: np.ndarray, dtype: tf.DType, name: str, trainable: bool) -> tf.Variable:
    return tf.Variable(tf.cast(tf.constant(values), dtype), name=name, trainable=trainable)


class NNLayer(TFLayer):
    """The variables of one layer and the calls of ``tf.nn.batch_normalization`` on them."""

    def __init__(self, config: LayerConfig, functions: NNFunctions) -> None:
        super().__init__(config)
        self.functions = functions
        n, kind = config.num_features, self.input_dtype
        self.gamma = _variable(np.ones(n), kind, "gamma", True) if config.affine else None
        self.beta = _variable(np.zeros(n), kind, "beta", True) if config.affine else None
        tracked = config.track_running_stats
        self.moving_mean = _variable(np.zeros(n), kind, "moving_mean", False) if tracked else None
        self.moving_variance = (
            _variable(np.ones(n), kind, "moving_variance", False) if tracked else None
        )

    def variables(self) -> BatchNormVariables:
        return BatchNormVariables(self.gamma, self.beta, self.moving_mean, self.moving_variance)

    def _scalar(self, value: float | None) -> tf.Tensor:
        # what TensorFlow makes of a Python float next to a tensor of the input's dtype
        return tf.constant(np.float64(np.nan if value is None else value), dtype=self.input_dtype)

    def forward(self, x: tf.Tensor, *, training: bool) -> object:
        config = self.config
        params = [] if self.gamma is None or self.beta is None else [self.gamma, self.beta]
        values = [tf.convert_to_tensor(p) for p in params]
        eps = self._scalar(config.eps)
        axis = config.feature_axis
        if self.moving_mean is None or self.moving_variance is None:
            return self.functions.batch(x, eps, *values, axis=axis)
        mean = tf.convert_to_tensor(self.moving_mean)
        variance = tf.convert_to_tensor(self.moving_variance)
        if not training:
            return self.functions.infer(x, eps, mean, variance, *values, axis=axis)
        momentum = config.momentum
        decay = self._scalar(None if momentum is None else 1.0 - momentum)
        y, new_mean, new_var = self.functions.train(
            x, eps, decay, mean, variance, *values, axis=axis
        )
        self.moving_mean.assign(new_mean)
        self.moving_variance.assign(new_var)
        return y


class BatchNormalizationFunctional(TFImplementation):
    """``normspec check tf.nn.batch_normalization --profile tf_keras``."""

    def __init__(self, profile: str = "tf_keras") -> None:
        super().__init__(profile, parameters="input")
        self.functions = NNFunctions()
        self.name = f"tf.nn.batch_normalization with tf.nn.moments (TensorFlow {tf.__version__})"

    def base_capabilities(self) -> Capabilities:
        return Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("last", "first"),
            cumulative_average=False,
            untracked=True,
            without_affine=True,
            step_counter=False,
            strided_input=True,
            notes={
                "cumulative_average": "a moving average with a float decay, as "
                "tf.compat.v1.train.assign_moving_average: no cumulative average",
                "step_counter": "the functions keep no step counter",
                "renorm": "tf.nn has no batch renormalization",
            },
        )

    def make_layer(self, config: LayerConfig) -> NNLayer:
        return NNLayer(config, self.functions)


# -- tf.compat.v1.nn.fused_batch_norm ------------------------------------------------------

_DATA_FORMATS = {
    (4, "first"): "NCHW",
    (4, "last"): "NHWC",
    (5, "first"): "NCDHW",
    (5, "last"): "NDHWC",
}


class FusedLayer(TFLayer):
    """The variables of one layer and the calls of ``fused_batch_norm`` on them."""

    def __init__(self, config: LayerConfig, parameters: tf.DType) -> None:
        super().__init__(config)
        n = config.num_features
        self.parameter_dtype = parameters
        self.gamma = _variable(np.ones(n), parameters, "scale", True) if config.affine else None
        self.beta = _variable(np.zeros(n), parameters, "offset", True) if config.affine else None
        tracked = config.track_running_stats
        self.moving_mean = _variable(np.zeros(n), parameters, "mean", False) if tracked else None
        self.moving_variance = (
            _variable(np.ones(n), parameters, "variance", False) if tracked else None
        )
        position = config.feature_position or "last"
        self.data_format = _DATA_FORMATS.get((config.rank, position), "NHWC")

    def variables(self) -> BatchNormVariables:
        return BatchNormVariables(self.gamma, self.beta, self.moving_mean, self.moving_variance)

    def forward(self, x: tf.Tensor, *, training: bool) -> object:
        config = self.config
        n = config.num_features
        if self.gamma is not None and self.beta is not None:
            scale, offset = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
        else:
            scale = tf.ones([n], self.parameter_dtype)
            offset = tf.zeros([n], self.parameter_dtype)
        fused = tf.compat.v1.nn.fused_batch_norm
        if self.moving_mean is None or self.moving_variance is None:
            y, _, _ = fused(
                x, scale, offset, epsilon=config.eps, data_format=self.data_format,
                is_training=True,
            )  # fmt: skip
            return y
        if not training:
            y, _, _ = fused(
                x, scale, offset, mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=config.eps,
                data_format=self.data_format, is_training=False,
            )  # fmt: skip
            return y
        factor = 1.0 if config.momentum is None else float(config.momentum)
        y, mean, variance = fused(
            x, scale, offset, mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance), epsilon=config.eps,
            data_format=self.data_format, is_training=True, exponential_avg_factor=factor,
        )  # fmt: skip
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return y


class FusedBatchNormFunctional(TFImplementation):
    """``normspec check tf.nn.fused_batch_norm --profile torch``.

    ``parameters``: float32 parameters and statistics for half inputs (the op's only
    choice; ``input`` is offered to see it fail).
    """

    def __init__(self, profile: str = "torch", *, parameters: str = "float32") -> None:
        super().__init__(profile, parameters="float32" if parameters == "float32" else "input")
        self.name = f"tf.compat.v1.nn.fused_batch_norm (TensorFlow {tf.__version__})"
        self._axes: tuple[str, ...] | None = None

    def base_capabilities(self) -> Capabilities:
        axes = self._feature_axes()
        notes = {
            "cumulative_average": "exponential_avg_factor is a float: no cumulative average",
            "step_counter": "the op keeps no step counter",
            "renorm": "TensorFlow's fused op has no batch renormalization",
            "ranks": "the fused op takes 4-D and 5-D inputs only",
        }
        if axes != ("last", "first"):
            notes["feature_axes"] = "the fused kernel of this device fails with the features "
            notes["feature_axes"] += "on axis 1 (NCHW)"
        return Capabilities(
            ranks=frozenset({4, 5}),
            feature_axes=axes,  # type: ignore[arg-type]
            cumulative_average=False,
            untracked=True,
            without_affine=True,
            step_counter=False,
            strided_input=True,
            notes=notes,
        )

    def _feature_axes(self) -> tuple[str, ...]:
        """Features last always; first where the device's kernel takes NCHW."""
        if self._axes is None:
            config = LayerConfig(
                num_features=2, rank=4, feature_axis=1, dtype="float32", eps=1e-3, momentum=0.5
            )
            x = np.arange(16.0).reshape(2, 2, 2, 2)
            try:
                layer = self.make_layer(config)
                layer.train_step(x)
                layer.infer(x)
                layer.vjp(x, np.ones_like(x), training=True)
                self._axes = ("last", "first")
            except Exception:  # the kernel does not take NCHW here
                self._axes = ("last",)
        return self._axes

    def make_layer(self, config: LayerConfig) -> FusedLayer:
        dtype = parameter_dtype(config.dtype, self.parameters)
        tf_dtype(config.dtype)
        return FusedLayer(config, dtype)
