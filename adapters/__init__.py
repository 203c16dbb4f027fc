"""Adapters: the protocol implementations are driven through, and the built-in adapters."""

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Capabilities,
    DTypeName,
    Implementation,
    Layer,
    LayerConfig,
    State,
    UnsupportedConfig,
    WrongOutput,
)

__all__ = [
    "ALL_DTYPES",
    "Capabilities",
    "DTypeName",
    "Implementation",
    "Layer",
    "LayerConfig",
    "State",
    "UnsupportedConfig",
    "WrongOutput",
]
