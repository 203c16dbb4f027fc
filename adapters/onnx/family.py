"""ONNX ``LayerNormalization`` (opset 17), ``RMSNormalization`` (opset 23),
``GroupNormalization`` (opset 21) and ``InstanceNormalization`` (opset 6), run by
``onnx.reference`` and ``onnxruntime`` (spec: layernorm.md, groupnorm.md).

One adapter (:mod:`normspec.adapters._family`) on the runtimes of
:mod:`normspec.adapters.onnx.op`: a layer is one node in a one-node model whose inputs
(``X``, the scale, ``B`` where the layer has a bias) are fed at every call, as a graph
feeds them. ``axis`` is the first normalized axis (``-k``), ``epsilon`` a float32
attribute (the configuration the model holds: ``Capabilities.setting_dtype``) and
``stash_type`` the default, float32 statistics. GroupNormalization-21 takes ``num_groups``
and a scale and bias per channel (opset 18's per-group scale, deprecated in 21, is not
checked); both grouped operators take ``(N, C, *spatial)`` inputs, the case's own layout.
The operators always take a scale (and the grouped ones a bias): a layer without affine
parameters is fed ones (and zeros). There is no backward (an inference graph has no
gradient). The family's cases round eps to float32 (``setting_dtype``), so float64 is
checked with the eps the model holds. The element types are those the schema allows; those
a runtime has no kernel for are left out, with its error. A model is built and loaded once
per configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import defs, helper

from normspec.adapters._family import (
    GROUPED,
    Computation,
    FamilyClass,
    FamilyImplementation,
    axes_of,
)
from normspec.adapters.onnx.op import (
    ELEMENT_TYPES,
    NUMPY_TYPES,
    SCHEMA_TYPES,
    Run,
    Runtime,
    runtime_named,
)
from normspec.adapters.protocol import (
    ALL_DTYPES,
    Array,
    DTypeName,
    FamilyConfig,
    FamilyKind,
    LayerConfig,
    WrongOutput,
)


@dataclass(frozen=True)
class Operator:
    """A row of the table: the operator of a layer kind, its opset and its scale input."""

    row: FamilyClass
    opset: int

    @property
    def name(self) -> str:
        return self.row.path.partition(":")[2]


OPERATORS: dict[FamilyKind, Operator] = {
    "layernorm": Operator(
        FamilyClass("layernorm", "ai.onnx:LayerNormalization", "Scale", "B", optional_affine=False),
        17,
    ),
    "rmsnorm": Operator(
        FamilyClass("rmsnorm", "ai.onnx:RMSNormalization", "scale", optional_affine=False), 23
    ),
    "groupnorm": Operator(
        FamilyClass("groupnorm", "ai.onnx:GroupNormalization", "scale", "bias", False), 21
    ),
    "instancenorm": Operator(
        FamilyClass("instancenorm", "ai.onnx:InstanceNormalization", "scale", "B", False), 6
    ),
}


def attributes(kind: FamilyKind, family: FamilyConfig) -> dict[str, Any]:
    """The attributes that say what a node normalizes: LayerNorm's first axis (``-k``),
    GroupNorm's ``num_groups``; InstanceNorm has none."""
    if kind == "groupnorm":
        return {"num_groups": family.num_groups}
    if kind == "instancenorm":
        return {}
    return {"axis": axes_of(family)[0]}


def model(
    operator: Operator, config: LayerConfig, family: FamilyConfig, *, default_eps: bool = False
) -> Any:
    """The one-node model of a configuration; with ``default_eps``, a node without the
    ``epsilon`` attribute (the operator's default)."""
    element = ELEMENT_TYPES[config.dtype]
    takes_bias = family.bias or operator.row.kind in GROUPED
    inputs = ["X", operator.row.weight] + ([str(operator.row.bias)] if takes_bias else [])
    held: dict[str, Any] = {} if default_eps else {"epsilon": float(np.float32(config.eps))}
    node = helper.make_node(
        operator.name,
        inputs,
        ["Y"],
        **held,
        **attributes(operator.row.kind, family),
    )
    graph = helper.make_graph(
        [node],
        operator.name,
        [helper.make_tensor_value_info(name, element, None) for name in inputs],
        [helper.make_tensor_value_info("Y", element, None)],
    )
    opsets = [helper.make_opsetid("", operator.opset)]
    built = helper.make_model(graph, opset_imports=opsets, producer_name="normspec")
    built.ir_version = helper.find_min_ir_version_for(opsets)
    return built


class OnnxFamilyComputation(Computation):
    """A loaded one-node model, fed the parameters at every call."""

    def __init__(self, operator: Operator, run: Run, config: LayerConfig) -> None:
        self.operator, self.run, self.config = operator, run, config
        self.type = NUMPY_TYPES[config.dtype]

    def forward(self, x: Array, weight: Array | None, bias: Array | None) -> Array:
        row, typed = self.operator.row, self.type
        assert weight is not None, "the operators always take a scale"
        feeds = {"X": np.asarray(x).astype(typed), row.weight: np.asarray(weight).astype(typed)}
        if row.bias and (bias is not None or row.kind in GROUPED):
            given = np.zeros_like(weight) if bias is None else bias
            feeds[row.bias] = np.asarray(given).astype(typed)
        y = np.asarray(self.run(feeds)[0])
        if y.dtype != np.dtype(typed):
            raise WrongOutput(f"the output has dtype {y.dtype}, expected {np.dtype(typed)}")
        if y.shape != np.shape(x):
            raise WrongOutput(f"the output has shape {y.shape}, expected {np.shape(x)}")
        return np.array(y, dtype=np.float64)


class OnnxFamily(FamilyImplementation):
    """An ONNX normalization operator under a runtime."""

    backward = False
    setting_dtype: DTypeName = "float32"

    def __init__(self, runtime: Runtime, kind: FamilyKind) -> None:
        self.runtime, self.operator = runtime, OPERATORS[kind]
        self.library = runtime.name
        self._loaded: dict[tuple[LayerConfig, bool], OnnxFamilyComputation] = {}
        self._refused: dict[DTypeName, str] = {}
        super().__init__(self.operator.row, cls=object)  # the operator is no Python class
        self._refused = self._probe()

    def describe(self) -> str:
        return f"{self.runtime.name}, opset {self.operator.opset}"

    def versions(self) -> Mapping[str, str]:
        return self.runtime.versions()

    def _schema_dtypes(self) -> frozenset[DTypeName]:
        schema = defs.get_schema(self.operator.name, self.operator.opset)
        constraint = next(c for c in schema.type_constraints if c.type_param_str == "T")
        allowed = constraint.allowed_type_strs
        return frozenset(SCHEMA_TYPES[t] for t in allowed if t in SCHEMA_TYPES)

    def _probe(self) -> dict[DTypeName, str]:
        """Why each dtype the runtime cannot run is left out (its error)."""
        refused: dict[DTypeName, str] = {}
        kind, bias = self.entry.kind, self.entry.bias is not None
        grouped = kind in GROUPED
        family = FamilyConfig(kind, () if grouped else (2,), bias=bias, num_groups=2)
        x = np.ones((1, 2, 2) if grouped else (1, 2))
        for dtype in ALL_DTYPES:
            if dtype not in self._schema_dtypes():
                refused[dtype] = f"the {self.operator.name} schema takes no {dtype}"
                continue
            config = LayerConfig(2, x.ndim, 1, dtype, 1e-5, None, family=family)
            try:
                self.computation(config, family).forward(x, np.ones(2), np.zeros(2))
            except Exception as error:
                refused[dtype] = f"{self.runtime.name} cannot run it: {error}".splitlines()[0]
        return refused

    def dtypes(self) -> frozenset[DTypeName]:
        return frozenset(d for d in ALL_DTYPES if d not in self._refused)

    def notes(self) -> dict[str, str]:
        return {**super().notes(), **{str(k): v for k, v in self._refused.items()}}

    def computation(
        self, config: LayerConfig, family: FamilyConfig, *, default_eps: bool = False
    ) -> OnnxFamilyComputation:
        found = self._loaded.get((config, default_eps))
        if found is None:
            built = model(self.operator, config, family, default_eps=default_eps)
            found = OnnxFamilyComputation(self.operator, self.runtime.load(built), config)
            self._loaded[(config, default_eps)] = found
        return found


def reference_layernorm(profile: str = "onnx") -> OnnxFamily:
    """``onnx.reference.layernorm``: LayerNormalization-17 by ``ReferenceEvaluator``."""
    return OnnxFamily(runtime_named("onnx.reference"), "layernorm")


def reference_rmsnorm(profile: str = "onnx") -> OnnxFamily:
    """``onnx.reference.rmsnorm``: RMSNormalization-23 by ``ReferenceEvaluator``."""
    return OnnxFamily(runtime_named("onnx.reference"), "rmsnorm")


def onnxruntime_layernorm(profile: str = "onnx") -> OnnxFamily:
    """``onnxruntime.layernorm``: LayerNormalization-17 on onnxruntime's CPU provider."""
    return OnnxFamily(runtime_named("onnxruntime"), "layernorm")


def onnxruntime_rmsnorm(profile: str = "onnx") -> OnnxFamily:
    """``onnxruntime.rmsnorm``: RMSNormalization-23 on onnxruntime's CPU provider."""
    return OnnxFamily(runtime_named("onnxruntime"), "rmsnorm")


def reference_groupnorm(profile: str = "onnx") -> OnnxFamily:
    """``onnx.reference.groupnorm``: GroupNormalization-21 by ``ReferenceEvaluator``."""
    return OnnxFamily(runtime_named("onnx.reference"), "groupnorm")


def reference_instancenorm(profile: str = "onnx") -> OnnxFamily:
    """``onnx.reference.instancenorm``: InstanceNormalization-6 by ``ReferenceEvaluator``."""
    return OnnxFamily(runtime_named("onnx.reference"), "instancenorm")


def onnxruntime_groupnorm(profile: str = "onnx") -> OnnxFamily:
    """``onnxruntime.groupnorm``: GroupNormalization-21 on onnxruntime's CPU provider."""
    return OnnxFamily(runtime_named("onnxruntime"), "groupnorm")


def onnxruntime_instancenorm(profile: str = "onnx") -> OnnxFamily:
    """``onnxruntime.instancenorm``: InstanceNormalization-6 on onnxruntime's CPU provider."""
    return OnnxFamily(runtime_named("onnxruntime"), "instancenorm")
