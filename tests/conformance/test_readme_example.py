"""README's worked example finds what README says it finds: the planted bug and four real
mistakes, among them a negative running variance the implementation reports through
``RunningStatistics`` (a failure of bn.params.no_nan_state, never an error or a pass)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from normspec.conformance.runner import CheckOptions, check_implementation

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_worked_example_fails_the_clauses_readme_names(tmp_path: Path) -> None:
    source = re.search(r"```python\n(# my_bn\.py\n.*?)```", README.read_text(), re.S)
    assert source is not None
    path = tmp_path / "my_bn.py"
    path.write_text(source.group(1))
    spec = importlib.util.spec_from_file_location("my_bn", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clauses = "bn.train.output,bn.degenerate.empty_batch,bn.params.*,bn.running.var"
    options = CheckOptions(
        profile="torch", dtypes=["float32"], clauses=clauses, max_examples=20, shrink_seconds=1
    )
    report = check_implementation(module.impl, options)
    found = {r.clause_id: r for r in report.results}
    assert {c: r.outcome for c, r in found.items()} == {
        "bn.train.output": "fail",
        "bn.running.var": "pass",
        "bn.degenerate.empty_batch": "fail",
        "bn.params.shape": "fail",
        "bn.params.invalid": "fail",
        "bn.params.no_nan_state": "fail",
    }
    assert "the running variance is negative" in found["bn.params.no_nan_state"].message
