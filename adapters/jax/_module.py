"""What the haiku and equinox adapters share: a module class built for each configuration.

Both libraries' BatchNorm is a class whose constructor takes the layer's configuration
(haiku: ``create_scale, create_offset, decay_rate, eps, data_format``; equinox:
``input_size, axis_name, eps, channelwise_affine, momentum, dtype``) and keeps its
parameters and statistics in the input's dtype (parameter policy ``input``: neither has
Flax's separate ``param_dtype``). :class:`ModuleImplementation` is the implementation
around such a class: a user's class recognised by its constructor and by the variables an
instance holds (its program builds without error), the target's other constructor
arguments (``equinox.nn:BatchNorm(mode="batch")``), a warning naming those left at their
defaults, one program per configuration (:class:`~normspec.adapters.jax._jax.JaxImplementation`).
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import jax

from normspec.adapters.jax._jax import PROBE_CONFIG, JaxImplementation, JaxProgram
from normspec.adapters.jax._jax import with_hyper as with_hyper  # flax_renorm's, from here
from normspec.adapters.protocol import Capabilities, FeatureAxisPosition, LayerConfig

#: What every haiku and equinox layer lacks, for the report's not-applicable reasons.
MODULE_NOTES: Mapping[str, str] = {
    "cumulative_average": "the momentum is a float (a decay); there is no cumulative average",
    "untracked": "the layer always keeps its running statistics",
    "strided_input": "JAX arrays have no strides or memory layout: every input is dense",
    "renorm": "the layer is batch normalization only",
}


def constructor_parameters(cls: type) -> Mapping[str, inspect.Parameter]:
    """The parameters of ``cls``'s constructor (``self`` left out); none if unreadable."""
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}


def takes_keywords(cls: type, names: tuple[str, ...], *positional: Any) -> bool:
    """Whether ``cls(*positional, name=..., ...)`` binds for every name of ``names``."""
    try:
        inspect.signature(cls).bind(*positional, **{name: None for name in names})
    except (TypeError, ValueError):
        return False
    return True


#: The first program of each structure (:func:`share_compilation`), the others' template.
_TEMPLATES: dict[Hashable, JaxProgram] = {}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(template: JaxProgram, training: bool, hyper: Any, *arrays: Any) -> Any:
    program = with_hyper(template, hyper)
    return program.apply_train(*arrays) if training else program.apply_infer(*arrays)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vjp(template: JaxProgram, training: bool, hyper: Any, *arrays: Any) -> Any:
    return with_hyper(template, hyper)._vjp(*arrays, training=training)


def share_compilation(
    program: JaxProgram, structure: Hashable, hyper: Mapping[str, Any]
) -> JaxProgram:
    """Jit ``program``'s forwards and vjps as functions of ``hyper`` (its scalar settings,
    such as eps and the momentum, read by its ``apply_*`` from ``self.hyper``), shared by
    every program of ``structure``: configurations that differ only in those settings
    compile once per input shape instead of once each (issue 13). The template: the
    first program of ``structure``, also set as ``program.template``."""
    template = _TEMPLATES.setdefault(structure, program)
    program.template = template
    shared: Any = program  # its jitted functions replaced by partials of shared ones
    shared.train = functools.partial(_forward, template, True, hyper)
    shared.infer = functools.partial(_forward, template, False, hyper)
    shared.vjp_train = functools.partial(_vjp, template, True, hyper)
    shared.vjp_infer = functools.partial(_vjp, template, False, hyper)
    return template


class ModuleImplementation(JaxImplementation):
    """A BatchNorm-like module class of a JAX library under test, built per configuration.

    A subclass names the library's own class, the constructor arguments normspec sets
    (:attr:`managed`) and how they express a configuration (:meth:`module_arguments`), and
    makes the program; a class whose program cannot be made for a small configuration is
    not recognised. ``arguments`` are the target's other constructor arguments, passed to
    every layer.
    """

    #: What a recognised class must offer, for the error on one that does not.
    requirements: ClassVar[str]
    #: The constructor arguments normspec sets for every layer (a target may not).
    managed: ClassVar[tuple[str, ...]]
    #: Arguments of the library's own class that change what is computed: named in the
    #: warning when left at their defaults (the class's other optional arguments are not).
    significant: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        module_class: type | None = None,
        profile: str = "flax",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(profile, parameters="input")
        cls = self.default_class() if module_class is None else module_class
        self.arguments = self.checked_arguments(arguments)
        if not self.recognisable(cls, self.arguments):
            raise TypeError(
                f"{cls!r} is not a BatchNorm-like {self.library} module class: it needs "
                f"{self.requirements}"
            )
        self.module_class = cls
        given = ", ".join(f"{name}={value!r}" for name, value in self.arguments.items())
        what = f"{cls.__module__}.{cls.__qualname__}" + (f"({given})" if given else "")
        self.name = self.describe(what)
        self.unset = self.unset_arguments()

    # -- what a library's adapter gives --

    @staticmethod
    @abc.abstractmethod
    def default_class() -> type:
        """The library's own BatchNorm class."""

    @staticmethod
    @abc.abstractmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        """Whether ``obj`` is a module class of the library taking BatchNorm's arguments."""

    @staticmethod
    @abc.abstractmethod
    def module_arguments(config: LayerConfig) -> dict[str, Any]:
        """The :attr:`managed` constructor arguments that express ``config``."""

    @staticmethod
    @abc.abstractmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> JaxProgram:
        """The program of ``module_class`` built with ``arguments``; raises where the
        class does not hold a BatchNorm layer's variables."""

    @abc.abstractmethod
    def module_capabilities(self, program: JaxProgram) -> Capabilities:
        """What the class supports, from a program of a small configuration."""

    # -- shared --

    @classmethod
    def checked_arguments(cls, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
        """A target's constructor arguments; ``ValueError`` for one normspec sets itself."""
        given = dict(arguments or {})
        clashing = sorted(set(given) & set(cls.managed))
        if clashing:
            raise ValueError(
                f"constructor argument {clashing[0]} is set by normspec for every layer; "
                "pass only the class's other arguments"
            )
        return given

    @classmethod
    def recognisable(cls, obj: object, arguments: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is a BatchNorm-like module class of the library (not an
        instance): shaped like BatchNorm, and a program of a small layer can be made."""
        if not isinstance(obj, type) or not cls.shaped_like_batchnorm(obj):
            return False
        try:
            arguments = {**cls.module_arguments(PROBE_CONFIG), **arguments}
            cls.program_for(obj, arguments, PROBE_CONFIG).abstract_structure()
        except Exception:  # a class that cannot be built or run like BatchNorm
            return False
        return True

    @classmethod
    def recognise(
        cls, obj: object, profile: str, arguments: Mapping[str, Any] | None = None
    ) -> ModuleImplementation | None:
        """The recogniser this package declares (``ADAPTERS``); ``arguments``:
        the target's constructor arguments (``ValueError`` for one normspec sets, on a
        class of this library only)."""
        if not isinstance(obj, type) or not cls.shaped_like_batchnorm(obj):
            return None
        given = cls.checked_arguments(arguments)
        if not cls.recognisable(obj, given):
            return None
        return cls(obj, profile, arguments=given)

    def unset_arguments(self) -> list[str]:
        """``name=default`` for each optional constructor argument neither normspec nor the
        target sets that the library's own class does not take, or that is significant."""
        own = set(constructor_parameters(self.default_class())) - set(self.significant)
        skip = {*self.managed, *self.arguments, *own}
        return [
            f"{p.name}={p.default!r}"
            for p in constructor_parameters(self.module_class).values()
            if p.name not in skip and p.default is not inspect.Parameter.empty
        ]

    def capabilities_with(
        self,
        feature_axes: tuple[FeatureAxisPosition, ...],
        step_counter: bool,
        notes: Mapping[str, str],
    ) -> Capabilities:
        """The capabilities every such module shares, the warning for unset arguments."""
        warnings: tuple[str, ...] = ()
        if self.unset:
            cls = self.module_class
            first = self.unset[0].split("=")[0]
            warnings = (
                f"{cls.__qualname__} is checked with its other constructor arguments at their "
                f"defaults: {', '.join(self.unset)}; a target sets them, as in "
                f"'{cls.__module__}:{cls.__qualname__}({first}=...)'",
            )
        return Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=feature_axes,
            backward=True,
            cumulative_average=False,
            untracked=False,
            without_affine=True,
            step_counter=step_counter,
            strided_input=False,
            notes={**MODULE_NOTES, **notes},
            warnings=warnings,
        )

    def base_capabilities(self) -> Capabilities:
        return self.module_capabilities(self.program(PROBE_CONFIG))

    def make_program(self, config: LayerConfig) -> JaxProgram:
        arguments = {**self.module_arguments(config), **self.arguments}
        return self.program_for(self.module_class, arguments, config)
