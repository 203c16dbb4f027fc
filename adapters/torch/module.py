"""``torch.nn.BatchNorm1d/2d/3d`` and every module class built like them, with no glue code.

A module class is recognised as a BatchNorm when its constructor takes ``num_features, eps,
momentum, affine, track_running_stats`` and an instance has the parameters ``weight``,
``bias`` and the buffers ``running_mean``, ``running_var`` (``num_batches_tracked``
optional: the step counter). Momentum is passed as given (the profile's convention; under
the torch profile it is alpha itself, and ``None`` is the cumulative average,
bn.running.cumulative).

It is recognised as a *frozen* BatchNorm (inference only, as
``torchvision.ops.FrozenBatchNorm2d``) when its constructor takes ``num_features, eps``,
``weight``, ``bias``, ``running_mean`` and ``running_var`` are all buffers, and it has no
training mode: a call in training mode returns what a call in inference mode returns and
changes no buffer. The clauses that need a training step are then not applicable
(``Capabilities.training``); its inference, inference backward (the gradients in ``weight``
and ``bias`` too), shapes and accuracy are checked.

Constructor arguments beyond those come from the target (``pkg.mod:Class(apply_act=False)``);
those left at their defaults are named in a report warning. A class neither shape fits is
explained by :func:`explain`: which requirement failed, and what to do.

The input ranks a class takes are, in order of precedence: its ``normspec_ranks`` class
attribute; those of the torch class it derives from (1d: 2 and 3, 2d: 4, 3d: 5); the ranks
its ``_check_input_dim`` accepts; the ranks a forward pass accepts, probed with inputs whose
sizes all differ, so that no input of another rank broadcasts against a per-feature vector.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from normspec.adapters._common import ParameterPolicy
from normspec.adapters.protocol import Capabilities, LayerConfig, UnsupportedConfig
from normspec.adapters.torch._torch import BatchNormTensors, TorchImplementation, TorchLayer

#: The class attribute a third-party module may set to declare its input ranks.
RANKS_ATTRIBUTE = "normspec_ranks"

CONSTRUCTOR_ARGUMENTS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
#: A frozen BatchNorm's constructor arguments (torchvision.ops.FrozenBatchNorm2d).
FROZEN_ARGUMENTS = ("num_features", "eps")
#: Arguments normspec sets itself or leaves to the module: never warned about.
MANAGED_ARGUMENTS = ("device", "dtype", "process_group")

TENSORS = ("weight", "bias", "running_mean", "running_var")

#: How a recognised class is checked: a BatchNorm, or a frozen (inference-only) one.
Kind = Literal["batchnorm", "frozen"]

_TORCH_RANKS: tuple[tuple[type[nn.Module], frozenset[int]], ...] = (
    (nn.BatchNorm1d, frozenset({2, 3})),
    (nn.BatchNorm2d, frozenset({4})),
    (nn.BatchNorm3d, frozenset({5})),
)

_ALL_RANKS = (2, 3, 4, 5)


def _construct(cls: type[nn.Module], **arguments: Any) -> nn.Module:
    return cls(
        **{"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True, **arguments}
    )


def _missing_arguments(cls: type, names: tuple[str, ...]) -> list[str]:
    """The ``names`` the constructor of ``cls`` cannot take as keyword arguments."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return list(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [
        name
        for name in names
        if name not in parameters or parameters[name].kind is inspect.Parameter.POSITIONAL_ONLY
    ]


def _tensor_kind(module: nn.Module, name: str) -> str:
    """``parameter``, ``buffer`` (any other tensor) or ``missing``."""
    value = getattr(module, name, None)
    if isinstance(value, nn.Parameter):
        return "parameter"
    return "buffer" if isinstance(value, torch.Tensor) else "missing"


def _probe_input(num_features: int, rank: int) -> torch.Tensor:
    """An input of ``rank`` whose sizes all differ (3, features, then 5, 7, 11 spatially;
    features 2): a forward written for another rank cannot broadcast against it."""
    shape = (3, num_features, *(5, 7, 11)[: rank - 2])
    return torch.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)


def module_ranks(cls: type[nn.Module], instance: nn.Module, num_features: int) -> frozenset[int]:
    """The input ranks a BatchNorm-like module class takes (see the module docstring)."""
    declared = getattr(cls, RANKS_ATTRIBUTE, None)
    if declared is not None:
        return frozenset(int(rank) for rank in declared)
    for base, ranks in _TORCH_RANKS:
        if issubclass(cls, base):
            return ranks
    check = getattr(instance, "_check_input_dim", None)
    accepted: set[int] = set()
    for rank in _ALL_RANKS:
        x = _probe_input(num_features, rank)
        try:
            if callable(check):
                check(x)
            else:
                with torch.no_grad():
                    y = instance.train()(x)
                if not isinstance(y, torch.Tensor) or y.shape != x.shape:
                    continue
        except Exception:  # a rejected rank, whatever the error
            continue
        accepted.add(rank)
    # A class that takes no rank at all is checked on every rank: its errors are reported.
    return frozenset(accepted) if accepted else frozenset(_ALL_RANKS)


def _training_mode(module: nn.Module) -> str | None:
    """Why ``module`` has a training mode (a training-mode call returns something else than
    an inference-mode call, or changes a buffer); ``None``: it has none."""
    with torch.no_grad():
        for name, values in zip(
            TENSORS, ([1.5, -0.5], [0.25, 1.0], [0.5, -1.0], [2.0, 0.5]), strict=True
        ):
            getattr(module, name).copy_(torch.tensor(values))
        for rank in _ALL_RANKS:
            x = _probe_input(2, rank)
            try:
                expected = module.eval()(x)
            except Exception:  # a rank it does not take
                continue
            before = [b.clone() for b in module.buffers()]
            try:
                got = module.train()(x)
            except Exception as error:
                return f"a training-mode call raised {type(error).__name__}: {error}"
            changed = any(
                not torch.equal(b, a) for b, a in zip(before, module.buffers(), strict=True)
            )
            if changed:
                return "a training-mode call changed its buffers"
            if not (isinstance(got, torch.Tensor) and torch.equal(got, expected)):
                return "a training-mode call returned another output than an inference call"
            return None
    return "an inference call accepted no input of rank 2 to 5"


def _tensor_problems(module: nn.Module, kinds: Mapping[str, str]) -> list[str]:
    """What is wrong with ``module``'s tensors against the ``kinds`` they must be."""
    problems = []
    for name, wanted in kinds.items():
        found = _tensor_kind(module, name)
        if found == "missing":
            problems.append(f"it has no {name}")
        elif wanted == "parameter" and found != "parameter":
            problems.append(f"{name} is a buffer")
        elif wanted == "buffer" and found != "buffer":
            problems.append(f"{name} is a parameter")
    return problems


def _problems(
    cls: type, taken: Mapping[str, Any], arguments: Mapping[str, Any]
) -> tuple[list[str], nn.Module | None]:
    """Why ``cls`` does not take the constructor arguments ``taken``, and an instance built
    with those it takes (``None`` if that fails)."""
    missing = _missing_arguments(cls, tuple(taken))
    problems = [f"its constructor takes no {', '.join(missing)}"] if missing else []
    given = {name: value for name, value in taken.items() if name not in missing}
    try:
        return problems, cls(**given, **arguments)
    except Exception as error:  # a constructor that needs more
        listed = ", ".join(given)
        return [*problems, f"{cls.__name__}({listed}) raised {type(error).__name__}: {error}"], None


#: The arguments a candidate class is built with to see whether it is recognisable.
_PROBE_ARGUMENTS = {
    "num_features": 2,
    "eps": 1e-5,
    "momentum": 0.1,
    "affine": True,
    "track_running_stats": True,
}


def batchnorm_problems(cls: type, arguments: Mapping[str, Any]) -> list[str]:
    """Why ``cls`` is not a BatchNorm-like module class (empty: it is one)."""
    problems, module = _problems(cls, _PROBE_ARGUMENTS, arguments)
    if module is not None:
        kinds = {"weight": "parameter", "bias": "parameter"}
        problems += _tensor_problems(module, {**kinds, "running_mean": "any", "running_var": "any"})
    return problems


def frozen_problems(cls: type, arguments: Mapping[str, Any]) -> list[str]:
    """Why ``cls`` is not a frozen BatchNorm module class (empty: it is one)."""
    taken = {name: _PROBE_ARGUMENTS[name] for name in FROZEN_ARGUMENTS}
    problems, module = _problems(cls, taken, arguments)
    if module is None:
        return problems
    problems += _tensor_problems(module, dict.fromkeys(TENSORS, "buffer"))
    problems += [
        f"{name} has shape {tuple(getattr(module, name).shape)} for 2 features"
        for name in TENSORS
        if not problems and tuple(getattr(module, name).shape) != (2,)
    ]
    if not problems:
        reason = _training_mode(module)
        if reason is not None:
            problems.append(f"it has a training mode: {reason}")
    return problems


def kind_of(obj: object, arguments: Mapping[str, Any] | None = None) -> Kind | None:
    """How ``obj`` is checked: a BatchNorm-like or a frozen ``torch.nn.Module`` class (not an
    instance), built with the extra constructor ``arguments``; ``None``: neither."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return None
    given = arguments or {}
    if not batchnorm_problems(obj, given):
        return "batchnorm"
    if not frozen_problems(obj, given):
        return "frozen"
    return None


def recognisable(obj: object) -> bool:
    """Whether ``obj`` is a BatchNorm-like ``torch.nn.Module`` class (not an instance)."""
    return kind_of(obj) == "batchnorm"


def explain(obj: object, arguments: Mapping[str, Any] | None = None) -> str | None:
    """Why a ``torch.nn.Module`` class is not recognised, and what to do (``None`` for
    anything else): one line for the command line's usage error."""
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return None
    given = arguments or {}
    as_batchnorm = "; ".join(batchnorm_problems(obj, given))
    as_frozen = "; ".join(frozen_problems(obj, given))
    return (
        f"{obj.__qualname__} is a torch.nn.Module class normspec does not recognise: as a "
        f"BatchNorm ({', '.join(CONSTRUCTOR_ARGUMENTS)}; parameters weight, bias; buffers "
        f"running_mean, running_var) {as_batchnorm}; as a frozen BatchNorm (num_features, "
        f"eps; buffers {', '.join(TENSORS)}; no training mode) {as_frozen}. Pass other "
        "constructor arguments in the target (module:Class(name=value)), or write an "
        "adapter with normspec.adapters.framework.FrameworkAdapter (README: Writing an adapter)"
    )


def _argument_names(cls: type) -> list[str]:
    try:
        return list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return []


def checked_arguments(arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """A target's constructor arguments; ``ValueError`` for one normspec sets itself."""
    given = dict(arguments or {})
    clashing = sorted(set(given) & {*CONSTRUCTOR_ARGUMENTS, *MANAGED_ARGUMENTS})
    if clashing:
        raise ValueError(
            f"constructor argument {clashing[0]} is set by normspec for every layer; "
            "pass only the class's other arguments"
        )
    return given


def unset_arguments(cls: type, kind: Kind, given: Mapping[str, Any]) -> list[str]:
    """``name=default`` for each constructor argument of ``cls`` with a default that neither
    normspec nor the target (``given``) sets, nor torch's BatchNorm takes (a BatchNorm-like
    class; ``device``, ``dtype``, ``bias`` where this torch has it)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    handled = (
        [*CONSTRUCTOR_ARGUMENTS, *_argument_names(nn.BatchNorm2d)]
        if kind == "batchnorm"
        else FROZEN_ARGUMENTS
    )
    skip = {*handled, *MANAGED_ARGUMENTS, *given}
    return [
        f"{p.name}={p.default!r}"
        for p in parameters
        if p.name not in skip and p.default is not inspect.Parameter.empty
    ]


class TorchModuleLayer(TorchLayer):
    """One module instance: ``module.train()`` / ``module.eval()`` and a call."""

    def __init__(
        self, module: nn.Module, config: LayerConfig, device: torch.device, parameters: torch.dtype
    ) -> None:
        super().__init__(config, device, parameters)
        self.module = module

    def tensors(self) -> BatchNormTensors:
        module = self.module
        return BatchNormTensors(
            weight=getattr(module, "weight", None),
            bias=getattr(module, "bias", None),
            running_mean=getattr(module, "running_mean", None),
            running_var=getattr(module, "running_var", None),
            num_batches_tracked=getattr(module, "num_batches_tracked", None),
        )

    def mutable_tensors(self) -> list[torch.Tensor]:
        """Every buffer of the module, whatever it is called."""
        return [buffer for buffer in self.module.buffers() if buffer is not None]

    def forward(self, x: torch.Tensor, *, training: bool) -> object:
        self.module.train(training)
        return self.module(x)


class TorchModuleImplementation(TorchImplementation):
    """A BatchNorm-like (or frozen BatchNorm) ``torch.nn.Module`` class under test.

    ``arguments``: extra constructor arguments (``{"apply_act": False}``); ``ranks``
    overrides the detected input ranks; ``device`` defaults to ``$NORMSPEC_TORCH_DEVICE`` or
    the CPU; ``parameters`` says where a float16/bfloat16 layer keeps its parameters and
    running statistics (``float32``, as under autocast, or ``input``, as after
    ``module.half()``; detected per dtype if not given).
    """

    def __init__(
        self,
        module_class: type[nn.Module],
        profile: str = "torch",
        *,
        device: str | torch.device | None = None,
        parameters: ParameterPolicy | None = None,
        ranks: frozenset[int] | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(profile, device=device, parameters=parameters)
        self.arguments = checked_arguments(arguments)
        kind = kind_of(module_class, self.arguments)
        if kind is None:
            raise TypeError(explain(module_class, self.arguments))
        self.kind: Kind = kind
        self.module_class = module_class
        probe = self._new_module(num_features=2, eps=1e-5, momentum=0.1, affine=True, track=True)
        self.has_step_counter = isinstance(
            getattr(probe, "num_batches_tracked", None), torch.Tensor
        )
        self.ranks = ranks if ranks is not None else module_ranks(module_class, probe, 2)
        self.unset = unset_arguments(module_class, kind, self.arguments)
        given = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        what = f"{module_class.__module__}.{module_class.__qualname__}"
        self.name = self.describe(what + (f"({given})" if given else ""))

    def _new_module(
        self, *, num_features: int, eps: float, momentum: float | None, affine: bool, track: bool
    ) -> nn.Module:
        if self.kind == "frozen":
            return self.module_class(num_features=num_features, eps=eps, **self.arguments)
        return _construct(
            self.module_class,
            num_features=num_features,
            eps=eps,
            momentum=momentum,
            affine=affine,
            track_running_stats=track,
            **self.arguments,
        )

    def base_capabilities(self) -> Capabilities:
        notes = {
            "feature_axes": "torch modules take the features at axis 1; channels-last data "
            "is checked as a strided (torch.channels_last) layout",
            "renorm": "torch has no batch renormalization",
        }
        warnings: tuple[str, ...] = ()
        if self.unset:
            cls = self.module_class
            first = self.unset[0].split("=")[0]
            warnings = (
                f"{cls.__qualname__} is checked with its other constructor arguments at their "
                f"defaults: {', '.join(self.unset)}; a target sets them, as in "
                f"'{cls.__module__}:{cls.__qualname__}({first}=...)'",
            )
        if self.kind == "frozen":
            frozen = "a frozen BatchNorm keeps its affine parameters and statistics as buffers"
            notes.update(
                training=f"{frozen} and has no training mode",
                untracked=frozen,
                cumulative_average=frozen,
                step_counter=frozen,
            )
            return Capabilities(
                ranks=self.ranks,
                training=False,
                untracked=False,
                without_affine=False,
                notes=notes,
                warnings=warnings,
            )
        cumulative = self.has_step_counter and self.profile_has_cumulative_average()
        if not self.has_step_counter:
            notes["step_counter"] = "the module has no num_batches_tracked buffer"
            notes["cumulative_average"] = "without num_batches_tracked there is no momentum=None"
        elif not cumulative:
            notes["cumulative_average"] = f"profile {self.profile!r} defines no momentum=None"
        return Capabilities(
            ranks=self.ranks,
            feature_axes=("first",),
            cumulative_average=cumulative,
            untracked=True,
            without_affine=True,
            step_counter=self.has_step_counter,
            strided_input=True,
            notes=notes,
            warnings=warnings,
        )

    def make_layer(self, config: LayerConfig) -> TorchModuleLayer:
        try:
            module = self._new_module(
                num_features=config.num_features,
                eps=config.eps,
                momentum=config.momentum,
                affine=config.affine,
                track=config.track_running_stats,
            )
        except (TypeError, ValueError) as problem:
            raise UnsupportedConfig(f"{self.module_class.__name__}: {problem}") from None
        dtype = self.parameter_dtype(config.dtype)
        module.to(device=self.device, dtype=dtype)
        return TorchModuleLayer(module, config, self.device, dtype)


def recognise(
    obj: object, profile: str, arguments: Mapping[str, Any] | None = None
) -> TorchModuleImplementation | None:
    """The recogniser this package declares (``ADAPTERS``); ``arguments``:
    the target's constructor arguments."""
    if kind_of(obj, checked_arguments(arguments)) is None:
        return None
    assert isinstance(obj, type) and issubclass(obj, nn.Module)
    return TorchModuleImplementation(obj, profile, arguments=arguments)
