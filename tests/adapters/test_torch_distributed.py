"""Synchronized torch modules on K processes (adapters/torch/distributed.py; sync.*).

One pool of worker processes (gloo, this machine) serves the whole module: it is started
once, by the first replicated layer, and reused by every implementation here. The fixture
``cpu_sync_bn.CpuSyncBatchNorm`` mirrors torch.nn.SyncBatchNorm on the CPU and must pass;
two known-bad variants are caught under their clauses; torch.nn.SyncBatchNorm itself refuses
CPU tensors, and its sync clauses are reported not applicable without starting processes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
import torch.distributed as dist
from torch import nn

if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from normspec.adapters.protocol import Implementation, LayerConfig, ReplicatedImplementation
from normspec.adapters.registry import load_target
from normspec.adapters.torch.distributed import (
    DistributedTorchImplementation,
    ReplicaCrashed,
    shared_pool,
)
from normspec.conformance.guard import Guard, ImplementationCrashed
from normspec.conformance.runner import CheckOptions, check_implementation

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

from cpu_sync_bn import (  # noqa: E402
    CpuSyncBatchNorm,
    LocalCountSyncBatchNorm,
    SegfaultOnSecondReplica,
    UnsyncedBatchNorm,
)

#: A small budget: each example is a few round trips to the workers.
EXAMPLES = 8


def _outcomes(implementation: Implementation, clauses: str, **options: Any) -> dict[str, str]:
    settings = CheckOptions(
        profile="torch", clauses=clauses, dtypes=("float64", "float32"), **options
    )
    report = check_implementation(implementation, settings)
    return {r.clause_id: f"{r.outcome}: {r.message[:300]}" for r in report.results}


@pytest.fixture(scope="module")
def pool_timing() -> dict[str, float]:
    """Start the shared pool once and report how long that took."""
    started = time.perf_counter()
    pool = shared_pool(4, "cpu")
    return {"startup": pool.startup_seconds, "wall": time.perf_counter() - started}


def test_the_recogniser_takes_a_class_with_a_process_group() -> None:
    implementation = load_target("cpu_sync_bn:CpuSyncBatchNorm", "torch")
    assert isinstance(implementation, DistributedTorchImplementation)
    assert isinstance(implementation, ReplicatedImplementation)
    capabilities = implementation.capabilities()
    assert capabilities.replicas and not capabilities.replica_masks
    plain = load_target("torch.nn:BatchNorm2d", "torch")
    assert not isinstance(plain, DistributedTorchImplementation)


def test_torch_sync_batchnorm_is_not_applicable_on_cpu() -> None:
    implementation = load_target("torch.nn:SyncBatchNorm", "torch")
    assert isinstance(implementation, DistributedTorchImplementation)
    outcomes = _outcomes(implementation, "sync.*", max_examples=2)
    assert all(o.startswith("not_applicable") for o in outcomes.values()), outcomes
    assert "refuses CPU tensors" in outcomes["sync.train.output"]
    assert implementation.pool is None  # no process was started for it
    # its single-device clauses run in this process (it falls back to batch_norm)
    outcomes = _outcomes(implementation, "bn.train.output", max_examples=4)
    assert outcomes["bn.train.output"].startswith("pass"), outcomes


def test_the_cpu_sync_module_passes_every_sync_clause(pool_timing: dict[str, float]) -> None:
    implementation = DistributedTorchImplementation(CpuSyncBatchNorm)
    started = time.perf_counter()
    report = check_implementation(
        implementation,
        CheckOptions(
            profile="torch", clauses="sync.*", dtypes=("float64", "float32"), max_examples=EXAMPLES
        ),
    )
    seconds = time.perf_counter() - started
    outcomes = {r.clause_id: r.outcome for r in report.results}
    messages = {r.clause_id: r.message[:300] for r in report.results if r.outcome != "pass"}
    assert outcomes.pop("sync.train.mask") == "not_applicable"
    assert set(outcomes.values()) == {"pass"}, messages
    examples = sum(r.examples for r in report.results)
    print(
        f"pool start-up {pool_timing['startup']:.1f} s; {examples} examples in {seconds:.1f} s "
        f"({1000 * seconds / max(1, examples):.0f} ms per example)"
    )


def test_a_step_and_its_gradients_by_hand(pool_timing: dict[str, float]) -> None:
    """replicas.md's example on two processes: (0, 2) and (3, 4, 6), eps = 5."""
    implementation = DistributedTorchImplementation(CpuSyncBatchNorm)
    layer = implementation.build_replicated(LayerConfig(1, 2, 1, "float64", 5.0, 0.5), 2)
    xs = [np.array([[0.0], [2.0]]), np.array([[3.0], [4.0], [6.0]])]
    ys = layer.train_step(xs)
    np.testing.assert_allclose(ys[0][:, 0], [-1.0, -1.0 / 3.0], atol=1e-15)
    np.testing.assert_allclose(ys[1][:, 0], [0.0, 1.0 / 3.0, 1.0], atol=1e-15)
    for state in layer.states():
        assert state is not None
        np.testing.assert_allclose([state.mean[0], state.var[0]], [1.5, 3.0], rtol=1e-15)
    grads = layer.vjp(xs, [np.array([[1.0], [0.0]]), np.array([[0.0], [0.0], [-1.0]])])
    np.testing.assert_allclose(grads[0].dx[:, 0], [0.2, -2 / 45], atol=1e-15)
    assert [g.dgamma.tolist() for g in grads] == [[-1.0], [-1.0]]


@pytest.mark.parametrize(
    ("module", "clause"),
    [(UnsyncedBatchNorm, "sync.train.output"), (LocalCountSyncBatchNorm, "sync.running.var")],
)
def test_known_bad_torch_modules_are_caught(
    module: type[nn.Module], clause: str, pool_timing: dict[str, float]
) -> None:
    implementation = DistributedTorchImplementation(module)
    outcomes = _outcomes(implementation, clause, max_examples=20)
    # an unsynchronized module may also raise (one value per channel on a replica): error
    assert outcomes[clause].startswith(("fail", "error")), outcomes


def test_a_replica_that_crashes_ends_the_pool_and_the_next_layer_starts_another(
    pool_timing: dict[str, float],
) -> None:
    config = LayerConfig(1, 2, 1, "float64", 1e-5, 0.1)
    xs = [np.array([[0.0], [2.0]]), np.array([[3.0], [4.0]])]
    crashing = DistributedTorchImplementation(SegfaultOnSecondReplica)
    layer = crashing.build_replicated(config, 2)
    pool = crashing.pool
    with pytest.raises(ReplicaCrashed, match=r"^replica 1 crashed: SIGSEGV") as lost:
        layer.train_step(xs)
    assert "in forward" in lost.value.output  # the Python stack of the crash
    assert pool is not None and not pool.alive
    # what the checks see: the clause's crash, not an error
    layer = crashing.build_replicated(config, 2)
    with pytest.raises(ImplementationCrashed, match=r"train_step: replica 1 crashed: SIGSEGV"):
        Guard(timeout=60.0).call("train_step", layer.train_step, xs)
    healthy = DistributedTorchImplementation(CpuSyncBatchNorm).build_replicated(config, 2)
    assert len(healthy.train_step(xs)) == 2
