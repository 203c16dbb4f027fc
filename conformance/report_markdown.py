"""The conformance matrix as Markdown, for a README or a pull-request comment."""

from __future__ import annotations

from normspec.conformance.matrix import (
    OUTCOME_TITLES,
    Column,
    Matrix,
    cell_outcome,
)
from normspec.conformance.report_terminal import dtype_line, kind_title, partly_applicable
from normspec.conformance.results import PROBLEMS

SYMBOLS = {
    "pass": "✅",
    "fail": "❌",
    "declared": "📝",
    "not_applicable": "➖",
    "error": "💥",
    "crashed": "☠️",
    "hung": "⏳",
    "skipped": "⏭️",
    "not_run": "·",
}

#: Longest message kept in the Markdown (the JSON and HTML reports carry them whole).
MESSAGE_LIMIT = 400


def escape(text: str) -> str:
    """Text for a Markdown table cell or list item: no HTML, no table breaks, one line."""
    flat = " ".join(str(text).split())
    return (
        flat.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("`", "'")
        .replace("*", "\\*")
        .replace("_", "\\_")
        .replace("[", "\\[")
        .replace("]", "\\]")
    )


def code(text: str) -> str:
    """Inline code (Markdown escapes do not apply inside it; a backtick would end it)."""
    flat = " ".join(str(text).split()).replace("`", "'").replace("|", "\\|")
    return f"`{flat}`"


def _shorten(text: str, limit: int = MESSAGE_LIMIT) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def cell_text(column: Column, clause_id: str) -> str:
    outcome = cell_outcome(column, clause_id)
    text = SYMBOLS[outcome]
    if outcome != "pass" and outcome != "not_run":
        text += " " + OUTCOME_TITLES[outcome]
    ulps = column.ulps.get(clause_id)
    if ulps is not None and outcome in ("pass", "fail", "declared"):
        text += f" {ulps}"
    result = column.result(clause_id)
    if result is not None and partly_applicable(result):
        missing = [d for d, o in result.dtype_outcomes.items() if o == "not_applicable"]
        text += f" (n/a in {', '.join(missing)})"
    return text


def _heading(column: Column) -> str:
    return f"{escape(column.label)}<br>{escape(' = '.join(column.profiles))}"


def render_markdown(matrix: Matrix, *, heading_level: int = 2) -> str:
    """The matrix, the runs not done, and every failure with its reproduce command."""
    h = "#" * heading_level
    lines = [f"{h} normspec conformance matrix", ""]
    python = matrix.environment.get("python", "?")
    lines.append(
        f"normspec {matrix.normspec_version}, specification {matrix.spec_version}; "
        f"{matrix.options.max_examples} examples per clause, seed {matrix.options.seed}; "
        f"Python {python}; {matrix.started}, {matrix.seconds:.0f} s."
    )
    if matrix.interrupted:
        pending = ", ".join(f"{t} [{p}]" for t, p in matrix.pending) or "the rest"
        lines += ["", f"**Interrupted: partial results.** Not run: {escape(pending)}."]
    lines.append("")
    if matrix.columns:
        header = ["clause", "level", *(_heading(c) for c in matrix.columns)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("| " + " | ".join(["---"] * len(header)) + " |")
        for clause_id, level, _summary in matrix.clauses:
            cells = [code(clause_id), level, *(cell_text(c, clause_id) for c in matrix.columns)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            "✅ pass · ❌ fail · 📝 declared deviation · ➖ not applicable · 💥 error · "
            "☠️ crashed (a call killed the implementation's worker process) · ⏳ hung · "
            "⏭️ skipped (a clause it depends on did not pass) · · not run. A number is the "
            "worst error seen against the reference, in ulps of the dtype it names at the "
            "expected value, over the values whose bound is not far larger than the value; for "
            "a failure, the ulps its comparison reports (`normspec check`). A "
            "column headed by two profiles is one run: the implementation's dialect parameters "
            "are the same under both."
        )
        lines.append("")
        lines.append(f"{h}# Verdicts")
        lines.append("")
        for column in matrix.columns:
            counts = column.report.counts()
            summary = ", ".join(f"{v} {OUTCOME_TITLES[k]}" for k, v in counts.items() if v)
            verdict = column.report.verdict
            if not column.report.conformant:
                verdict = f"**{verdict}**"
            if column.report.interrupted:
                verdict += " (interrupted)"
            versions = ", ".join(f"{k} {v}" for k, v in column.report.versions.items())
            menu = f"; {column.report.menu_note}" if column.report.menu else ""
            lines.append(
                f"- {escape(column.label)} under {escape(' = '.join(column.profiles))}: "
                f"{verdict}; {summary} ({escape(versions)}; {column.report.seconds:.0f} s"
                f"{escape(menu)}; calls {escape(column.report.isolation)})"
            )
        lines.append("")
    else:
        lines += ["No implementation was checked.", ""]
    if matrix.unavailable:
        lines.append(f"{h}# Not checked")
        lines.append("")
        for item in matrix.unavailable:
            lines.append(f"- {escape(item.label)} [{escape(item.profile)}]: {escape(item.reason)}")
        lines.append("")
    problems = [
        (column, result)
        for column in matrix.columns
        for result in column.report.results
        if result.outcome in (*PROBLEMS, "declared")
    ]
    if problems:
        lines.append(f"{h}# Failures and declared deviations")
        lines.append("")
        for column, result in problems:
            title = OUTCOME_TITLES[result.outcome].upper()
            lines.append(
                f"- **{title}** {code(result.clause_id)} ({result.level}), "
                f"{escape(column.label)} [{escape(' = '.join(column.profiles))}]: "
                f"{escape(_shorten(result.message))}"
            )
            if result.deviation:
                lines.append(
                    f"  - declared ({escape(result.deviation.get('category', ''))}): "
                    f"{escape(result.deviation.get('reason', ''))}"
                )
            if len(set(result.dtype_outcomes.values())) > 1:
                lines.append(f"  - dtypes: {escape(dtype_line(result))}")
            for number, finding in enumerate(result.findings):
                if number:
                    lines.append(
                        f"  - also {finding.dtype}, {kind_title(finding.kind)}: "
                        f"{escape(_shorten(finding.message))}"
                    )
                if finding.shrinking:
                    lines.append(f"  - shrinking {escape(finding.shrinking)}")
                if finding.reproduce:
                    lines.append(f"  - reproduce: {code(finding.reproduce)}")
        lines.append("")
    if matrix.warnings:
        lines.append(f"{h}# Warnings")
        lines.append("")
        lines += [f"- {escape(w)}" for w in matrix.warnings]
        lines.append("")
    return "\n".join(lines)
