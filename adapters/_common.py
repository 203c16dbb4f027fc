"""What every framework adapter shares, independent of the framework.

Checking a :class:`LayerConfig` against the capabilities (:func:`check_config`), probing
which dtypes a tiny forward and backward work in (:func:`probe_dtypes`), parameter-dtype
policies for half-precision inputs, and the running statistics a library reports. Imports
no framework: the TensorFlow (``_tf``), JAX (``_jax``) and PyTorch adapters and the public
:mod:`normspec.adapters.framework` build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Literal, get_args

import numpy as np

from normspec.adapters._quiet import quiet_startup
from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    Capabilities,
    Chapter,
    DTypeName,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.reference import RunningStatistics
from normspec.reference.dialects import find_profile

#: Where the parameters of a float16/bfloat16 layer live: ``float32`` as in mixed-precision
#: training (PyTorch's autocast, Keras' ``mixed_bfloat16`` policy, Flax's
#: ``dtype=bfloat16`` with the default ``param_dtype=float32``); ``input``: the whole layer
#: in the input's dtype (``module.half()``, Flax's ``param_dtype=bfloat16``).
ParameterPolicy = Literal["float32", "input"]

HALF_DTYPES: frozenset[DTypeName] = frozenset({"float16", "bfloat16"})

#: A probe: runs a training step, an inference and a backward of a tiny layer built from
#: the config on ``x``; returns why the dtype is unusable, or ``None``. An exception it
#: raises also marks the dtype unusable (see :func:`probe_dtypes`).
Probe = Callable[[LayerConfig, Array], "str | None"]

#: The tiny layer of a chapter made from the BN probe's config (:func:`probe_case`), or
#: ``None`` where the adapter has no probe for that chapter (its dtypes are then not probed
#: apart: the chapter's clauses run in every dtype of ``Capabilities.dtypes``).
ChapterConfig = Callable[[Chapter, LayerConfig], "LayerConfig | None"]

#: The probes of chapters whose tiny layer the main probe does not build: the replicas
#: chapter's (a layer on two replicas, ``build_replicated``).
ChapterProbes = Mapping[Chapter, Probe]

#: The chapters whose dtypes are probed apart, in the order their reasons are reported.
PROBED_CHAPTERS: tuple[Chapter, ...] = get_args(Chapter)

#: The chapter's layer in the messages about a dtype it fails in.
CHAPTER_LAYERS: dict[Chapter, str] = {
    "batchnorm": "batch-normalization layer",
    "renorm": "batch-renormalization layer",
    "ghost_batches": "ghost-batch layer",
    "replicas": "replicated layer",
    "layernorm": "LayerNorm layer",
    "rmsnorm": "RMSNorm layer",
    "groupnorm": "GroupNorm layer",
    "instancenorm": "InstanceNorm layer",
}


def chapter_of(config: LayerConfig) -> Chapter:
    """The chapter whose layer ``config`` describes."""
    if config.family is not None:
        return config.family.kind
    if config.renorm is not None:
        return "renorm"
    return "ghost_batches" if config.virtual_batch_size is not None else "batchnorm"


#: The chapters of the normalization family (layernorm.md, groupnorm.md), by layer kind.
FAMILY_KINDS: dict[Chapter, FamilyKind] = {
    "layernorm": "layernorm",
    "rmsnorm": "rmsnorm",
    "groupnorm": "groupnorm",
    "instancenorm": "instancenorm",
}


def default_chapter_config(chapter: Chapter, config: LayerConfig) -> LayerConfig | None:
    """A chapter's tiny layer where the adapter needs nothing of its own: BN as probed (the
    replicas chapter's on two replicas, :data:`ChapterProbes`), ghost batches of two samples
    (the probe's batch holds four), a family layer of two features without statistics
    (:func:`family_probe_config`); none for renorm."""
    if chapter in ("batchnorm", "replicas"):
        return config
    if chapter == "ghost_batches":
        return replace(config, virtual_batch_size=2)
    if chapter in FAMILY_KINDS:
        return family_probe_config(chapter, config)
    return None


def family_probe_config(chapter: Chapter, config: LayerConfig) -> LayerConfig:
    """The tiny family layer of ``chapter`` made from the BN probe's ``config``: two
    features, a weight and no bias (a layer may have none), no statistics; a slice over the
    last axis (LayerNorm, RMSNorm), or two channels at axis 1 in one group (GroupNorm) or
    one each (InstanceNorm), of rank 3 at least. Every axis but the batch's has two values
    in the probe's input (:func:`probe_input`)."""
    kind = FAMILY_KINDS[chapter]
    grouped = kind in ("groupnorm", "instancenorm")
    rank = max(config.rank, 3) if grouped else config.rank
    return replace(
        config,
        rank=rank,
        feature_axis=1 if grouped else rank - 1,
        momentum=None,
        track_running_stats=False,
        family=FamilyConfig(kind, () if grouped else (2,), bias=False),
    )


def _probed_chapters(base: Capabilities) -> list[Chapter]:
    """The chapters of ``base`` to probe: those it declares (ghost batches with BN only)."""
    declared = [c for c in PROBED_CHAPTERS if getattr(base, c)]
    if "ghost_batches" in declared and not base.batchnorm:
        declared.remove("ghost_batches")
    return declared or ["batchnorm"]  # nothing declared: the dtypes as a BN layer has them


def parameter_dtype_name(name: DTypeName, policy: ParameterPolicy) -> DTypeName:
    """The dtype of the parameters for inputs of dtype ``name`` under ``policy``."""
    if policy not in ("float32", "input"):
        raise ValueError(f"parameter policy must be 'float32' or 'input', got {policy!r}")
    if name not in ALL_DTYPES:
        raise UnsupportedConfig(f"unknown dtype {name!r}")
    if name in HALF_DTYPES and policy == "float32":
        return "float32"
    return name


def profile_has_cumulative_average(profile: str) -> bool:
    """Whether the profile defines ``momentum=None`` (dialect.cumulative_average)."""
    dialect = find_profile(profile)
    return dialect is not None and dialect.cumulative_average


def running_statistics(mean: Array, var: Array, steps: int) -> RunningStatistics:
    """The reference's state value holding what a library reports (any values: the clauses
    judge them), or :class:`WrongOutput` if the arrays cannot be one (not two vectors of one
    shape)."""
    try:
        return RunningStatistics(mean, var, steps)
    except ValueError as problem:
        raise WrongOutput(f"the running statistics are malformed: {problem}") from None


def _positions(caps: Capabilities) -> str:
    names = {"first": "axis 1", "last": "the last axis"}
    return " or ".join(names[p] for p in caps.feature_axes) or "no feature axis"


def check_config(caps: Capabilities, config: LayerConfig, *, library: str | None = None) -> None:
    """Raise :class:`UnsupportedConfig` for a configuration outside ``caps``.

    ``library`` names the implementation in the messages.
    """
    who = library or "the implementation"
    if config.renorm is not None and not caps.renorm:
        raise UnsupportedConfig(f"batch renormalization is not supported by {who}")
    if config.virtual_batch_size is not None and not caps.ghost_batches:
        note = caps.notes.get("ghost_batches")
        raise UnsupportedConfig(
            f"ghost batches (virtual_batch_size) are not supported by {who}"
            + (f" ({note})" if note else "")
        )
    if config.dtype not in caps.dtypes:
        note = caps.notes.get("dtypes")
        raise UnsupportedConfig(
            f"dtype {config.dtype} is not supported by {who}" + (f" ({note})" if note else "")
        )
    refusal = refused_dtype(caps, chapter_of(config), config.dtype)
    if refusal is not None:
        raise UnsupportedConfig(refusal)
    if config.family is not None:  # its shape and statistics are its chapter's
        if not getattr(caps, config.family.kind):
            raise UnsupportedConfig(f"{config.family.kind} layers are not supported by {who}")
        return
    if config.rank not in caps.ranks:
        raise UnsupportedConfig(f"rank {config.rank} is not one of {sorted(caps.ranks)}")
    if config.feature_position not in caps.feature_axes:
        raise UnsupportedConfig(
            f"feature axis {config.feature_axis} of a rank-{config.rank} input: {who} takes "
            f"the features at {_positions(caps)}"
        )
    if config.momentum is None and not caps.cumulative_average:
        raise UnsupportedConfig("momentum=None (cumulative average) is not supported")
    if not config.track_running_stats and not caps.untracked:
        raise UnsupportedConfig("track_running_stats=False is not supported")
    if not config.affine and not caps.without_affine:
        raise UnsupportedConfig("affine=False is not supported")


def probe_case(base: Capabilities, name: DTypeName) -> tuple[LayerConfig, Array]:
    """The tiny layer and input a dtype is probed with.

    Two features at the first feature axis ``base`` declares, its smallest rank, four
    samples, spatial size 2; momentum 0.5, eps 1e-5 (those it holds, if it holds its own),
    affine, tracked.
    """
    eps, momentum = base.held_setting or (1e-5, 0.5)
    rank = min(base.ranks)
    position = base.feature_axes[0] if base.feature_axes else "first"
    feature_axis = 1 if position == "first" else rank - 1
    config = LayerConfig(
        num_features=2,
        rank=rank,
        feature_axis=feature_axis,
        dtype=name,
        eps=eps,
        momentum=momentum,
        affine=True,
        track_running_stats=True,
    )
    return config, probe_input(config)


def probe_input(config: LayerConfig) -> Array:
    """The input a tiny layer is probed with: four samples, two values on every other axis
    (the probe's layers have two features), all distinct."""
    shape = (4,) + (2,) * (config.rank - 1)
    return np.arange(float(np.prod(shape))).reshape(shape)


def refused_dtype(caps: Capabilities, chapter: Chapter, dtype: DTypeName) -> str | None:
    """Why ``chapter``'s layers do not work in ``dtype`` (``Capabilities.refused_dtypes``),
    or ``None`` where nothing says they do not."""
    reason = caps.refused_dtypes.get(chapter, {}).get(dtype)
    if reason is None:
        return None
    return f"a tiny {CHAPTER_LAYERS[chapter]} fails in {dtype}: {reason}"


def _probe_one(probe: Probe, config: LayerConfig, x: Array) -> str | None:
    """Why the probe finds ``config``'s dtype unusable, or ``None``."""
    try:
        with quiet_startup():  # a library's first-use notices (tf_keras' mixed precision)
            return probe(config, x)
    except WrongOutput:
        return None
    except Exception as error:  # any failure of the library means "not supported"
        return f"{type(error).__name__}: {error}".splitlines()[0]


def probe_dtypes(
    base: Capabilities,
    probe: Probe,
    *,
    where: str | None = None,
    chapter_config: ChapterConfig = default_chapter_config,
    chapter_probes: ChapterProbes | None = None,
) -> Capabilities:
    """``base`` probed per chapter: the dtypes a tiny layer of each chapter ``base`` declares
    (``chapter_config``) fails in, with the reasons, go to ``refused_dtypes`` (unless it
    fails in all of them); ``dtypes`` keeps those at least one chapter works in, and
    ``notes["dtypes"]`` says why the others are left out (the first chapter's reason). A
    chapter in ``chapter_probes`` is probed with its own probe; the replicas chapter is
    probed only there (a plain layer is not a replicated one).

    A malformed result (:class:`WrongOutput`) is no reason to leave a dtype out: the engine
    reports it as a failure. Any other exception of the probe is.
    """
    dtypes: set[DTypeName] = set()
    failures = []
    refused: dict[Chapter, dict[DTypeName, str]] = {}
    for name in ALL_DTYPES:
        if name not in base.dtypes:
            continue
        config, x = probe_case(base, name)
        found: dict[Chapter, str] = {}
        probed = 0
        for chapter in _probed_chapters(base):
            tiny = chapter_config(chapter, config)
            own = (chapter_probes or {}).get(chapter)
            if tiny is None or (chapter == "replicas" and own is None):
                continue
            probed += 1
            problem = _probe_one(own or probe, tiny, probe_input(tiny))
            if problem is not None:
                found[chapter] = problem
        if probed == 0:  # no chapter has a probe of its own: the dtypes as BN has them
            problem = _probe_one(probe, config, x)
            found = {} if problem is None else {"batchnorm": problem}
            probed = 1
        if len(found) < probed:
            dtypes.add(name)
            for chapter, problem in found.items():
                refused.setdefault(chapter, {})[name] = problem
        else:
            failures.append(f"{name}: {next(iter(found.values()))}")
    notes = dict(base.notes)
    if failures:
        notes["dtypes"] = f"fails{f' on {where}' if where else ''}: " + "; ".join(failures)
    # a chapter whose layer fails in every dtype another works in fails for its
    # configuration (a dialect the adapter cannot express), not for a dtype: its clauses
    # say so themselves
    kept = {c: found for c, found in refused.items() if set(found) != dtypes}
    chapters: Mapping[Chapter, Mapping[DTypeName, str]] = {**base.refused_dtypes, **kept}
    return replace(base, dtypes=frozenset(dtypes), notes=notes, refused_dtypes=chapters)
