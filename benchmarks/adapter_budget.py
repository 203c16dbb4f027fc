"""Every adapter's default check against the one-minute budget, cold and warm, beside the
reference.

    python benchmarks/adapter_budget.py [TARGET[@PROFILE] ...] [--seed S] [--repeat N]

TARGETs default to every built-in target whose frameworks are installed (the adapter
packages' declarations, each under the profile it declares); a TARGET of your own is
checked under PROFILE (default paper). The baseline is ``reference``, checked the same
way in the same run. Each target is checked twice by the command a user types,
``normspec check TARGET --profile NAME --seed S``, in a fresh process each time with
normspec's persistent compilation cache in a new empty directory: *cold* (the cache
empty: every program compiled) then *warm* (the programs the first run compiled loaded
from the cache, as in a user's second run or a CI that keeps the cache). Printed side by
side: wall time, CPU time of the process and its children (on a shared machine the better
guide to an idle one), whether the cold median is within the budget, the exit code (1:
not conformant) and the failed clauses. Figures are medians of ``--repeat`` runs.

    python benchmarks/adapter_budget.py [TARGET[@PROFILE] ...] --baseline REV [--budget 20]

With ``--baseline REV`` each target is checked cold only, by this checkout and by REV side
by side in the same run (their runs alternating, so that a busy machine slows both alike):
REV is checked out into a temporary ``git worktree`` and run by the same interpreter, with
``PYTHONPATH`` pointing at a package tree built from it (the checkout's own code is run the
same way). Every clause whose verdict (its outcome and its outcome per dtype, from the
``--json`` report) differs between the two is printed.

``--jobs N`` runs this checkout's checks with ``--jobs N`` and ``--baseline-jobs N`` the
baseline's (each else with its own default: one process before ``--jobs`` existed, the
cores available since); ``--baseline HEAD --baseline-jobs 1`` sets a run spread over the
cores beside the same code in one process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from normspec.adapters.declarations import collected

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The default check's budget on 2 cores (README: the one-minute default budget).
BUDGET_SECONDS = 60.0

#: This checkout.
ROOT = Path(__file__).resolve().parent.parent

FAILED = re.compile(r"^  FAIL\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    exit_code: int
    failed: tuple[str, ...]
    #: each clause's outcome and its outcomes per dtype (the ``--json`` report's)
    verdicts: tuple[tuple[str, str], ...] = ()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cold_environment(cache: str) -> dict[str, str]:
    """This process's environment with JAX's compilation cache in the empty folder ``cache``
    (a JAX check starts cold), a ``JAX_COMPILATION_CACHE_DIR`` of the caller's left out."""
    environment = {**os.environ, "NORMSPEC_COMPILATION_CACHE": cache}
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    return environment


def check(
    target: str,
    profile: str,
    seed: int,
    cache: str,
    tree: str | None = None,
    jobs: str | None = None,
) -> Run:
    """``normspec check`` in a fresh process, its compilation cache in ``cache``; with
    ``tree`` (:func:`package_tree`), normspec imported from there; with ``jobs``, its
    ``--jobs`` (else that normspec's default)."""
    report = Path(cache) / f"report-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", "normspec", "check", target]
    command += ["--profile", profile, "--seed", str(seed), "--json", str(report)]
    command += ["--jobs", jobs] if jobs is not None else []
    environment = cold_environment(cache)
    if tree is not None:  # the project's own targets (tests.fixtures) from this checkout
        environment["PYTHONPATH"] = os.pathsep.join((tree, str(ROOT)))
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment, check=False, cwd=tree
    )
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode not in (0, 1):
        sys.exit(f"normspec check {target} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return Run(wall, cpu, done.returncode, tuple(FAILED.findall(done.stdout)), verdicts_of(report))


def verdicts_of(report: Path) -> tuple[tuple[str, str], ...]:
    """(clause, ``outcome {dtype: outcome}``) of each clause of a JSON report."""
    results = json.loads(report.read_text())["results"]
    return tuple((r["clause"], f"{r['outcome']} {r['dtypes']}") for r in results)


def verdict_changes(before: Run, after: Run) -> list[str]:
    """``clause: before -> after`` for each clause whose verdict differs."""
    old, new = dict(before.verdicts), dict(after.verdicts)
    return [
        f"{clause}: {old.get(clause)} -> {new.get(clause)}"
        for clause in dict.fromkeys([*old, *new])
        if old.get(clause) != new.get(clause)
    ]


def package_tree(checkout: Path, into: Path) -> str:
    """A folder holding the package ``normspec`` of ``checkout`` as links laid out by its
    ``pyproject.toml``'s package-dir (the import path of that checkout's code)."""
    config = tomllib.loads((checkout / "pyproject.toml").read_text())
    folders = config["tool"]["setuptools"]["package-dir"]
    root = into / "normspec"
    root.mkdir(parents=True)
    for item in (checkout / folders["normspec"]).iterdir():
        (root / item.name).symlink_to(item)
    for package, folder in folders.items():
        if package != "normspec":
            (root / package.removeprefix("normspec.")).symlink_to(checkout / folder)
    return str(into)


@contextmanager
def revision_tree(revision: str) -> Iterator[str]:
    """The package tree (:func:`package_tree`) of ``revision`` checked out into a temporary
    ``git worktree``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="normspec-baseline-") as folder:
        checkout = Path(folder) / "checkout"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run([*git, "add", "--detach", str(checkout), revision], check=True)
        try:
            yield package_tree(checkout, Path(folder) / "tree")
        finally:
            subprocess.run([*git, "remove", "--force", str(checkout)], check=True)


def compare(
    targets: list[tuple[str, str]],
    revision: str,
    seed: int,
    repeat: int,
    budget: float,
    jobs: tuple[str | None, str | None] = (None, None),
) -> None:
    """Cold checks of this checkout beside ``revision``'s, their runs alternating; ``jobs``:
    the ``--jobs`` of each (``None``: its default)."""
    runs: dict[str, tuple[Run, Run]] = {}
    with revision_tree(revision) as before, tempfile.TemporaryDirectory() as folder:
        after = package_tree(ROOT, Path(folder))
        for target, profile in targets:
            name = f"{target} [{profile}]"
            sessions = (((before, jobs[0]),), ((after, jobs[1]),))
            old, new = medians(target, profile, seed, repeat, sessions)
            runs[name] = (old, new)
            print(f"  {name}: {runs[name][0].wall:.1f} s -> {runs[name][1].wall:.1f} s", flush=True)
    spelled = [f" --jobs {j}" if j is not None else "" for j in jobs]
    heading = (
        f"normspec check TARGET --profile PROFILE --seed {seed}, cold, medians of {repeat}, "
        f"{os.cpu_count()} CPUs, budget {budget:g} s (after); {revision}{spelled[0]} beside "
        f"this checkout{spelled[1]}"
    )
    print_table(heading, ("before wall s", "CPU s", "after wall s", "CPU s"), runs, budget, 1)
    for name, (old, new) in runs.items():
        if old.failed != new.failed:
            print(
                f"failed ({name}): before {', '.join(old.failed) or 'none'}; after "
                f"{', '.join(new.failed) or 'none'}"
            )
        changes = verdict_changes(old, new)
        print(f"verdicts ({name}): {len(changes) or 'none'} changed of {len(new.verdicts)}")
        for change in changes:
            print(f"  {change}")


#: How one check of a session runs: the tree normspec is imported from (:func:`package_tree`,
#: ``None``: the installed one) and its ``--jobs`` (``None``: its default).
Way = tuple[str | None, str | None]


def medians(
    target: str, profile: str, seed: int, repeat: int, sessions: tuple[tuple[Way, ...], ...]
) -> list[Run]:
    """The median run of each check of ``sessions`` over ``repeat`` rounds. A round runs
    every session in turn; a session's checks (each run its :data:`Way`) share a new empty
    compilation cache, so the first is cold and the others warm."""
    runs: list[list[Run]] = [[] for session in sessions for _ in session]
    for _ in range(repeat):
        index = 0
        for session in sessions:
            with tempfile.TemporaryDirectory(prefix="normspec-cache-") as cache:
                for tree, jobs in session:
                    runs[index].append(check(target, profile, seed, cache, tree, jobs))
                    index += 1
    return [median_run(r) for r in runs]


def print_table(
    heading: str,
    columns: tuple[str, ...],
    runs: dict[str, tuple[Run, Run]],
    budget: float,
    judged: int,
) -> None:
    """``heading``, then a row a target: the wall and CPU seconds of its two runs under
    ``columns``, whether run ``judged`` (0 or 1) is within ``budget``, their exit codes."""
    print(f"\n{heading}")
    width = max(len(name) for name in runs) + 2
    cells = "".join(f"{column:>{len(column) + 2}}" for column in columns)
    print(f"{'':<{width}}{cells}{'budget':>8}{'exit':>6}")
    for name, pair in runs.items():
        first, second = pair
        figures = (first.wall, first.cpu, second.wall, second.cpu)
        cells = "".join(f"{v:>{len(c) + 2}.1f}" for c, v in zip(columns, figures, strict=True))
        within = "ok" if pair[judged].wall <= budget else "OVER"
        print(f"{name:<{width}}{cells}{within:>8}{first.exit_code:>4}{second.exit_code:>2}")


def installed_targets() -> list[tuple[str, str]]:
    """Every reported built-in target whose frameworks are installed, with its profile."""
    found = []
    for entry in collected().targets:
        if entry.reported and all(importlib.util.find_spec(f) for f in entry.frameworks):
            found.append((entry.target, entry.profile))
    return found


def profile_argument(profile: str) -> str:
    """A profile file as an absolute path (a baseline's check runs in another folder); a
    profile name as it is."""
    path = Path(profile)
    return str(path.resolve()) if path.suffix in (".toml", ".json") and path.exists() else profile


def chosen_targets(arguments: list[str]) -> list[tuple[str, str]]:
    """``reference`` under ``paper``, then each ``TARGET[@PROFILE]`` of ``arguments`` (default
    profile ``paper``), or every installed built-in target under its own profile."""
    chosen = [tuple(t.partition("@")[::2]) for t in arguments] or installed_targets()
    return [("reference", "paper")] + [
        (t, profile_argument(p or "paper")) for t, p in chosen if t != "reference"
    ]


def median_run(runs: list[Run]) -> Run:
    """The median wall and CPU seconds of ``runs`` (the first run's verdict)."""
    return Run(
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        runs[0].exit_code,
        runs[0].failed,
        runs[0].verdicts,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="TARGET[@PROFILE] (default: the built-ins)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", metavar="REV", help="check REV beside this checkout")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds")
    parser.add_argument("--jobs", help="this checkout's --jobs (default: its default)")
    parser.add_argument("--baseline-jobs", help="the baseline's --jobs (default: its default)")
    args = parser.parse_args()
    targets = chosen_targets(args.targets)
    if args.baseline:
        jobs = (args.baseline_jobs, args.jobs)
        compare(targets, args.baseline, args.seed, args.repeat, args.budget, jobs)
        return
    runs: dict[str, tuple[Run, Run]] = {}
    for target, profile in targets:
        way = (None, args.jobs)
        cold, warm = medians(target, profile, args.seed, args.repeat, ((way, way),))
        runs[f"{target} [{profile}]"] = (cold, warm)
        print(f"  {target}: cold {runs[f'{target} [{profile}]'][0].wall:.1f} s", flush=True)
    heading = (
        f"normspec check TARGET --profile PROFILE --seed {args.seed}, medians of "
        f"{args.repeat}, {os.cpu_count()} CPUs, budget {args.budget:g} s (cold)"
    )
    columns = ("cold wall s", "cold CPU s", "warm wall s", "warm CPU s")
    print_table(heading, columns, runs, args.budget, 0)
    for name, (cold, _) in runs.items():
        print(f"failed ({name}): {', '.join(cold.failed) or 'none'}")


if __name__ == "__main__":
    main()
