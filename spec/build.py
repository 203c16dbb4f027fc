"""Regenerate ``clauses.json`` from the chapters: ``python -m normspec.spec.build PATH``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from normspec.spec import SPEC_VERSION, clause_index


def render_index() -> str:
    """The text of ``clauses.json``."""
    return json.dumps({"spec_version": SPEC_VERSION, "clauses": clause_index()}, indent=2) + "\n"


def main() -> None:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("clauses.json")
    target.write_text(render_index(), encoding="utf-8")
    print(f"wrote {len(clause_index())} clauses to {target}")


if __name__ == "__main__":
    main()
