"""Batch-renormalization ``torch.nn.Module`` classes of third parties, with no glue code.

A module class is recognised as a renorm layer when its constructor takes ``num_features,
eps, momentum`` and bounds (``r_max`` and ``d_max``, or a clipping mapping; a warm-up
argument such as ``warmup_steps`` optional), and an instance built with them has the
parameters ``weight`` and ``bias`` and buffers for a moving mean, a moving spread and a step
counter (``running_mean``, ``running_std`` or ``running_var``, ``num_batches_tracked``):
the names and their roles are :mod:`normspec.adapters.renorm_roles`', shared with Flax.
``affine`` is used where the constructor takes it.

It is checked under the profile that describes its dialect (``normspec check
pkg.mod:BatchRenorm2d --profile ./mylib.toml``): the renorm clauses only, a layer config's
renorm part expressed as its bounds and warm-up, momentum and eps as given (the profile's
convention). Input ranks are found as for a BatchNorm-like class
(:func:`normspec.adapters.torch.module.module_ranks`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from normspec.adapters import renorm_roles
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    LayerConfig,
    State,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.adapters.torch._torch import TorchImplementation, read_tensor, vector_to_torch
from normspec.adapters.torch.module import (
    MANAGED_ARGUMENTS,
    TorchModuleLayer,
    module_ranks,
)
from normspec.reference.renorm import RenormStatistics

#: The constructor arguments every renorm layer takes (``affine`` where it does).
CONSTRUCTOR_ARGUMENTS = ("num_features", "eps", "momentum")


def _argument_names(cls: type) -> list[str]:
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY]


def _buffer_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_buffers(recurse=False)]


def roles_of(
    cls: object, arguments: Mapping[str, Any]
) -> tuple[renorm_roles.ArgumentRoles, renorm_roles.StateRoles, bool] | None:
    """The argument and buffer roles of a renorm-shaped module class, and whether it takes
    ``affine``; ``None`` for anything else."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    names = _argument_names(cls)
    if not set(CONSTRUCTOR_ARGUMENTS) <= set(names):
        return None
    found = renorm_roles.argument_roles(names)
    if found is None:
        return None
    affine = "affine" in names
    try:
        probe = cls(
            num_features=2,
            eps=1e-3,
            momentum=0.1,
            **({"affine": True} if affine else {}),
            **renorm_roles.probe_arguments(found),
            **arguments,
        )
    except Exception:  # a constructor that needs more
        return None
    state = renorm_roles.state_roles(_buffer_names(probe))
    parameters = dict(probe.named_parameters(recurse=False))
    if state is None or not {"weight", "bias"} <= set(parameters):
        return None
    return found, state, affine


class TorchRenormLayer(TorchModuleLayer):
    """One renorm module: its moving statistics read and written through their roles."""

    def __init__(
        self,
        module: nn.Module,
        config: LayerConfig,
        device: torch.device,
        parameters: torch.dtype,
        state: renorm_roles.StateRoles,
    ) -> None:
        super().__init__(module, config, device, parameters)
        self.roles = state

    def _load(self, values: Mapping[str, Array], steps: int | None = None) -> None:
        """Through ``load_state_dict``, as a user restores a layer: vectors of another length
        are refused by torch (renorm.params.shape), never broadcast."""
        names = [*values, *([self.roles.steps] if steps is not None else [])]
        held: dict[str, torch.Tensor] = {}
        for name in names:
            tensor = getattr(self.module, name, None)
            if not isinstance(tensor, torch.Tensor):
                raise WrongOutput(f"the layer has no {name} tensor")
            held[name] = tensor
        loaded = {name: vector_to_torch(value, held[name]) for name, value in values.items()}
        if steps is not None:
            loaded[self.roles.steps] = torch.full_like(held[self.roles.steps], steps)
        self.module.load_state_dict(loaded, strict=False)

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._load({"weight": gamma, "bias": beta})

    def set_state(self, state: State) -> None:
        if not isinstance(state, RenormStatistics):
            raise TypeError(f"a renorm layer keeps RenormStatistics, not {state!r}")
        self._load({self.roles.mean: state.mean, self.roles.spread: state.spread}, state.steps)

    def state(self) -> State | None:
        n, roles = self.config.num_features, self.roles
        mean = read_tensor(getattr(self.module, roles.mean, None), n, roles.mean)
        spread = read_tensor(getattr(self.module, roles.spread, None), n, roles.spread)
        counter = getattr(self.module, roles.steps, None)
        steps = counter.item() if isinstance(counter, torch.Tensor) else counter
        return renorm_roles.statistics(mean, spread, steps)


class TorchRenormImplementation(TorchImplementation):
    """A renorm ``torch.nn.Module`` class under test (see the module docstring)."""

    def __init__(
        self,
        module_class: type[nn.Module],
        profile: str,
        *,
        arguments: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(profile, device=device)
        given = dict(arguments or {})
        found = roles_of(module_class, given)
        if found is None:
            raise TypeError(f"{module_class!r} is not a renorm-shaped torch.nn.Module class")
        self.module_class = module_class
        self.arguments = given
        self.argument_roles, self.state_roles, self.takes_affine = found
        probe = self._new_module(2, 1e-3, 0.1, True, renorm_roles.probe_arguments(found[0]))
        self.ranks = module_ranks(module_class, probe, 2)
        what = f"{module_class.__module__}.{module_class.__qualname__}"
        listed = ", ".join(f"{k}={v!r}" for k, v in given.items())
        self.name = self.describe(what + (f"({listed})" if listed else ""))

    def _new_module(
        self,
        features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        renorm: dict[str, Any],
    ) -> nn.Module:
        options = {"affine": affine} if self.takes_affine else {}
        return self.module_class(
            num_features=features,
            eps=eps,
            momentum=momentum,
            **options,
            **renorm,
            **self.arguments,
        )

    def base_capabilities(self) -> Capabilities:
        roles = renorm_roles.describe(self.argument_roles, self.state_roles)
        return Capabilities(
            ranks=self.ranks,
            feature_axes=("first",),
            batchnorm=False,
            renorm=True,
            untracked=False,
            without_affine=self.takes_affine,
            step_counter=True,
            strided_input=True,
            notes={
                "batchnorm": f"{self.module_class.__qualname__} is a renorm layer ({roles})",
                "untracked": "a renorm layer always keeps moving statistics",
                "without_affine": f"{self.module_class.__qualname__} takes no affine",
            },
            warnings=renorm_roles.profile_notes(self.profile, self.state_roles),
        )

    def probe(self, config: LayerConfig, x: Array, base: Capabilities) -> str | None:
        return super().probe(renorm_roles.probe_config(config, self.profile), x, base)

    def make_layer(self, config: LayerConfig) -> TorchRenormLayer:
        if config.renorm is None:
            raise UnsupportedConfig(f"{self.module_class.__name__} is a renorm layer only")
        renorm = renorm_roles.library_arguments(self.argument_roles, config.renorm)
        try:
            module = self._new_module(
                config.num_features, config.eps, config.momentum, config.affine, renorm
            )
        except TypeError as problem:  # an argument it does not take; a ValueError is its own
            raise UnsupportedConfig(f"{self.module_class.__name__}: {problem}") from None
        dtype = self.parameter_dtype(config.dtype)
        module.to(device=self.device, dtype=dtype)  # the step counter stays an integer
        return TorchRenormLayer(module, config, self.device, dtype, self.state_roles)


def explain(obj: object, arguments: Mapping[str, Any] | None = None) -> str | None:
    """Why a module class whose constructor takes renorm bounds is not recognised as a
    renorm layer, and what to do (``None`` for any other object): one line."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return None
    names = _argument_names(obj)
    found = renorm_roles.argument_roles(names)
    if found is None:
        return None
    problems = [
        f"its constructor takes no {name}" for name in CONSTRUCTOR_ARGUMENTS if name not in names
    ]
    if not problems:
        try:
            probe = obj(
                num_features=2,
                eps=1e-3,
                momentum=0.1,
                **renorm_roles.probe_arguments(found),
                **dict(arguments or {}),
            )
        except Exception as error:  # a constructor that needs more
            problems.append(f"building it raised {type(error).__name__}: {error}")
        else:
            problems += renorm_roles.missing_roles(found, _buffer_names(probe))
            parameters = dict(probe.named_parameters(recurse=False))
            problems += [
                f"it has no parameter {p}" for p in ("weight", "bias") if p not in parameters
            ]
    if not problems:
        return None
    return (
        f"{obj.__qualname__} takes renorm bounds ({renorm_roles.describe_arguments(found)}) "
        f"but normspec does not recognise it as a renorm layer: {'; '.join(problems)}. Pass "
        "other constructor arguments in the target (module:Class(name=value)), or write an "
        "adapter (README: Renorm layers outside Keras, Writing an adapter)"
    )


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> TorchRenormImplementation | None:
    """The recogniser this package declares (``ADAPTERS``)."""
    given = dict(arguments or {})
    if set(given) & {*CONSTRUCTOR_ARGUMENTS, "affine", *MANAGED_ARGUMENTS}:
        return None
    if roles_of(obj, given) is None:
        return None
    assert isinstance(obj, type) and issubclass(obj, nn.Module)
    return TorchRenormImplementation(obj, profile, arguments=given)
