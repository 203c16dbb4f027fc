"""An adapter for a framework normspec does not ship, in a dozen lines; what adapters share.

:class:`FrameworkAdapter` is the pattern every adapter repeats -- arrays converted in and out
with their dtype, a layer built, a training or inference call, gradients from the
framework's autodiff, parameters and running statistics read and written -- done once: a
subclass names the framework's own calls. Under it lie two pieces the built-in torch and
TensorFlow adapters share as well:

* :class:`ArrayLayer`, the protocol's :class:`~normspec.adapters.protocol.Layer` around the
  per-feature vectors a library keeps (``gamma``, ``beta``, ``mean``, ``var``) and one
  forward: parameters, the state reported as the reference's value (whatever values the
  library holds: the clauses judge them), training and inference calls;
* :class:`ProbedImplementation`, an :class:`~normspec.adapters.protocol.Implementation`
  whose capabilities are the declared ones less the dtypes a tiny layer fails in, and whose
  ``build`` refuses a configuration outside them (:class:`UnsupportedConfig`).

Imports no framework.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np

from normspec.adapters._common import (
    check_config,
    default_chapter_config,
    probe_dtypes,
    running_statistics,
)
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    Chapter,
    DTypeName,
    Layer,
    LayerConfig,
    ReplicatedLayer,
    State,
    WrongOutput,
)
from normspec.reference import Gradients, RunningStatistics

#: The per-feature vectors of a batch-normalization layer: the affine parameters and the
#: running statistics.
VectorName = Literal["gamma", "beta", "mean", "var"]


class ArrayLayer(abc.ABC):
    """A protocol :class:`Layer` over the per-feature vectors a library keeps.

    A subclass reads and writes the vectors (as float64 arrays, in whatever dtype the
    library keeps them), the step counter if there is one, and runs one forward; the state
    is reported as :class:`RunningStatistics` holding exactly what was read (a negative or
    NaN variance included: bn.params.no_nan_state and bn.running.* judge it). A layer
    without a step counter reports the step count last set. ``vjp`` is the subclass's.
    """

    def __init__(self, config: LayerConfig) -> None:
        self.config = config
        self._steps = 0

    @abc.abstractmethod
    def read_vector(self, name: VectorName) -> Array:
        """A vector as float64 values; :class:`WrongOutput` if the layer's is malformed."""

    @abc.abstractmethod
    def write_vector(self, name: VectorName, values: Array) -> None:
        """Overwrite a vector, keeping the dtype the library keeps it in."""

    def read_steps(self) -> int | None:
        """The layer's step counter; ``None``: it keeps none."""
        return None

    def write_steps(self, steps: int) -> None:
        """Set the step counter, if the layer keeps one (a layer without one keeps none)."""
        return None

    @abc.abstractmethod
    def output(self, x: Array, *, training: bool) -> Array:
        """One training-mode or inference-mode call, its output checked (conv.io.shape_dtype)."""

    # -- the protocol --

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.write_vector("gamma", gamma)
        self.write_vector("beta", beta)

    def set_state(self, state: State) -> None:
        if not self.config.track_running_stats:
            raise ValueError("a layer that does not track running statistics has no state")
        if not isinstance(state, RunningStatistics):
            raise TypeError(f"a batch-norm layer keeps RunningStatistics, not {state!r}")
        self.write_vector("mean", state.mean)
        self.write_vector("var", state.var)
        self.write_steps(state.steps)
        self._steps = state.steps

    def state(self) -> State | None:
        if not self.config.track_running_stats:
            return None
        steps = self.read_steps()
        return running_statistics(
            self.read_vector("mean"),
            self.read_vector("var"),
            self._steps if steps is None else steps,
        )

    def train_step(self, x: Array) -> Array:
        return self.output(x, training=True)

    def infer(self, x: Array) -> Array:
        return self.output(x, training=False)


class ProbedImplementation(abc.ABC):
    """An :class:`Implementation` whose capabilities are probed: the declared ones
    (:meth:`base_capabilities`) less the dtypes in which a tiny layer fails a training
    step, an inference and a backward (:meth:`probe`), probed per chapter
    (:meth:`chapter_config`; the replicas chapter on two replicas, :meth:`probe_replicated`,
    where :meth:`make_replicated` builds them), the reasons in ``refused_dtypes`` and
    ``notes["dtypes"]``.
    :meth:`build` refuses a configuration outside them, naming :attr:`library`.
    """

    name: str
    #: The library named in the messages about unsupported configurations.
    library: str = "the implementation"
    _capabilities: Capabilities | None = None

    @abc.abstractmethod
    def base_capabilities(self) -> Capabilities:
        """What the implementation supports, before the dtypes are probed."""

    @abc.abstractmethod
    def make_layer(self, config: LayerConfig) -> Layer:
        """A fresh layer for a configuration within the capabilities."""

    def where(self) -> str | None:
        """Where the probe runs (a device), for the reasons; ``None``: nowhere in particular."""
        return None

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A tiny layer's training step (if it has a training mode), inference and backward
        (if ``base`` declares one); an exception means the dtype is not supported."""
        layer = self.make_layer(config)
        if base.training:
            layer.train_step(x)
        layer.infer(x)
        if base.backward:
            layer.vjp(x, np.ones_like(x), training=base.training)
        return None

    def make_replicated(self, config: LayerConfig, replicas: int) -> ReplicatedLayer | None:
        """A fresh layer on ``replicas`` replicas for a configuration within the
        capabilities (the replicas chapter's probe, :meth:`probe_replicated`); ``None``:
        the replicas chapter is not probed apart (its clauses run in every dtype)."""
        return None

    def probe_replicated(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        """A tiny layer on two replicas, half the batch each: a synchronized training step and
        (if ``base`` declares one) its backward; an exception means the replicas chapter does
        not work in the dtype."""
        layer = self.make_replicated(config, 2)
        if layer is None:
            return None
        halves = [x[:2], x[2:]]
        layer.train_step(halves)
        if base.backward:
            layer.vjp(halves, [np.ones_like(half) for half in halves])
        return None

    def chapter_config(self, chapter: Chapter, config: LayerConfig) -> LayerConfig | None:
        """The tiny layer a chapter's dtypes are probed with, made from the BN probe's
        ``config``; ``None``: the chapter has no probe of its own here (BN's and ghost
        batches' by default, :func:`~normspec.adapters._common.default_chapter_config`)."""
        return default_chapter_config(chapter, config)

    def probed(self, base: Capabilities) -> Capabilities:
        """``base`` less the dtypes :meth:`probe` fails in, per chapter (``refused_dtypes``)."""
        replicated = base.replicas and type(self).make_replicated is not (
            ProbedImplementation.make_replicated
        )
        return probe_dtypes(
            base,
            lambda config, x: self.probe(config, x, base),
            where=self.where(),
            chapter_config=self.chapter_config,
            chapter_probes=(
                {"replicas": lambda config, x: self.probe_replicated(config, x, base)}
                if replicated
                else None
            ),
        )

    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = self.probed(self.base_capabilities())
        return self._capabilities

    def versions(self) -> Mapping[str, str]:
        return {"numpy": np.__version__}

    def build(self, config: LayerConfig) -> Layer:
        check_config(self.capabilities(), config, library=self.library)
        return self.make_layer(config)


class FrameworkAdapter(ProbedImplementation):
    """An implementation on any framework: the framework's calls, and nothing else.

    A subclass sets :attr:`name` and :attr:`supports` and fills in:

    * :meth:`create`: the framework's layer for a configuration (``config.momentum`` is in
      the library's own convention, as the profile says; raise for what it cannot express,
      or rejects: an invalid eps or momentum is expected to be rejected, bn.params.invalid);
    * :meth:`to_framework` and :meth:`to_numpy`: arrays in and out, with their dtype;
    * :meth:`forward`: a training-mode call (which updates the running statistics) or an
      inference-mode call;
    * :meth:`gradients`: dx, dgamma, dbeta by the framework's autodiff (with
      ``supports.backward``).

    Parameters and statistics are the layer's attributes named in :attr:`vectors` (and
    :attr:`steps`), read and written with :meth:`read` and :meth:`write` (``getattr`` and
    ``setattr``; override them for a framework that keeps them elsewhere); a step counter is
    read with ``int()`` and written as a Python int. Outputs and gradients are checked for their dtype and
    shape (conv.io.shape_dtype); the state is reported as it is held.
    """

    #: What the implementation supports; the dtypes the framework fails in are probed.
    supports: ClassVar[Capabilities] = Capabilities()
    #: The layer's attribute holding each vector.
    vectors: ClassVar[Mapping[VectorName, str]] = {
        "gamma": "weight",
        "beta": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }
    #: The layer's attribute holding its step counter; ``None``: it keeps none.
    steps: ClassVar[str | None] = None

    @abc.abstractmethod
    def create(self, config: LayerConfig) -> Any:
        """The framework's layer for ``config``, with its initial parameters and state."""

    @abc.abstractmethod
    def to_framework(self, array: Array, dtype: DTypeName) -> Any:
        """A float64 array as the framework's array of ``dtype`` (its values are exact in it)."""

    @abc.abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray:
        """The framework's array as a NumPy array of its own dtype, not converted
        (``ml_dtypes.bfloat16`` for bfloat16): the dtype is what conv.io.shape_dtype checks."""

    @abc.abstractmethod
    def forward(self, layer: Any, x: Any, *, training: bool) -> Any:
        """One call of the layer in training or inference mode; its output."""

    def gradients(
        self, layer: Any, x: Any, dy: Any, *, training: bool
    ) -> tuple[Any, Any | None, Any | None]:
        """``(dx, dgamma, dbeta)`` of the call in the given mode for the cotangent ``dy``
        (``None`` for the parameters of a layer without them). Needed with
        ``supports.backward``; the state after it does not matter."""
        raise NotImplementedError(f"{type(self).__name__} defines no gradients")

    def attribute(self, name: VectorName | Literal["steps"]) -> str:
        """The layer's attribute holding the vector (or the step counter) ``name``."""
        found = self.steps if name == "steps" else self.vectors[name]
        assert found is not None, "the layer keeps no step counter"
        return found

    def read(self, layer: Any, name: VectorName | Literal["steps"]) -> Any:
        """The layer's vector (or step counter) ``name``; ``None`` where it has none."""
        return getattr(layer, self.attribute(name), None)

    def write(self, layer: Any, name: VectorName | Literal["steps"], value: Any) -> None:
        """Replace the layer's vector (or step counter) ``name``."""
        setattr(layer, self.attribute(name), value)

    # -- ProbedImplementation --

    def base_capabilities(self) -> Capabilities:
        return self.supports

    def make_layer(self, config: LayerConfig) -> FrameworkLayer:
        return FrameworkLayer(self, config, self.create(config))


class FrameworkLayer(ArrayLayer):
    """One layer of a :class:`FrameworkAdapter`: the protocol through the adapter's calls."""

    def __init__(self, adapter: FrameworkAdapter, config: LayerConfig, layer: Any) -> None:
        super().__init__(config)
        self.adapter = adapter
        self.layer = layer

    def _numpy(self, value: Any, what: str, shape: Sequence[int], dtype: str | None) -> Array:
        """``value`` as float64, after checking its dtype (if given) and shape."""
        try:
            array = np.asarray(self.adapter.to_numpy(value))
        except Exception as problem:  # a malformed result, the implementation's to report
            raise WrongOutput(
                f"{what} is a {type(value).__name__} that to_numpy cannot convert: {problem}"
            ) from None
        if dtype is not None and array.dtype.name != dtype:
            raise WrongOutput(f"{what} has dtype {array.dtype.name}, expected {dtype}")
        if tuple(array.shape) != tuple(shape):
            raise WrongOutput(f"{what} has shape {tuple(array.shape)}, expected {tuple(shape)}")
        return np.array(array, dtype=np.float64, copy=True)

    def _held(self, name: VectorName | Literal["steps"]) -> Any:
        value = self.adapter.read(self.layer, name)
        if value is None:
            raise WrongOutput(f"the layer has no {self.adapter.attribute(name)}")
        return value

    def _dtype_of(self, name: VectorName) -> DTypeName:
        found: DTypeName = np.asarray(self.adapter.to_numpy(self._held(name))).dtype.name
        return found

    def read_vector(self, name: VectorName) -> Array:
        features = (self.config.num_features,)
        return self._numpy(self._held(name), self.adapter.attribute(name), features, None)

    def write_vector(self, name: VectorName, values: Array) -> None:
        converted = self.adapter.to_framework(np.asarray(values), self._dtype_of(name))
        self.adapter.write(self.layer, name, converted)

    def read_steps(self) -> int | None:
        return None if self.adapter.steps is None else int(self._held("steps"))

    def write_steps(self, steps: int) -> None:
        if self.adapter.steps is not None:
            self.adapter.write(self.layer, "steps", steps)

    def _input(self, array: Array) -> Any:
        return self.adapter.to_framework(array, self.config.dtype)

    def output(self, x: Array, *, training: bool) -> Array:
        y = self.adapter.forward(self.layer, self._input(x), training=training)
        return self._numpy(y, "the output", x.shape, self.config.dtype)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        """dx, dgamma, dbeta from :meth:`FrameworkAdapter.gradients`: dx in the input's
        dtype, the parameter gradients in the parameters' (zeros without affine
        parameters: the engine compares them only when affine)."""
        dx, dgamma, dbeta = self.adapter.gradients(
            self.layer, self._input(x), self._input(dy), training=training
        )
        grad_x = self._numpy(dx, "dx", x.shape, self.config.dtype)
        features = (self.config.num_features,)
        if not self.config.affine:
            return Gradients(grad_x, np.zeros(features), np.zeros(features))
        dtype = self._dtype_of("gamma")
        return Gradients(
            grad_x,
            self._numpy(dgamma, "dgamma", features, dtype),
            self._numpy(dbeta, "dbeta", features, dtype),
        )


__all__ = [
    "ArrayLayer",
    "FrameworkAdapter",
    "FrameworkLayer",
    "ProbedImplementation",
    "VectorName",
]
