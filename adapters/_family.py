"""What every normalization-family adapter outside torch shares (spec: layernorm.md,
groupnorm.md).

A framework's family adapter is a table and one :class:`Computation`:

* the table has one :class:`FamilyClass` per layer class it knows (a layer kind, the class,
  the names of its weight and bias variables, the constructor arguments that state a
  dialect): a new kind (GroupNorm, InstanceNorm) is a new row;
* the computation runs a configured layer of that class in the framework: the forward of
  given parameters and, where the framework differentiates, their vjp.

:class:`FamilyImplementation` is the implementation around them (capabilities, the checks
of a configuration, the name) and :class:`FamilyLayer` the protocol layer (the parameters a
check sets, held in float64 and handed to the computation on every call). The layers have
no mode and no state: ``infer`` and ``train_step`` are the same forward.
"""

from __future__ import annotations

import abc
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    DTypeName,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.reference import Gradients
from normspec.reference.second_order import SecondOrderGradients


@dataclass(frozen=True)
class FamilyClass:
    """One row of a framework's table: a layer class and its conventions.

    ``path``: ``"module:Class"``; ``weight``/``bias``: the names its variables are stored
    under (``bias`` ``None``: the class has none); ``optional_affine``: it can be built
    without parameters (else a layer without affine parameters is one whose weight is 1); ``dialect``: constructor arguments normspec passes to every layer
    (the variance evaluation, ...), where the library's default is not the one checked.
    """

    kind: FamilyKind
    path: str
    weight: str
    bias: str | None = None
    optional_affine: bool = True
    dialect: Mapping[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.path.replace(":", ".")

    def load(self) -> Any:
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)


def constructor_names(cls: object) -> list[str]:
    """The parameter names of a class's constructor (``self`` left out; its ``__init__``'s
    where a metaclass hides them behind ``*args, **kwargs``); none if unreadable. A
    :func:`without_keyword` wrapper has its class's."""
    cls = inspect.unwrap(cls)  # type: ignore[arg-type]
    try:
        names = list(inspect.signature(cls).parameters)  # type: ignore[arg-type]
        if isinstance(cls, type) and names == ["args", "kwargs"]:
            names = list(inspect.signature(getattr(cls, "__init__")).parameters)[1:]  # noqa: B009
    except (TypeError, ValueError):
        return []
    return names


def without_keyword(cls: Any, name: str) -> Callable[..., Any]:
    """``cls`` called with the keyword ``name`` left out, so that the library's default
    applies (``build_with_default_eps``: the eps argument); :func:`constructor_names` reads
    ``cls``'s."""

    @functools.wraps(cls, updated=())
    def build(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop(name, None)
        return cls(*args, **kwargs)

    return build


def kind_of(cls: object, takes_bias: bool) -> FamilyKind:
    """RMSNorm when the class name says so or it takes no bias, else LayerNorm (the rule
    :mod:`normspec.adapters.torch.family` follows too)."""
    rms = "rms" in getattr(cls, "__name__", "").lower() or not takes_bias
    return "rmsnorm" if rms else "layernorm"


#: The kinds whose parameters are per channel of a ``(N, C, *spatial)`` input (groupnorm.md).
GROUPED: frozenset[FamilyKind] = frozenset({"groupnorm", "instancenorm"})


def parameter_shape(config: LayerConfig) -> tuple[int, ...]:
    """The shape of a layer's weight and bias: ``normalized_shape`` (LayerNorm, RMSNorm), or
    one per channel (GroupNorm, InstanceNorm: groupnorm.md)."""
    assert config.family is not None
    if config.family.kind in GROUPED:
        return (config.num_features,)
    return config.family.normalized_shape


def ranks_of(kind: FamilyKind) -> frozenset[int]:
    """The input ranks of a kind: InstanceNorm needs a spatial axis."""
    return frozenset({3, 4, 5} if kind == "instancenorm" else {2, 3, 4, 5})


def axes_of(family: FamilyConfig) -> tuple[int, ...]:
    """The trailing axes a slice spans, negative (``(-2, -1)`` for two)."""
    return tuple(range(-len(family.normalized_shape), 0))


class Computation(abc.ABC):
    """One configured layer in its framework, run on given parameters (float64 arrays of
    ``normalized_shape``, or per channel for GroupNorm/InstanceNorm: :func:`parameter_shape`;
    ``None`` where the layer has none). A grouped case's ``x`` is ``(N, C, *spatial)``."""

    @abc.abstractmethod
    def forward(self, x: Array, weight: Array | None, bias: Array | None) -> Array:
        """The output, checked for shape and dtype (conv.io.shape_dtype), as float64."""

    def gradients(
        self, x: Array, dy: Array, weight: Array | None, bias: Array | None
    ) -> tuple[Array, Array | None, Array | None]:
        """``(dx, dweight, dbias)`` of ``sum(dy * y)``; ``None`` for an absent parameter."""
        raise UnsupportedConfig("the framework computes no gradients")

    def second_order(
        self,
        x: Array,
        dy: Array,
        cotangents: tuple[Array, Array | None, Array | None],
        weight: Array | None,
        bias: Array | None,
    ) -> tuple[Array, Array | None, Array]:
        """``(d_x, d_weight, d_dy)``: the gradient of ``S = sum(v * dx) + sum(v_weight *
        dweight) + sum(v_bias * dbias)`` (``cotangents``: ``v``, ``v_weight``, ``v_bias``)
        in x, the weight and dy (*.backward.second_order)."""
        raise UnsupportedConfig("the framework offers no double backward")


class FamilyLayer:
    """A family protocol layer on a :class:`Computation` (an InstanceNorm one without
    running statistics)."""

    def __init__(
        self, config: LayerConfig, computation: Computation, *, weighted: bool = False
    ) -> None:
        assert config.family is not None
        self.config, self.family, self.computation = config, config.family, computation
        self.shape = shape = parameter_shape(config)
        weight = config.affine or weighted  # ``weighted``: the layer always holds a weight
        self.weight: Array | None = np.ones(shape) if weight else None
        self.bias: Array | None = np.zeros(shape) if config.affine and self.family.bias else None

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self.weight = np.array(gamma, dtype=np.float64)
        self.bias = np.array(beta, dtype=np.float64) if self.family.bias else None

    def set_state(self, state: State) -> None:
        raise UnsupportedConfig(f"this {self.family.kind} layer keeps no statistics")

    def state(self) -> State | None:
        return None

    def infer(self, x: Array) -> Array:
        return self.computation.forward(x, self.weight, self.bias)

    train_step = infer

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        dx, dweight, dbias = self.computation.gradients(x, dy, self.weight, self.bias)
        zeros = np.zeros(self.shape)
        return Gradients(
            dx,
            zeros if dweight is None else dweight,
            zeros if dbias is None else dbias,
        )

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        """Double backward where the framework offers it (``Capabilities.double_backward``)."""
        v_bias = v_beta if self.bias is not None else None
        cotangents = (v, v_gamma if self.weight is not None else None, v_bias)
        d_x, d_weight, d_dy = self.computation.second_order(
            x, dy, cotangents, self.weight, self.bias
        )
        return SecondOrderGradients(
            d_x, np.zeros(self.shape) if d_weight is None else d_weight, d_dy
        )


class FamilyImplementation(abc.ABC):
    """A layer class of a framework's table under test (``arguments``: the target's other
    constructor arguments, passed to every layer after the table's dialect)."""

    #: The framework, for the name and the messages.
    library: str = ""
    #: Whether the framework differentiates the layer (the backward clauses).
    backward: bool = True
    #: Whether it differentiates the backward too (``*.backward.second_order``).
    double_backward: bool = False
    #: The dtype the layer holds eps in (ONNX's float32 attributes).
    setting_dtype: DTypeName = "float64"
    #: Whether the framework compiles a program per configuration (JAX): its cases are
    #: drawn from a run's menu (``Capabilities.compiles_per_shape``).
    compiles_per_shape: bool = False
    #: The constructor argument (or attribute) that takes eps.
    eps_argument: str = "epsilon"

    def __init__(
        self,
        entry: FamilyClass,
        cls: type | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        self.entry = entry
        self.cls = entry.load() if cls is None else cls
        self.arguments = {**entry.dialect, **(arguments or {})}
        given = "".join(f", {k}={v!r}" for k, v in (arguments or {}).items())
        self.name = f"{entry.title}{given} ({entry.kind}, {self.describe()})"

    def describe(self) -> str:
        """The library, its version and the device, for the name."""
        return self.library

    def dtypes(self) -> frozenset[DTypeName]:
        return frozenset(ALL_DTYPES)

    def notes(self) -> dict[str, str]:
        kind = self.entry.kind
        notes = {"batchnorm": f"it is a {kind} layer", "renorm": f"a {kind} layer"}
        if not self.backward:
            notes["backward"] = f"{self.library} computes no gradients"
        return notes

    def capabilities(self) -> Capabilities:
        kind = self.entry.kind
        return Capabilities(
            dtypes=self.dtypes(),
            batchnorm=False,
            ranks=ranks_of(kind),
            layernorm=kind == "layernorm",
            rmsnorm=kind == "rmsnorm",
            groupnorm=kind == "groupnorm",
            instancenorm=kind == "instancenorm",
            training=False,
            untracked=True,
            backward=self.backward,
            double_backward=self.double_backward,
            elementwise_bias=self.entry.bias is not None,
            setting_dtype=self.setting_dtype,
            compiles_per_shape=self.compiles_per_shape,
            notes=self.notes(),
        )

    @abc.abstractmethod
    def versions(self) -> Mapping[str, str]: ...

    @abc.abstractmethod
    def computation(
        self, config: LayerConfig, family: FamilyConfig, *, default_eps: bool = False
    ) -> Computation:
        """The layer of a configuration within the capabilities; with ``default_eps`` built
        without :attr:`eps_argument` (the library's default eps, ``config.eps`` unused)."""

    def build_with_default_eps(self, config: LayerConfig) -> FamilyLayer:
        """The layer built without an eps: the library's default (``normspec identify``
        measures it, dialects.md: ``*.default_eps``)."""
        return self.build(config, default_eps=True)

    def build(self, config: LayerConfig, *, default_eps: bool = False) -> FamilyLayer:
        family = config.family
        if family is None or family.kind != self.entry.kind:
            raise UnsupportedConfig(f"only {self.entry.kind} layers")
        if family.scale_offset != 0.0:
            raise UnsupportedConfig(f"{self.entry.title} multiplies by w (scale_offset 0)")
        if family.bias and self.entry.bias is None:
            raise UnsupportedConfig("the layer takes no bias")
        if config.dtype not in self.dtypes():
            raise UnsupportedConfig(f"{config.dtype} is not supported")
        weighted = not self.entry.optional_affine
        computation = self.computation(config, family, default_eps=default_eps)
        return FamilyLayer(config, computation, weighted=weighted)


def as_float64(value: Any, shape: tuple[int, ...]) -> Array:
    """A framework's gradient of a parameter as a float64 array of ``shape`` (a library may
    keep its parameters flat: the same values, another shape)."""
    array = np.asarray(value, dtype=np.float64)
    return np.array(array.reshape(shape) if array.size == int(np.prod(shape)) else array)
