"""What an adapter package declares: its targets, recognisers, explainers and file loaders.

Each framework's adapters live in one package (``normspec.adapters.torch``, ``.jax``,
``.keras``, ``.tensorflow``, ``.onnx``) whose ``__init__`` states, as data and without
importing its framework, an :class:`Adapters` value named ``ADAPTERS``. The registry (the
targets ``normspec check`` accepts), the report's built-in list and the command line collect
them from there (:func:`collected`): an adapter is added in one place.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

#: The adapter packages, in the order their targets are listed and their recognisers tried.
PACKAGES = ("torch", "jax", "keras", "tensorflow", "onnx")


@dataclass(frozen=True)
class BuiltinTarget:
    """A target normspec knows, the profile it claims, and the frameworks it needs.

    ``target`` is what a user types (an alias, or ``package.module:attr`` of a class a
    recogniser takes); ``factory`` (``"module:function"``, called with the profile and the
    target's keyword arguments) makes an alias's implementation; ``reported``: among the
    targets ``normspec report`` checks (others are spellings or variants of those);
    ``environment``: variables its worker process starts with (Keras 3's backend, fixed when
    Keras is imported).
    """

    target: str
    profile: str
    frameworks: tuple[str, ...] = ()
    label: str = ""
    factory: str = ""
    reported: bool = True
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.label or self.target


@dataclass(frozen=True)
class Recogniser:
    """``function`` (``"module:function"``) recognises objects of ``framework``, tried only
    once that framework is imported. It takes (object, profile) and returns an
    Implementation or ``None``; one that builds classes with the target's constructor
    arguments also takes ``arguments``."""

    framework: str
    function: str


@dataclass(frozen=True)
class Adapters:
    """One package's declarations (see the module docstring).

    ``explainers``: (framework, ``"module:function"``) saying why an object of that framework
    is recognised by none of its recognisers; ``file_loaders``: (file suffix,
    ``"module:function"``) loading ``path/file#Node`` targets, with (path, profile, arguments).
    """

    targets: tuple[BuiltinTarget, ...] = ()
    recognisers: tuple[Recogniser, ...] = ()
    explainers: tuple[Recogniser, ...] = ()
    file_loaders: tuple[tuple[str, str], ...] = ()

    def __add__(self, other: Adapters) -> Adapters:
        return Adapters(
            self.targets + other.targets,
            self.recognisers + other.recognisers,
            self.explainers + other.explainers,
            self.file_loaders + other.file_loaders,
        )


#: The reference, a target of normspec itself.
REFERENCE = BuiltinTarget(
    "reference",
    "paper",
    (),
    "normspec reference",
    factory="normspec.adapters.reference:ReferenceImplementation",
)


def collected() -> Adapters:
    """The reference's declaration and every adapter package's, in :data:`PACKAGES` order
    (importing the packages, which import no framework)."""
    found = Adapters(targets=(REFERENCE,))
    for package in PACKAGES:
        found = found + importlib.import_module(f"normspec.adapters.{package}").ADAPTERS
    return found
