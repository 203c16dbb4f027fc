"""Time of a default check per TensorFlow target, with the number of tf.function traces.

    python benchmarks/tf_speed.py [TARGET ...] [--max-examples N] [--clauses PATTERN]
                                  [--compiled]

Targets default to the built-in TF targets, each under the profile it claims. For each:
wall and CPU seconds of the check (the TF import and the capability probes are timed
apart), examples checked, examples per second, the traces of the adapters' ``tf.function``
wrappers (:data:`normspec.adapters.tensorflow._tf.TRACES`) and the outcome counts. ``--compiled``
also runs the Keras targets with each layer called through ``tf.function`` (one trace per
layer and mode) to compare with the default eager calls. Failing clauses cost their
shrinking time too: compare runs with the same outcomes.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

#: (target, profile) of the built-in TensorFlow targets.
TARGETS: tuple[tuple[str, str], ...] = (
    ("keras", "keras"),
    ("tf_keras.nonfused", "keras"),
    ("tf_keras", "tf_keras"),
    ("tf_keras.fused", "tf_keras_fused"),
    ("tf_keras.renorm", "tf_keras"),
    ("tf.nn.batch_normalization", "tf_keras"),
    ("tf.nn.fused_batch_norm", "torch"),
)
PROFILES = dict(TARGETS)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def measure(target: str, profile: str, options: argparse.Namespace, compiled: bool) -> str:
    from normspec.adapters.keras.keras_layer import KerasImplementation
    from normspec.adapters.registry import load_target
    from normspec.adapters.tensorflow import _tf
    from normspec.conformance.runner import CheckOptions, check_implementation

    wall, cpu = _clock()
    implementation = load_target(target, profile)
    if compiled:
        if not isinstance(implementation, KerasImplementation):
            return f"{target:<28} (not a Keras target: --compiled does not apply)"
        implementation.compiled = True
    implementation.capabilities()
    probe_wall = time.perf_counter() - wall
    traces_before = sum(_tf.TRACES.values())
    wall, cpu = _clock()
    report = check_implementation(
        implementation,
        CheckOptions(profile=profile, clauses=options.clauses, max_examples=options.max_examples),
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    traces = sum(_tf.TRACES.values()) - traces_before
    examples = sum(r.examples or 0 for r in report.results)
    outcomes = Counter(r.outcome for r in report.results)
    label = target + (" [compiled]" if compiled else "")
    counts = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    return (
        f"{label:<28} {profile:<14} {wall:7.1f} {cpu:7.1f} {probe_wall:6.1f} {examples:6d} "
        f"{examples / wall if wall else 0:7.1f} {traces:6d}  {counts}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="targets (default: the built-in TF ones)")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--clauses", default=None)
    parser.add_argument("--compiled", action="store_true", help="also Keras via tf.function")
    options = parser.parse_args()

    started = time.perf_counter()
    from normspec.adapters.tensorflow import _tf  # noqa: F401  (imports TensorFlow and Keras)

    print(f"import of TensorFlow and Keras: {time.perf_counter() - started:.1f} s wall")
    print(
        f"{'target':<28} {'profile':<14} {'wall s':>7} {'cpu s':>7} {'probe':>6} "
        f"{'ex':>6} {'ex/s':>7} {'traces':>6}  outcomes"
    )
    targets = [(t, PROFILES.get(t, "keras")) for t in options.targets] or list(TARGETS)
    for target, profile in targets:
        print(measure(target, profile, options, compiled=False), flush=True)
        if options.compiled and target.startswith(("keras", "tf_keras")):
            print(measure(target, profile, options, compiled=True), flush=True)


if __name__ == "__main__":
    main()
