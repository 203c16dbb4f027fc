"""An implementation under test that declares it compiles per configuration and records
what it would compile: the menus' tests (test_menu, test_family_menu, test_group_menu)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from normspec.adapters.protocol import Capabilities, LayerConfig


class RecordsPrograms:
    """Mixin before an implementation class: ``compiles_per_shape`` (and ``declared``)
    in its capabilities, and each (configuration, operation, input shape) its layers run
    counted in ``programs``, as a JAX implementation would compile them."""

    #: the layer methods whose calls are recorded
    operations: ClassVar[tuple[str, ...]] = ("infer", "vjp")
    #: further capabilities the implementation declares
    declared: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.programs: Counter[tuple[Any, ...]] = Counter()

    def capabilities(self) -> Capabilities:
        base: Capabilities = super().capabilities()  # type: ignore[misc]
        return replace(base, compiles_per_shape=True, **self.declared)

    def build(self, config: LayerConfig) -> Any:
        layer = super().build(config)  # type: ignore[misc]
        for name in self.operations:
            original = getattr(layer, name)

            def recorded(x: Any, *rest: Any, _name: str = name, _call: Any = original, **k: Any):
                self.programs[(config, _name, np.shape(x))] += 1
                return _call(x, *rest, **k)

            setattr(layer, name, recorded)
        return layer
