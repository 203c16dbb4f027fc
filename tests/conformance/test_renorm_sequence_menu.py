"""renorm.schedule.step under a menu: a sequence's batches take the menu's shapes, so that an
implementation that compiles per shape compiles a few programs, not one per batch."""

from __future__ import annotations

from program_recording import RecordsPrograms

from normspec.adapters.reference import ReferenceImplementation
from normspec.conformance.runner import CheckOptions, check_implementation


class Compiling(RecordsPrograms, ReferenceImplementation):
    """The reference under the paper's renorm dialect, recording each (configuration,
    operation, shape) it is called with: what a JAX implementation would compile."""

    operations = ("train_step", "infer")

    def __init__(self) -> None:
        super().__init__("paper")


def test_a_menu_bounds_the_shapes_of_a_renorm_sequence() -> None:
    most, programs = {}, {}
    for menu in (None, 0):
        implementation = Compiling()
        options = CheckOptions(
            profile="paper", clauses="renorm.schedule.step", max_examples=20, menu=menu
        )
        report = check_implementation(implementation, options)
        assert report.outcome("renorm.schedule.step") == "pass"
        layers: dict[object, set[tuple[int, ...]]] = {}
        for config, _, shape in implementation.programs:
            layers.setdefault(config, set()).add(shape)
        most[menu] = max(len(found) for found in layers.values())
        programs[menu] = sum(len(found) for found in layers.values())
    # a layer sees its first shape, a smaller last batch and the menu's entries of its rank
    assert most[None] <= 2 + 4
    # free draws: nearly every batch of a sequence a new shape
    assert 2 * programs[None] < programs[0]
