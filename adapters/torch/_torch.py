"""What the PyTorch adapters share: arrays and layouts, dtypes, devices, state, the layer.

Imported only by the PyTorch adapters (``module``, ``functional``, ``distributed``), never by
normspec at start-up. An adapter specialises :class:`TorchLayer` (how one forward is called
and where the tensors live) and :class:`TorchImplementation` (what it supports); everything
else -- conversion, checking of outputs (conv.io.shape_dtype), state, gradients, the
arrangement of half-precision layers -- is here, on the mechanism every adapter shares
(:mod:`normspec.adapters.framework`).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from normspec.adapters._common import (
    HALF_DTYPES,
    ParameterPolicy,
    parameter_dtype_name,
    probe_case,
    profile_has_cumulative_average,
)
from normspec.adapters.framework import ArrayLayer, ProbedImplementation, VectorName
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    DTypeName,
    LayerConfig,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference import Gradients
from normspec.reference.second_order import SecondOrderGradients

#: The environment variable naming the default device (``cpu``, ``cuda``, ``cuda:1``, ...).
DEVICE_VARIABLE = "NORMSPEC_TORCH_DEVICE"

TORCH_DTYPES: dict[DTypeName, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(name: DTypeName) -> torch.dtype:
    """The torch dtype of a protocol dtype name."""
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise UnsupportedConfig(f"unknown dtype {name!r}") from None


def parameter_dtype(name: DTypeName, policy: ParameterPolicy) -> torch.dtype:
    """The dtype of parameters and running statistics for inputs of dtype ``name``.

    ``float32`` is as under ``torch.autocast`` (automatic mixed precision, the usual way to
    train in half precision: BatchNorm keeps float32 parameters and buffers and takes half
    activations); ``input``: the whole module in the input's dtype (``module.half()``).
    """
    return torch_dtype(parameter_dtype_name(name, policy))


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, else ``$NORMSPEC_TORCH_DEVICE``, else the CPU; an unusable CUDA is an error."""
    chosen = torch.device(device if device is not None else os.environ.get(DEVICE_VARIABLE, "cpu"))
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(chosen)!r} asked for, but torch.cuda is not available")
    return chosen


def device_versions(device: torch.device) -> dict[str, str]:
    """torch, NumPy and device versions, for the report."""
    found = {"torch": torch.__version__, "numpy": np.__version__, "device": str(device)}
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
        found["cuda"] = str(torch.version.cuda)
        cudnn_version: Callable[[], int | None] = torch.backends.cudnn.version  # untyped in torch
        found["cudnn"] = str(cudnn_version())
    return found


# -- arrays ---------------------------------------------------------------------------------


def element_strides(array: np.ndarray) -> tuple[int, ...] | None:
    """The strides of ``array`` in elements, or ``None`` if torch cannot express them.

    Torch has no negative strides, and strides that are not whole elements have no meaning.
    """
    size = array.itemsize
    if any(stride < 0 or stride % size for stride in array.strides):
        return None
    return tuple(stride // size for stride in array.strides)


def to_torch(array: Array, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A protocol array as a fresh tensor of ``dtype`` on ``device``, with the array's layout.

    The tensor has the strides of the array (in elements): a strided view, a transposed or
    channels-last arrangement, even a broadcast (zero-stride) view arrives as such. The
    memory the view spans is converted as one flat buffer and re-viewed with ``as_strided``
    (converting the view itself would compact it). Negative strides, which torch cannot
    express, give a dense copy with the array's axis order. The tensor never shares memory
    with the array. Values must be exactly representable in ``dtype`` (the protocol's promise).
    """
    source = np.asarray(array, dtype=np.float64)
    strides = element_strides(source)
    if strides is None:
        source = np.array(source, order="K", copy=True)
        strides = element_strides(source)
        assert strides is not None
    if source.size == 0:
        return torch.empty_strided(source.shape, strides, dtype=dtype, device=device)
    extent = 1 + sum(
        (length - 1) * stride for length, stride in zip(source.shape, strides, strict=True)
    )
    flat = np.lib.stride_tricks.as_strided(source, shape=(extent,), strides=(source.itemsize,))
    buffer = torch.from_numpy(np.array(flat, copy=True)).to(device=device, dtype=dtype)
    return buffer.as_strided(source.shape, strides)


def vector_to_torch(values: Array, like: torch.Tensor) -> torch.Tensor:
    """A per-feature vector as a tensor of ``like``'s dtype and device."""
    owned = np.array(values, dtype=np.float64, copy=True)
    return torch.from_numpy(owned).to(like.device, like.dtype)


def from_torch(value: object, *, shape: Sequence[int], dtype: torch.dtype, what: str) -> Array:
    """A result tensor as a float64 NumPy array, after checking it (conv.io.shape_dtype).

    Raises :class:`WrongOutput` if ``value`` is not a tensor of exactly ``dtype`` and
    ``shape``: an implementation returns its input's dtype and shape, never a promoted or
    broadcast one.
    """
    if not isinstance(value, torch.Tensor):
        raise WrongOutput(f"{what} is a {type(value).__name__}, not a torch.Tensor")
    if value.dtype != dtype:
        raise WrongOutput(f"{what} has dtype {value.dtype}, expected {dtype}")
    if tuple(value.shape) != tuple(shape):
        raise WrongOutput(f"{what} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    result: Array = np.array(value.detach().to("cpu", torch.float64).numpy(), copy=True)
    return result


# -- parameters and state -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchNormTensors:
    """Where one layer's parameters and running statistics live (``None``: it has none)."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None


def _checked_vector(tensor: torch.Tensor | None, num_features: int, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise WrongOutput(f"the layer has no {what} tensor")
    if tuple(tensor.shape) != (num_features,) or not tensor.is_floating_point():
        raise WrongOutput(
            f"{what} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, expected a "
            f"floating-point vector of shape ({num_features},)"
        )
    return tensor


#: The field of :class:`BatchNormTensors` holding each per-feature vector.
TENSOR_NAMES: dict[VectorName, str] = {
    "gamma": "weight",
    "beta": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def write_tensor(tensor: torch.Tensor | None, values: Array, num_features: int, what: str) -> None:
    """Overwrite a parameter or running statistic in place, keeping its dtype and device."""
    target = _checked_vector(tensor, num_features, what)
    with torch.no_grad():
        target.copy_(vector_to_torch(values, target))


def read_tensor(tensor: torch.Tensor | None, num_features: int, what: str) -> Array:
    """A parameter or running statistic as a float64 vector."""
    target = _checked_vector(tensor, num_features, what)
    return from_torch(target, shape=(num_features,), dtype=target.dtype, what=what)


@contextmanager
def restored(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run a block and put ``tensors`` back to their values before it, whatever happened."""
    saved = [tensor.detach().clone() for tensor in tensors]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in zip(tensors, saved, strict=True):
                tensor.copy_(value)


@contextmanager
def differentiable(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Run a block with ``tensors`` requiring grad: buffers (a frozen layer's weight and
    bias) are differentiated as parameters are, and given back as they were."""
    switched = [tensor for tensor in tensors if not tensor.requires_grad]
    for tensor in switched:
        tensor.requires_grad_(True)
    try:
        yield
    finally:
        for tensor in switched:
            tensor.requires_grad_(False)


def double_backward(
    forward: Callable[[torch.Tensor], object],
    inputs: torch.Tensor,
    params: Sequence[torch.Tensor],
    cotangent: torch.Tensor,
    weights: Sequence[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, ...]:
    """The gradient in ``inputs``, ``params[0]`` (where given) and ``cotangent`` of ``S =
    sum(weights[0] * dx) + sum(weights[k] * dparams[k - 1])``, the first-order gradients taken
    by ``torch.autograd.grad(create_graph=True)`` of ``forward(inputs)`` for ``cotangent``
    (``inputs`` and ``cotangent`` requiring grad; the caller makes ``params`` require it).
    The double backward of every torch adapter (bn/ln/rms/gn/in.backward.second_order).

    A backward autograd cannot differentiate raises; a gradient that does not depend on an
    input is ``None``.
    """
    with torch.enable_grad():
        y = forward(inputs)
        from_torch(y, shape=inputs.shape, dtype=dtype, what="the output")
        assert isinstance(y, torch.Tensor)
        first = torch.autograd.grad(
            y, [inputs, *params], grad_outputs=cotangent, create_graph=True, allow_unused=True
        )
        terms = [
            (grad * weight).sum()
            for grad, weight in zip(first, weights, strict=True)
            if grad is not None and grad.requires_grad
        ]
        if not terms:
            raise RuntimeError("the gradients of the backward pass do not require grad")
        total = torch.stack([term.to(torch.float64) for term in terms]).sum()
        wrt = [inputs, *params[:1], cotangent]
        return torch.autograd.grad(total, wrt, allow_unused=True)


# -- the layer ------------------------------------------------------------------------------


class TorchLayer(ArrayLayer):
    """A :class:`Layer` over torch tensors; subclasses say how one forward is computed.

    Inputs keep their NumPy layout (:func:`to_torch`); outputs and gradients are checked for
    the input's dtype and shape, parameter gradients for the parameters' (WrongOutput).
    """

    def __init__(self, config: LayerConfig, device: torch.device, parameters: torch.dtype):
        super().__init__(config)
        self.device = device
        self.input_dtype = torch_dtype(config.dtype)
        self.parameter_dtype = parameters

    @abc.abstractmethod
    def tensors(self) -> BatchNormTensors:
        """The layer's parameters and running statistics, as they are now."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, *, training: bool) -> object:
        """One forward pass of the implementation, in training or inference mode."""

    def mutable_tensors(self) -> list[torch.Tensor]:
        """Every tensor a forward may change: saved and restored around :meth:`vjp`."""
        found = self.tensors()
        candidates = (found.running_mean, found.running_var, found.num_batches_tracked)
        return [tensor for tensor in candidates if tensor is not None]

    # -- the vectors (ArrayLayer) --

    def read_vector(self, name: VectorName) -> Array:
        what = TENSOR_NAMES[name]
        return read_tensor(getattr(self.tensors(), what), self.config.num_features, what)

    def write_vector(self, name: VectorName, values: Array) -> None:
        what = TENSOR_NAMES[name]
        write_tensor(getattr(self.tensors(), what), values, self.config.num_features, what)

    def read_steps(self) -> int | None:
        counter = self.tensors().num_batches_tracked
        return None if counter is None else int(counter.item())

    def write_steps(self, steps: int) -> None:
        counter = self.tensors().num_batches_tracked
        if counter is not None:
            counter.fill_(steps)

    def output(self, x: Array, *, training: bool) -> Array:
        inputs = to_torch(x, self.input_dtype, self.device)
        with torch.no_grad():
            y = self.forward(inputs, training=training)
        return from_torch(y, shape=x.shape, dtype=self.input_dtype, what="the output")

    # -- gradients --

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        """dx, dgamma, dbeta by autograd; the running statistics are left as they were.

        Without affine parameters (``affine=False``) there is nothing to differentiate:
        dgamma and dbeta are returned as zeros (the engine compares them only when affine).
        """
        num_features = self.config.num_features
        checked = self._parameters()
        inputs = to_torch(x, self.input_dtype, self.device).requires_grad_(True)
        cotangent = to_torch(dy, self.input_dtype, self.device)
        with restored(self.mutable_tensors()), differentiable(checked), torch.enable_grad():
            y = self.forward(inputs, training=training)
            from_torch(y, shape=x.shape, dtype=self.input_dtype, what="the output")
            assert isinstance(y, torch.Tensor)
            grads = torch.autograd.grad(
                y, [inputs, *checked], grad_outputs=cotangent, allow_unused=True
            )
        dx = self._gradient(grads[0], inputs, "dx")
        if not checked:
            zeros = np.zeros(num_features)
            return Gradients(dx, zeros, zeros.copy())
        return Gradients(
            dx,
            self._gradient(grads[1], checked[0], "dgamma"),
            self._gradient(grads[2], checked[1], "dbeta"),
        )

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """Double backward: the training-mode vjp by ``torch.autograd.grad(create_graph=True)``,
        then the gradient of ``S = sum(v * dx) + sum(v_gamma * dgamma) + sum(v_beta * dbeta)``
        in x, gamma and dy (bn.backward.second_order); the running statistics are restored.

        A backward autograd cannot differentiate raises (the probe then declares no
        double_backward); a gradient that does not depend on an input is zero.
        """
        params = self._parameters()
        inputs = to_torch(x, self.input_dtype, self.device).requires_grad_(True)
        cotangent = to_torch(dy, self.input_dtype, self.device).requires_grad_(True)
        weights = [to_torch(v, self.input_dtype, self.device)]
        weights += [vector_to_torch(c, p) for c, p in zip((v_gamma, v_beta), params, strict=False)]
        with restored(self.mutable_tensors()), differentiable(params):
            second = double_backward(
                lambda t: self.forward(t, training=True),
                inputs,
                params,
                cotangent,
                weights,
                self.input_dtype,
            )
        d_gamma = (
            self._gradient(second[1], params[0], "d_gamma")
            if params
            else np.zeros(self.config.num_features)
        )
        return SecondOrderGradients(
            self._gradient(second[0], inputs, "d_x"),
            d_gamma,
            self._gradient(second[-1], cotangent, "d_dy"),
        )

    # -- helpers --

    def _parameters(self) -> list[torch.Tensor]:
        """weight and bias, checked; none for a layer without affine parameters."""
        if not self.config.affine:
            return []
        found, num_features = self.tensors(), self.config.num_features
        return [
            _checked_vector(found.weight, num_features, "weight"),
            _checked_vector(found.bias, num_features, "bias"),
        ]

    @staticmethod
    def _gradient(grad: torch.Tensor | None, of: torch.Tensor, what: str) -> Array:
        """A gradient; ``None`` (the forward did not use ``of``) is a zero gradient."""
        value = torch.zeros_like(of) if grad is None else grad
        return from_torch(value, shape=of.shape, dtype=of.dtype, what=what)


# -- the implementation ---------------------------------------------------------------------


#: How each parameter policy arranges a half-precision layer, for names and warnings.
ARRANGEMENTS: dict[ParameterPolicy, str] = {
    "float32": "float32 parameters and running statistics (as under torch.autocast)",
    "input": "parameters and running statistics in the input's dtype (module.half())",
}


class TorchImplementation(ProbedImplementation):
    """An :class:`Implementation` on torch: device, versions, config checks, dtype probing.

    ``parameters`` says where a float16/bfloat16 layer keeps its parameters and running
    statistics (``float32`` or ``input``, see :func:`parameter_dtype`); ``None`` detects it
    per dtype: ``float32``, unless a tiny layer fails in that arrangement and works in the
    other (a module that is not built on ``F.batch_norm`` and returns a float32 output for
    a half input beside float32 buffers). The arrangement chosen is a report warning.
    """

    library = "torch"

    def __init__(
        self,
        profile: str = "torch",
        *,
        device: str | torch.device | None = None,
        parameters: ParameterPolicy | None = None,
    ) -> None:
        self.profile = profile
        self.device = resolve_device(device)
        self.parameters: ParameterPolicy = parameters or "float32"
        parameter_dtype("float16", self.parameters)  # validates the policy
        self.detect_arrangement = parameters is None
        #: the policy of each half dtype whose arrangement was detected otherwise
        self.arrangements: dict[DTypeName, ParameterPolicy] = {}
        self.label = ""

    @abc.abstractmethod
    def make_layer(self, config: LayerConfig) -> TorchLayer:
        """A fresh layer for a configuration within the capabilities."""

    def policy(self, name: DTypeName) -> ParameterPolicy:
        """Where a layer of dtype ``name`` keeps its parameters and running statistics."""
        return self.arrangements.get(name, self.parameters)

    def parameter_dtype(self, name: DTypeName) -> torch.dtype:
        """The dtype of the parameters and running statistics of a layer of dtype ``name``."""
        return parameter_dtype(name, self.policy(name))

    def describe(self, what: str) -> str:
        """``what (torch VERSION, DEVICE[, float32 parameters for ...])``: the name."""
        self.label = what
        mixed = [name for name in sorted(HALF_DTYPES) if self.policy(name) == "float32"]
        kinds = "half" if len(mixed) == len(HALF_DTYPES) else " and ".join(mixed)
        policy = f", float32 parameters for {kinds} inputs" if mixed else ""
        return f"{what} (torch {torch.__version__}, {self.device}{policy})"

    def profile_has_cumulative_average(self) -> bool:
        """Whether the profile defines ``momentum=None`` (dialect.cumulative_average)."""
        return profile_has_cumulative_average(self.profile)

    def where(self) -> str:
        return str(self.device)

    def probed(self, base: Capabilities) -> Capabilities:
        """The half-precision arrangements (if detected), the dtypes a tiny forward and
        backward fail on, and double_backward where a tiny layer's backward can be
        differentiated."""
        if self.detect_arrangement:
            base = self._arrange_half_dtypes(base)
        return self._probe_double_backward(super().probed(base))

    def versions(self) -> Mapping[str, str]:
        return device_versions(self.device)

    def _arrange_half_dtypes(self, base: Capabilities) -> Capabilities:
        """``base``, the arrangement of every half dtype a tiny layer fails in under
        :attr:`parameters` (an error, a malformed output) switched to the other where the
        layer works in that one; each switch is a warning, and renames the implementation."""
        other: ParameterPolicy = "input" if self.parameters == "float32" else "float32"
        warnings = list(base.warnings)
        for name in sorted(HALF_DTYPES & base.dtypes):
            problem = self._problem_under(name, self.parameters, base)
            if problem is None or self._problem_under(name, other, base) is not None:
                continue
            self.arrangements[name] = other
            warnings.append(
                f"{name} is checked with {ARRANGEMENTS[other]}: with "
                f"{ARRANGEMENTS[self.parameters]} {problem}"
            )
        if self.arrangements:
            self.name = self.describe(self.label)
        return replace(base, warnings=tuple(warnings))

    def _problem_under(
        self, name: DTypeName, policy: ParameterPolicy, base: Capabilities
    ) -> str | None:
        """What goes wrong with a tiny layer of dtype ``name`` under ``policy``, if anything."""
        config, x = probe_case(base, name)
        saved = dict(self.arrangements)
        self.arrangements[name] = policy
        try:
            self.probe(config, x, base)
        except Exception as error:  # a malformed output or any failure of the library
            return f"{type(error).__name__}: {error}".splitlines()[0]
        finally:
            self.arrangements = saved
        return None

    def _probe_double_backward(self, caps: Capabilities) -> Capabilities:
        """``caps`` with double_backward set by one double backward of a tiny layer (in
        float64 where supported); why it failed goes to ``notes["double_backward"]``."""
        if not caps.backward or not caps.training or not caps.dtypes:
            return caps
        dtype = "float64" if "float64" in caps.dtypes else sorted(caps.dtypes)[0]
        config, x = probe_case(caps, dtype)
        ones = np.ones(config.num_features)
        try:
            layer = self.make_layer(config)
            layer.second_order_vjp(x, np.ones_like(x), np.ones_like(x), ones, ones)
        except WrongOutput:
            pass  # a malformed result is the engine's to report
        except Exception as error:  # autograd cannot differentiate the backward
            reason = f"{type(error).__name__}: {error}".splitlines()[0]
            notes = {
                **caps.notes,
                "double_backward": f"its backward is not differentiable: {reason}",
            }
            return replace(caps, double_backward=False, notes=notes)
        return replace(caps, double_backward=True)
