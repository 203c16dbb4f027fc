"""What the two Flax adapters share: the arguments a user writes, the implementation class.

``flax_linen`` and ``flax_nnx`` differ in how a module is told its arguments (dataclass
fields or constructor keywords), how it is recognised, and how it runs as pure functions
(:class:`normspec.adapters.jax._jax.JaxProgram`); everything else is here.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import Any, ClassVar

import flax
import numpy as np

from normspec.adapters._common import ParameterPolicy
from normspec.adapters.jax import traced_settings
from normspec.adapters.jax._jax import (
    BIAS,
    FLAX_NOTES,
    MEAN,
    PROBE_CONFIG,
    REPLICA_AXIS,
    SCALE,
    UNEVEN_BATCHES,
    VAR,
    JaxImplementation,
    JaxProgram,
    has_variables,
    jax_dtype,
    parameter_dtype,
    replica_devices_missing,
)
from normspec.adapters.jax.traced_settings import Setting
from normspec.adapters.protocol import Capabilities, LayerConfig


def flax_arguments(
    config: LayerConfig,
    *,
    parameters: ParameterPolicy,
    use_fast_variance: bool | None,
    accepts: Callable[[str], bool],
) -> dict[str, Any]:
    """The arguments a user gives a Flax BatchNorm for ``config`` (``use_running_average``
    left out): ``axis`` 1 (features first) or -1, ``momentum`` as given (the profile's
    convention), ``epsilon``, ``use_bias = use_scale = affine``; ``dtype``, ``param_dtype``
    (:func:`parameter_dtype`) and ``use_fast_variance`` (when not ``None``) where the
    module ``accepts`` them."""
    arguments: dict[str, Any] = {
        "axis": 1 if config.feature_position == "first" else -1,
        "momentum": config.momentum,
        "epsilon": config.eps,
        "use_bias": config.affine,
        "use_scale": config.affine,
    }
    if accepts("dtype"):
        arguments["dtype"] = jax_dtype(config.dtype)
    if accepts("param_dtype"):
        arguments["param_dtype"] = parameter_dtype(config.dtype, parameters)
    if use_fast_variance is not None and accepts("use_fast_variance"):
        arguments["use_fast_variance"] = use_fast_variance
    return arguments


#: The arguments of Flax's own BatchNorm that are jit arguments (:class:`Setting`).
SETTINGS = ("epsilon", "momentum")


def stand_ins(hyper: Mapping[str, Any]) -> dict[str, Setting]:
    """The module arguments ``epsilon`` and ``momentum`` of traced ``hyper``."""
    return dict(zip(SETTINGS, traced_settings.stand_ins(hyper), strict=True))


def settings_structure(
    cls: type, own: type, arguments: Mapping[str, Any], config: LayerConfig
) -> Hashable | None:
    """What the programs that share one compilation have in common (everything but the
    settings), or ``None`` where the settings stay Python floats: a class other than the
    API's ``own`` BatchNorm, or half-precision parameters (a float's rounding to float16
    is not its float32 rounding's)."""
    parameters = arguments.get("param_dtype")
    if cls is not own or np.dtype(parameters) not in (np.float32, np.float64):
        return None
    fixed = sorted((k, v) for k, v in arguments.items() if k not in SETTINGS)
    return (cls, repr(fixed), config.num_features, config.rank, config.dtype)


class FlaxImplementation(JaxImplementation):
    """A BatchNorm-like Flax module class under test (default: the API's own BatchNorm).

    ``use_fast_variance`` is passed to the module if given (``None``: the class's default);
    ``parameters`` says where a float16/bfloat16 layer keeps its parameters (``float32``,
    Flax's default ``param_dtype``, or ``input``). A subclass names its API and says how a
    class is recognised, which arguments it accepts, and how its program is made.

    A class that takes ``axis_name`` is also checked synchronized (sync.*): on K devices
    with ``axis_name`` the mesh axis (:class:`~normspec.adapters.jax._jax.ShardedProgram`), with
    ``mask=`` where its ``__call__`` takes one (sync.train.mask), replicas of one batch size
    otherwise (:class:`~normspec.adapters.jax._jax.ReplicatedJaxLayer`).
    """

    #: What a recognised class must offer, for the error on one that does not.
    requirements: ClassVar[str]

    def __init__(
        self,
        module_class: type | None = None,
        profile: str = "flax",
        *,
        parameters: ParameterPolicy = "float32",
        use_fast_variance: bool | None = None,
    ) -> None:
        super().__init__(profile, parameters=parameters)
        cls = self.default_class() if module_class is None else module_class
        if not self.recognisable(cls):
            raise TypeError(
                f"{cls!r} is not a BatchNorm-like {self.library}.Module class: it needs "
                f"{self.requirements}"
            )
        self.module_class = cls
        self.use_fast_variance = use_fast_variance
        what = f"{cls.__module__}.{cls.__qualname__}"
        if use_fast_variance is not None:
            what += f"(use_fast_variance={use_fast_variance})"
        self.name = self.describe(what)

    @staticmethod
    @abc.abstractmethod
    def default_class() -> type:
        """The API's own BatchNorm class."""

    @staticmethod
    @abc.abstractmethod
    def shaped_like_batchnorm(obj: object) -> bool:
        """Whether ``obj`` is a module class of this API taking BatchNorm's arguments."""

    @staticmethod
    @abc.abstractmethod
    def accepts(module_class: type, name: str) -> bool:
        """Whether the module class takes the optional argument ``name``."""

    @staticmethod
    @abc.abstractmethod
    def program_for(
        module_class: type, arguments: Mapping[str, Any], config: LayerConfig
    ) -> JaxProgram:
        """The program of ``module_class`` built with ``arguments``."""

    @classmethod
    def recognisable(cls, obj: object) -> bool:
        """Whether ``obj`` is a BatchNorm-like module class of this API (not an instance):
        shaped like BatchNorm, and its variables, created on a small input, hold one
        ``scale``, ``bias``, ``mean`` and ``var``."""
        if not cls.shaped_like_batchnorm(obj):
            return False
        assert isinstance(obj, type)
        try:
            arguments = flax_arguments(
                PROBE_CONFIG,
                parameters="float32",
                use_fast_variance=None,
                accepts=lambda name: cls.accepts(obj, name),
            )
            params, stats = cls.program_for(obj, arguments, PROBE_CONFIG).abstract_initial()
        except Exception:  # a module that cannot be built or initialised like BatchNorm
            return False
        return has_variables(params, (SCALE, BIAS)) and has_variables(stats, (MEAN, VAR))

    @classmethod
    def recognise(cls, obj: object, profile: str) -> FlaxImplementation | None:
        """The recogniser this package declares (``ADAPTERS``)."""
        if not isinstance(obj, type) or not cls.recognisable(obj):
            return None
        return cls(obj, profile)

    def base_capabilities(self) -> Capabilities:
        base = Capabilities(
            ranks=frozenset({2, 3, 4, 5}),
            feature_axes=("last", "first"),
            backward=True,
            cumulative_average=False,
            untracked=False,
            without_affine=True,
            step_counter=False,
            strided_input=False,
            notes=dict(FLAX_NOTES),
        )
        return self.replica_capabilities(base)

    def replica_capabilities(self, base: Capabilities) -> Capabilities:
        """``base`` with what the class supports synchronized (sync.*)."""
        cls = self.module_class
        missing = (
            f"{cls.__qualname__} takes no axis_name"
            if not self.accepts(cls, "axis_name")
            else replica_devices_missing()
        )
        masks = takes_mask(cls)
        notes = {**base.notes, "replica_uneven_batches": UNEVEN_BATCHES}
        if missing is not None:
            notes["replicas"] = missing
        if not masks:
            notes["replica_masks"] = f"{cls.__qualname__}.__call__ takes no mask"
        return replace(
            base,
            replicas=missing is None,
            replica_masks=missing is None and masks,
            replica_param_gradients="partial",
            replica_uneven_batches=False,
            notes=notes,
        )

    def library_versions(self) -> Mapping[str, str]:
        return {"flax": flax.__version__}

    def arguments(self, config: LayerConfig) -> dict[str, Any]:
        """The module's arguments for ``config`` (:func:`flax_arguments`)."""
        module_class = self.module_class
        return flax_arguments(
            config,
            parameters=self.parameters,
            use_fast_variance=self.use_fast_variance,
            accepts=lambda name: self.accepts(module_class, name),
        )

    def make_program(self, config: LayerConfig) -> JaxProgram:
        return self.program_for(self.module_class, self.arguments(config), config)

    def make_replicated_program(self, config: LayerConfig) -> JaxProgram:
        """The module with ``axis_name`` the replicas' mesh axis, as a data-parallel user
        builds it."""
        return self.program_for(
            self.module_class, {**self.arguments(config), "axis_name": REPLICA_AXIS}, config
        )


def takes_mask(module_class: type) -> bool:
    """Whether the class's ``__call__`` takes ``mask`` (flax's BatchNorm: ``mask=``)."""
    call: Any = module_class.__call__  # the class's own method, else type.__call__
    try:
        parameters = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False
    return "mask" in parameters
