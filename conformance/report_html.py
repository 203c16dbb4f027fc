"""The conformance matrix as one self-contained static HTML page.

No network: the CSS, the script and the plot (SVG) are inline, so the page opens from
``file://`` and can be uploaded as a CI artifact. Every text that comes from an
implementation (messages, exception text, tracebacks, versions) is HTML-escaped; element IDs
are built from indices, never from such text.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from normspec.conformance.matrix import (
    OUTCOME_TITLES,
    Column,
    Matrix,
    cell_outcome,
)
from normspec.conformance.report_json import json_safe
from normspec.conformance.report_terminal import dtype_line, kind_title
from normspec.conformance.results import PROBLEMS, ClauseResult, Finding

SHORT = {
    "pass": "pass",
    "fail": "FAIL",
    "declared": "declared",
    "not_applicable": "n/a",
    "error": "ERROR",
    "crashed": "CRASHED",
    "hung": "HUNG",
    "skipped": "skipped",
    "not_run": "·",
}
#: Column colours of the plot (colour-blind-safe, Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000")
#: Marker shapes of the plot, so that columns differ without colour too.
SHAPES = ("circle", "square", "diamond", "triangle")

CSS = """
:root { --pass:#1a7f37; --fail:#cf222e; --declared:#9a6700; --na:#6e7781; --error:#8250df;
  --skipped:#57606a; --line:#d0d7de; --bg-alt:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #1f2328; background: #fff; }
header, main, footer { max-width: 1400px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta { color: #57606a; margin: 0 0 4px; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; border-radius: 6px;
  margin: 12px 0; }
table.matrix tr.verdicts th { top: auto; position: static; font-size: 12px; white-space: nowrap; }
th.verdict.ok { color: #fff; background: var(--pass); }
th.verdict.bad { color: #fff; background: var(--fail); }
th.verdict.none { color: #1f2328; background: #fff1c2; }
table.implementations { border-collapse: collapse; margin: 8px 0; }
table.implementations th, table.implementations td { border: 1px solid var(--line);
  padding: 3px 8px; text-align: left; vertical-align: top; }
table.matrix { border-collapse: collapse; margin: 8px 0; }
table.matrix th, table.matrix td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; }
table.matrix thead th { position: sticky; top: 0; background: #fff; z-index: 1; }
table.matrix tbody tr:nth-child(even) { background: var(--bg-alt); }
table.matrix td.clause code { font-size: 13px; }
td.cell { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.cell a { color: inherit; text-decoration: underline dotted; }
td.pass { color: var(--pass); }
td.fail { color: #fff; background: var(--fail) !important; font-weight: 600; }
td.error, td.crashed, td.hung { color: #fff; background: var(--error) !important;
  font-weight: 600; }
td.declared { color: #1f2328; background: #fff1c2 !important; }
td.not_applicable { color: var(--na); }
td.skipped { color: var(--skipped); font-style: italic; }
td.not_run { color: #8c959f; }
.ulps { font-weight: 400; opacity: .85; margin-left: 4px; }
.problems-only tr.clean { display: none; }
.controls { margin: 8px 0; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
button { font: inherit; padding: 2px 10px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--bg-alt); cursor: pointer; }
details.finding { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; padding: 0 10px; }
details.finding[open] { padding-bottom: 10px; }
details.finding > summary { cursor: pointer; padding: 6px 0; }
details.finding:target { box-shadow: 0 0 0 2px #0969da; }
.tag { display: inline-block; min-width: 64px; font-weight: 600; }
.tag.fail { color: var(--fail); }
.tag.error, .tag.crashed, .tag.hung { color: var(--error); }
.tag.declared { color: var(--declared); }
pre { background: var(--bg-alt); padding: 8px; overflow-x: auto; border-radius: 6px; margin: 4px 0;
  white-space: pre-wrap; word-break: break-word; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0; }
dl.kv dt { color: #57606a; } dl.kv dd { margin: 0; }
.plot { overflow-x: auto; }
.legend { color: #57606a; font-size: 13px; }
footer { color: #57606a; font-size: 12px; padding: 24px; }
"""

SCRIPT = """
(function () {
  function openFromHash() {
    var id = decodeURIComponent(window.location.hash.slice(1));
    if (!id) return;
    var el = document.getElementById(id);
    if (el && el.tagName === 'DETAILS') { el.open = true; }
  }
  window.addEventListener('hashchange', openFromHash);
  document.addEventListener('DOMContentLoaded', function () {
    openFromHash();
    var all = function (open) {
      document.querySelectorAll('details.finding').forEach(function (d) { d.open = open; });
    };
    var expand = document.getElementById('expand-all');
    var collapse = document.getElementById('collapse-all');
    var only = document.getElementById('problems-only');
    if (expand) expand.addEventListener('click', function () { all(true); });
    if (collapse) collapse.addEventListener('click', function () { all(false); });
    if (only) only.addEventListener('change', function () {
      document.getElementById('matrix').classList.toggle('problems-only', only.checked);
    });
  });
})();
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _finding_id(column_index: int, clause_index: int) -> str:
    return f"finding-{column_index}-{clause_index}"


def _cell(column: Column, column_index: int, clause_index: int, clause_id: str) -> str:
    outcome = cell_outcome(column, clause_id)
    result = column.result(clause_id)
    text = esc(SHORT[outcome])
    ulps = column.ulps.get(clause_id)
    if ulps is not None and outcome in ("pass", "fail", "declared"):
        text += f'<span class="ulps">{esc(str(ulps))}</span>'
    title = OUTCOME_TITLES[outcome]
    if result is not None and result.message:
        title += ": " + result.message
    if outcome in (*PROBLEMS, "declared"):
        text = f'<a href="#{_finding_id(column_index, clause_index)}">{text}</a>'
    return f'<td class="cell {outcome}" title="{esc(title[:500])}">{text}</td>'


def _verdict_cell(column: Column) -> str:
    """The column's verdict, under its heading: the first thing a reader looks for."""
    report = column.report
    counts = ", ".join(f"{v} {OUTCOME_TITLES[k]}" for k, v in report.counts().items() if v)
    verdict = report.verdict + (" (interrupted)" if report.interrupted else "")
    kind = "ok" if report.verdict == "conformant" else ("bad" if not report.conformant else "none")
    problems = report.counts()["fail"] + report.counts()["error"]
    short = {"ok": "conformant", "bad": f"NOT conformant ({problems})", "none": "nothing checked"}
    return (
        f'<th class="verdict {kind}" title="{esc(verdict)}: {esc(counts)}; '
        f'{report.seconds:.1f} s">{esc(short[kind])}</th>'
    )


def _matrix_table(matrix: Matrix) -> str:
    rows = []
    head = "".join(
        f"<th>{esc(c.label)}<br><small>{esc(' = '.join(c.profiles))}</small></th>"
        for c in matrix.columns
    )
    verdicts = "".join(_verdict_cell(c) for c in matrix.columns)
    rows.append(
        f"<thead><tr><th>clause</th><th>level</th>{head}</tr>"
        f'<tr class="verdicts"><th>verdict</th><th></th>{verdicts}</tr></thead><tbody>'
    )
    for clause_index, (clause_id, level, summary) in enumerate(matrix.clauses):
        outcomes = {cell_outcome(c, clause_id) for c in matrix.columns}
        clean = not outcomes & {*PROBLEMS, "declared", "skipped"}
        cells = "".join(
            _cell(c, ci, clause_index, clause_id) for ci, c in enumerate(matrix.columns)
        )
        rows.append(
            f'<tr class="{"clean" if clean else "problem"}" data-clause="{esc(clause_id)}">'
            f'<td class="clause" title="{esc(summary)}"><code>{esc(clause_id)}</code></td>'
            f"<td>{esc(level)}</td>{cells}</tr>"
        )
    rows.append("</tbody>")
    return f'<table class="matrix" id="matrix">{"".join(rows)}</table>'


def _implementations(matrix: Matrix) -> str:
    """Each run in a row: verdict, counts, time, menu, the library and its versions."""
    rows = []
    for column in matrix.columns:
        report = column.report
        counts = ", ".join(f"{v} {OUTCOME_TITLES[k]}" for k, v in report.counts().items() if v)
        versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
        rows.append(
            f"<tr><td>{esc(column.label)}</td><td>{esc(' = '.join(column.profiles))}</td>"
            f"<td>{esc(report.verdict)}</td><td>{esc(counts)}</td>"
            f"<td>{report.seconds:.1f} s</td>"
            f"<td>{esc(report.implementation)}; {esc(versions)}"
            + (f"; {esc(report.menu_note)}" if report.menu else "")
            + f"; calls {esc(report.isolation)}</td></tr>"
        )
    return (
        '<table class="implementations"><thead><tr><th>implementation</th><th>profile</th>'
        "<th>verdict</th><th>clauses</th><th>time</th><th>library</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _marker(shape: str, x: float, y: float, r: float, colour: str, failing: bool) -> str:
    stroke = (
        ' stroke="#cf222e" stroke-width="2.5"' if failing else ' stroke="#fff" stroke-width="1"'
    )
    if shape == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{colour}"{stroke}/>'
    if shape == "square":
        return (
            f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
            f'fill="{colour}"{stroke}/>'
        )
    if shape == "diamond":
        points = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} {x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}"
    else:
        points = f"{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} {x - r - 1:.1f},{y + r:.1f}"
    return f'<polygon points="{points}" fill="{colour}"{stroke}/>'


def ulps_plot(matrix: Matrix) -> str:
    """A dot plot: the worst error in ulps per clause (rows) and implementation (markers),
    on a logarithmic axis; a red outline marks a clause that failed."""
    rows = [
        (
            clause_id,
            [(ci, c.ulps[clause_id]) for ci, c in enumerate(matrix.columns) if clause_id in c.ulps],
        )
        for clause_id, _level, _summary in matrix.clauses
    ]
    rows = [(cid, points) for cid, points in rows if points]
    if not rows:
        return '<p class="legend">No numeric comparison was recorded.</p>'
    finite = [
        u.value for _, points in rows for _, u in points if math.isfinite(u.value) and u.value > 0
    ]
    top = max(2, math.ceil(math.log10(max(finite)))) if finite else 2
    top = min(top, 40)
    bottom = -1
    left, width, row_h, pad_top = 250, 560, 18, 34
    height = pad_top + row_h * len(rows) + 40
    legend_h = 20 * len(matrix.columns)
    total_w = left + width + 40

    def x_of(value: float) -> float:
        if not math.isfinite(value):
            return left + width + 14
        exponent = math.log10(value) if value > 0 else bottom
        exponent = min(max(exponent, bottom), top)
        return left + (exponent - bottom) / (top - bottom) * width

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{total_w}" '
        f'height="{height + legend_h}" viewBox="0 0 {total_w} {height + legend_h}" '
        'aria-label="worst error in ulps per clause and implementation" '
        'font-family="system-ui, sans-serif" font-size="12">',
        "<title>Worst error in ulps per clause and implementation</title>",
    ]
    for exponent in range(bottom, top + 1):
        x = x_of(10.0**exponent)
        label = (
            "0"
            if exponent == bottom
            else (f"{10**exponent:g}" if exponent < 3 else f"1e{exponent}")
        )
        parts.append(
            f'<line x1="{x:.1f}" y1="{pad_top - 6}" x2="{x:.1f}" y2="{height - 34}" '
            'stroke="#d0d7de"/>'
            f'<text x="{x:.1f}" y="{pad_top - 10}" text-anchor="middle" fill="#57606a">'
            f"{esc(label)}</text>"
        )
    parts.append(
        f'<text x="{left + width / 2:.1f}" y="12" text-anchor="middle" fill="#1f2328">'
        "worst error seen, ulps of the dtype at the value (log scale; 0 at the left)</text>"
    )
    for row, (clause_id, points) in enumerate(rows):
        y = pad_top + row * row_h + row_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" font-family="monospace">'
            f"{esc(clause_id)}</text>"
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + width}" y2="{y:.1f}" '
            'stroke="#eaeef2"/>'
        )
        for ci, ulps in points:
            column = matrix.columns[ci]
            outcome = cell_outcome(column, clause_id)
            failing = outcome in ("fail", "declared")
            marker = _marker(
                SHAPES[ci % len(SHAPES)],
                x_of(ulps.value),
                y,
                5,
                PALETTE[ci % len(PALETTE)],
                failing,
            )
            tooltip = f"{clause_id}, {column.title}: {ulps} ({OUTCOME_TITLES[outcome]})"
            parts.append(f"<g><title>{esc(tooltip)}</title>{marker}</g>")
    for ci, column in enumerate(matrix.columns):
        y = height + ci * 20 - 10
        parts.append(
            _marker(SHAPES[ci % len(SHAPES)], left + 6, y, 5, PALETTE[ci % len(PALETTE)], False)
            + f'<text x="{left + 18}" y="{y + 4:.1f}">{esc(column.title)}</text>'
        )
    parts.append(
        f"<g>{_marker('circle', left + width - 150, height - 20, 5, '#fff', True)}"
        f'<text x="{left + width - 140}" y="{height - 16}">failed (red outline)</text></g>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _json_block(value: Any) -> str:
    """A dict as ``key: JSON`` lines (as the terminal report prints the minimal example)."""
    safe = json_safe(value)
    if isinstance(safe, dict):
        text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in safe.items())
    else:
        text = json.dumps(safe, indent=2)
    return f"<pre>{esc(text)}</pre>"


def _finding_body(finding: Finding) -> list[str]:
    """One finding's parts: its comparison, minimal example, notes, traceback, reproduce."""
    body = []
    if finding.figures is not None:
        rows = "".join(
            f"<dt>{esc(k)}</dt><dd>{esc(json.dumps(json_safe(v)))}</dd>"
            for k, v in finding.figures.to_json().items()
        )
        body.append(f"<h4>Comparison</h4><dl class='kv'>{rows}</dl>")
    if finding.example is not None:
        body.append("<h4>Minimal example</h4>" + _json_block(finding.example))
    if finding.shrinking:
        body.append(f"<p class='shrinking'>Shrinking {esc(finding.shrinking)}</p>")
    if finding.notes:
        body.append("<h4>Notes</h4>" + _json_block(finding.notes))
    if finding.traceback:
        title = (
            "Traceback" if finding.outcome in ("fail", "error") else "End of the worker's output"
        )
        body.append(f"<h4>{title}</h4><pre>{esc(finding.traceback)}</pre>")
    if finding.reproduce:
        body.append(f"<h4>Reproduce</h4><pre class='reproduce'>{esc(finding.reproduce)}</pre>")
    return body


def _finding(column: Column, column_index: int, clause_index: int, result: ClauseResult) -> str:
    outcome = result.outcome
    first_line = result.message.splitlines()[0] if result.message else ""
    if len(first_line) > 200:
        first_line = first_line[:199] + "…"
    body = [
        f"<p>{esc(result.summary)}</p>",
        f"<dl class='kv'><dt>implementation</dt><dd>{esc(column.report.implementation)} "
        f"(<code>{esc(column.target)}</code>)</dd>"
        f"<dt>profile</dt><dd>{esc(' = '.join(column.profiles))}</dd>"
        f"<dt>level</dt><dd>{esc(result.level)}</dd>"
        f"<dt>examples</dt><dd>{result.examples} in {result.seconds:.2f} s</dd></dl>",
        f"<h4>Message</h4><pre>{esc(result.message)}</pre>",
    ]
    if result.deviation:
        body.append(
            "<h4>Declared deviation</h4><dl class='kv'>"
            f"<dt>category</dt><dd>{esc(result.deviation.get('category', ''))}</dd>"
            f"<dt>reason</dt><dd>{esc(result.deviation.get('reason', ''))}</dd>"
            f"<dt>outcome of the check</dt><dd>{esc(result.deviation.get('outcome', ''))}</dd>"
            f"<dt>declared in</dt><dd>{esc(result.deviation.get('source', ''))}</dd></dl>"
        )
    if len(set(result.dtype_outcomes.values())) > 1:
        body.append(f"<h4>Dtypes</h4><p>{esc(dtype_line(result))}</p>")
    for number, finding in enumerate(result.findings):
        if len(result.findings) > 1:
            kind = kind_title(finding.kind)
            heading = f"Finding {number + 1} of {len(result.findings)}: {finding.dtype}, {kind}"
            body.append(f"<h3>{esc(heading)}</h3><pre>{esc(finding.message)}</pre>")
        body += _finding_body(finding)
    ulps = column.ulps.get(result.clause_id)
    ulps_text = f" ({esc(str(ulps))})" if ulps is not None else ""
    return (
        f'<details class="finding {outcome}" id="{_finding_id(column_index, clause_index)}">'
        f'<summary><span class="tag {outcome}">{esc(SHORT[outcome])}</span> '
        f"<code>{esc(result.clause_id)}</code> — {esc(column.title)}{ulps_text}: "
        f"{esc(first_line)}</summary>{''.join(body)}</details>"
    )


def _findings(matrix: Matrix) -> str:
    clause_index = {cid: i for i, cid in enumerate(matrix.clause_ids())}
    parts = []
    for ci, column in enumerate(matrix.columns):
        for result in column.report.results:
            if result.outcome in (*PROBLEMS, "declared"):
                parts.append(_finding(column, ci, clause_index.get(result.clause_id, 0), result))
    if not parts:
        return "<p>No clause failed.</p>"
    return "".join(parts)


def render_html(matrix: Matrix) -> str:
    """The whole page."""
    env = matrix.environment
    meta = (
        f"normspec {esc(matrix.normspec_version)}, specification {esc(matrix.spec_version)}; "
        f"{matrix.options.max_examples} examples per clause, seed {matrix.options.seed}"
        + (f", dtypes {esc(', '.join(matrix.options.dtypes))}" if matrix.options.dtypes else "")
        + (f", clauses {esc(matrix.options.clauses)}" if matrix.options.clauses else "")
        + f"; Python {esc(env.get('python', '?'))} on {esc(env.get('platform', '?'))}; "
        f"started {esc(matrix.started)}, {matrix.seconds:.0f} s"
    )
    sections = [
        "<header><h1>normspec conformance matrix</h1>",
        f'<p class="meta">{meta}</p>',
    ]
    if matrix.interrupted:
        pending = ", ".join(f"{t} [{p}]" for t, p in matrix.pending) or "the rest"
        sections.append(
            f'<div class="banner"><b>Interrupted: partial results.</b> Not run: {esc(pending)}.</div>'
        )
    sections.append("</header><main>")
    if matrix.columns:
        sections.append(
            '<section id="first-screen"><div class="controls"><label><input type="checkbox" '
            'id="problems-only"> only clauses with a failure, error, declared deviation or '
            "skip</label></div>"
            + _matrix_table(matrix)
            + '<p class="legend">The verdict row gives each run\'s verdict (hover for its '
            "counts); then per clause: pass · FAIL · declared (a deviation the "
            "implementation's deviation file lists) · n/a (outside its capabilities or "
            "profile) · ERROR (it raised or hung) · skipped (a clause it depends on did not "
            "pass) · · not run. A number is the worst error seen against the reference, in ulps "
            "of the dtype it names at the expected value, over the values whose bound is not "
            "far larger than the value; for a failure, the ulps its comparison reports (as "
            "normspec check does). A column "
            "headed by two profiles is one run: the dialect parameters are the same under "
            "both for this implementation. Click a failure for its details.</p></section>"
        )
    else:
        sections.append("<p>No implementation was checked.</p>")
    if matrix.unavailable:
        items = "".join(
            f"<li>{esc(u.label)} [{esc(u.profile)}]: {esc(u.reason)}</li>"
            for u in matrix.unavailable
        )
        sections.append(f'<h2>Not checked</h2><ul class="unavailable">{items}</ul>')
    if matrix.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in matrix.warnings)
        sections.append(f'<h2>Warnings</h2><ul class="warnings">{items}</ul>')
    if matrix.columns:
        sections.append(
            "<h2>Failures and declared deviations</h2>"
            '<div class="controls"><button type="button" id="expand-all">expand all</button>'
            '<button type="button" id="collapse-all">collapse all</button></div>'
            + _findings(matrix)
        )
        sections.append(
            "<h2>Worst error in ulps</h2><div class='plot'>" + ulps_plot(matrix) + "</div>"
        )
        sections.append("<h2>Implementations</h2>" + _implementations(matrix))
    sections.append(
        "</main><footer>Generated by <code>normspec report</code>. Each failure's reproduce "
        "command runs one clause again with the same seed.</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        "<title>normspec conformance matrix</title>"
        f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>"
        + "".join(sections)
        + "</body></html>\n"
    )
