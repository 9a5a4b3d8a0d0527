"""``index.html``: the comparison as one self-contained page, readable in any browser with no network.

Images are embedded as ``data:`` URIs rather than linked beside the page, so the one file can be copied,
mailed or kept as a CI artifact on its own, and figures that live in run directories (confusion matrices)
need no copying; the PNGs stay beside ``index.md`` as before. The page loads nothing: its CSS and the few
lines of JS that sort the tables are inline.

Every string that comes from a run (names, labels, errors, paths, the command) goes through ``escape``.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Optional

from plots import table
from plots.page import Section, Table
from plots.runs import Group, split_prefix


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# The sort script. A click on a column header sorts by it (again: reversed); numbers sort by the cell's
# data-sort (the mean of "mean ± std"), text by its text; empty cells ("–") go last either way.
# ``?sort=COLUMN`` (or ``?sort=-COLUMN``, descending) sorts the results table on load, so a link, or a
# headless browser's --dump-dom, can show a sorted table. On load the page also records in <body> how many
# images decoded (data-images-ok="N/M"), how far the page and its tables scroll sideways at this window's width
# (data-overflow-x="page:0 results-table:0 runs-table:0") and which sort is shown (data-sorted); JS errors land in
# <html data-js-errors>, so a test reading the DOM sees them.
# The error hook sits in <head>, apart from the main script, so it also reports that script failing to parse.
ON_ERROR = r"""
var jsErrors = [];
window.onerror = function (msg, src, line) {
  jsErrors.push(msg + " (line " + line + ")");
  document.documentElement.setAttribute("data-js-errors", jsErrors.join(" | "));
};
"""

SCRIPT = r"""
(function () {
function sortTable(tbl, col, desc) {
  var th = tbl.tHead.rows[0].cells[col], numeric = th.classList.contains("num");
  var rows = Array.prototype.slice.call(tbl.tBodies[0].rows);
  function key(row) {
    var cell = row.cells[col], v = cell.getAttribute("data-sort");
    if (numeric) { return v === null || v === "" ? null : parseFloat(v); }
    return cell.textContent.trim().toLowerCase();
  }
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null || y === null) { return (x === null) - (y === null); }
    var c = x < y ? -1 : x > y ? 1 : 0;
    return desc ? -c : c;
  });
  rows.forEach(function (r) { tbl.tBodies[0].appendChild(r); });
  Array.prototype.forEach.call(tbl.tHead.rows[0].cells, function (h, i) {
    h.setAttribute("aria-sort", i === col ? (desc ? "descending" : "ascending") : "none");
    h.querySelector(".arrow").textContent = i === col ? (desc ? "\u25bc" : "\u25b2") : "\u21c5";
  });
  if (tbl.id === "results-table") {
    document.body.setAttribute("data-sorted", th.getAttribute("data-key") + (desc ? ":desc" : ":asc"));
  }
}
document.querySelectorAll("table.sortable").forEach(function (tbl) {
  Array.prototype.forEach.call(tbl.tHead.rows[0].cells, function (th, i) {
    th.addEventListener("click", function () {
      sortTable(tbl, i, th.getAttribute("aria-sort") === "ascending");
    });
  });
});
var wanted = new URLSearchParams(location.search).get("sort");
var results = document.getElementById("results-table");
if (wanted && results) {
  var desc = wanted.charAt(0) === "-", name = desc ? wanted.slice(1) : wanted;
  Array.prototype.forEach.call(results.tHead.rows[0].cells, function (th, i) {
    if (th.getAttribute("data-key") === name) { sortTable(results, i, desc); }
  });
}
// A figure in a two-column grid is shown at half size: a click gives it the full width (again: back).
document.querySelectorAll(".grid figure img").forEach(function (img) {
  img.addEventListener("click", function () { img.parentNode.classList.toggle("zoom"); });
});
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { ok++; } });
  document.body.setAttribute("data-images-ok", ok + "/" + imgs.length);
  // How far the page, and each table's box, would scroll sideways (px): 0 where everything fits the window.
  var root = document.documentElement, wide = [];
  document.querySelectorAll("div.wide > table").forEach(function (t) {
    wide.push(t.id + ":" + (t.parentNode.scrollWidth - t.parentNode.clientWidth));
  });
  document.body.setAttribute("data-overflow-x", ["page:" + (root.scrollWidth - root.clientWidth)].concat(wide).join(" "));
});
})();
"""

STYLE = """
*, *::before, *::after { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232a;
       margin: 0 auto; padding: 1.2em 2em 3em; max-width: 1320px; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #d5dae0; padding-bottom: .2em;
margin-top: 2em; } h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.meta { color: #4a5560; margin: .2em 0; } code { background: #f2f4f6; padding: 0 .25em; border-radius: 3px;
font-size: .92em; } .meta code { word-break: break-all; }
nav { margin: 1em 0; font-size: .93em; display: flex; flex-wrap: wrap; gap: .2em 1.2em; } nav a { white-space: nowrap; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: .92em; font-variant-numeric: tabular-nums; }
th, td { padding: .35em .45em; border-bottom: 1px solid #e3e7eb; text-align: left; vertical-align: top; }
th { background: #eef1f4; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; vertical-align: bottom; }
th .arrow { white-space: nowrap; }
#results-table td:first-child { min-width: 10em; }
td.num .spread { display: block; color: #4a5560; font-size: .85em; }
td.num .flag { display: block; white-space: normal; min-width: 6em; font-size: .85em; color: #a33; text-align: left; }
table.sortable th:hover { background: #dde3e9; }
th .arrow { color: #8a96a3; margin-left: .3em; font-size: .85em; }
th[aria-sort="ascending"] .arrow, th[aria-sort="descending"] .arrow { color: #1d232a; }
td.num, th.num { text-align: right; } td.num { white-space: nowrap; }
tbody tr:nth-child(even) { background: #f8f9fb; }
td.path { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .88em; word-break: break-all; }
figure { margin: 0 0 1.6em; } figure img { display: block; max-width: 100%; height: auto;
border: 1px solid #e3e7eb; } figcaption { color: #4a5560; margin-top: .35em; font-size: .93em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 0 2em; }
.grid figure { min-width: 0; } .grid img { cursor: zoom-in; }
.grid figure.zoom { grid-column: 1 / -1; } .grid figure.zoom img { cursor: zoom-out; }
.failures li { margin: .3em 0; } .status { font-weight: 600; color: #a33; }
.note { color: #4a5560; font-size: .93em; max-width: 70em; }
ul.summary { font-size: 1.02em; max-width: 70em; } ul.summary li { margin: .25em 0; }
"""


def _prose(text: str) -> str:
    """Our own sentences (which may quote a run's labels): escaped, then `code` and **bold** as in index.md."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _id(text: str) -> str:
    """An anchor or column key: "best val acc (%)" -> "best-val-acc"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _number(value: Optional[float]) -> str:
    return "" if value is None or not math.isfinite(float(value)) else repr(float(value))


def breakable(text: Any) -> str:
    """Escaped, with a line-break opportunity (``<wbr>``) after each ``-``, ``_``, ``.``, ``=`` and ``,``: run
    names and dotted keys have no spaces, and one such name would otherwise set a column's width."""
    return re.sub(r"(?<=[-_.=,])(?=\S)", "<wbr>", escape(text))  # none of these five occurs inside an entity


def _number_cell(text: str, value: Optional[float]) -> str:
    """A number stays on one line; its spread (``± 0.20``, ``(IQR 38%)``) goes on a second line and what flags
    it (``⚠ spread 38% > 10%; ...``) on a third, which may wrap, so a table of a dozen columns fits a 1400 px
    window. The whole text is the cell's tooltip."""
    main, _, flag = text.partition(" ⚠ ")
    number, spread = re.match(r"(.*?)(?: (±.*|\(.*\)))?$", main).groups()
    if not (flag or spread):
        return f'<td class="num" data-sort="{_number(value)}">{escape(text)}</td>'
    return (f'<td class="num" data-sort="{_number(value)}" title="{escape(text)}">{escape(number)}'
            + (f' <span class="spread">{escape(spread)}</span>' if spread else "")
            + (f' <span class="flag">⚠ {escape(flag)}</span>' if flag else "") + "</td>")


def results_table(groups: list[Group]) -> str:
    head, numeric, rows = table.summary_table(groups)
    ths = "".join(f'<th class="{"num" if n else "text"}" data-key="{escape(_id(h))}" aria-sort="none" '
                  f'title="sort by {escape(h)}">{breakable(h)}<span class="arrow">\u21c5</span></th>'
                  for h, n in zip(head, numeric))
    # The experiments without the prefix they all share (the sweep's name and dataset), which the caption names.
    prefix, short = split_prefix([g.label for g in groups])
    body = []
    for cells, label, name in zip(rows, [g.label for g in groups], short):
        tds = f'<td title="{escape(label)}">{breakable(name)}</td>' if prefix else f"<td>{breakable(label)}</td>"
        tds += "".join(_number_cell(t, v) if n else f"<td>{breakable(t)}</td>"
                       for (t, v), n in zip(cells[1:], numeric[1:]))
        body.append(f"<tr>{tds}</tr>")
    return ((f'<p class="note">Experiments named without the prefix they share: <code>{escape(prefix)}</code>.</p>'
             if prefix else "")
            + f'<div class="wide"><table id="results-table" class="sortable"><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def runs_table(groups: list[Group]) -> str:
    head = ["experiment", "run", "seed", "status", "reason", "directory"]
    ths = "".join(f'<th data-key="{h}" aria-sort="none">{h}<span class="arrow">\u21c5</span></th>' for h in head)
    body = "".join(f"<tr><td>{escape(g.label)}</td><td>{escape(r.name)}</td><td>{escape(r.seed)}</td>"
                   f"<td>{escape(r.status)}</td><td>{escape(r.reason)}</td>"
                   f'<td class="path">{escape(r.path)}</td></tr>' for g in groups for r in g.runs)
    return (f'<div class="wide"><table id="runs-table" class="sortable"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def section_table(t: Table) -> str:
    ths = "".join(f'<th class="{"num" if n else "text"}">{breakable(h)}</th>' for h, n in zip(t.head, t.numeric))
    # The first column names the row (a run's name: breakable); the rest are values, kept whole.
    body = "".join(f"<tr><td>{breakable(row[0])}</td>"
                   + "".join(f'<td class="{"num" if n else "text"}">{escape(c)}</td>'
                             for c, n in zip(row[1:], t.numeric[1:])) + "</tr>" for row in t.rows)
    return (f'<div class="wide"><table id="{escape(t.id)}"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _sections(sections: list[Section]) -> list[str]:
    parts = []
    for s in sections:
        parts.append(f'<h2 id="{_id(s.title)}">{escape(s.title)}</h2>')
        if s.intro:
            parts.append(f'<p class="note">{_prose(s.intro)}</p>')
        if s.table:
            parts.append(section_table(s.table))
        parts.append('<div class="grid">' if s.side_by_side and len(s.figures) > 1 else "<div>")
        for fig in s.figures:
            heading = f"<h3>{escape(fig.title)}</h3>" if fig.title != s.title else ""
            parts.append(f'<figure>{heading}<img src="{data_uri(fig.path)}" alt="{escape(fig.caption)}" '
                         f'title="click to enlarge"><figcaption>{escape(fig.caption)}</figcaption></figure>')
        parts.append("</div>")
    return parts


def page(*, title: str, written: str, command: str, groups: list[Group], table_note: str,
         failures: list[dict[str, Any]], failures_log: bool, sections: list[Section], notes: list[str],
         summary: list[str] = (), leading: list[Section] = ()) -> str:
    """The whole page as one string (images read from their files and embedded): the written ``summary``,
    the ``leading`` sections (the trade-offs), the results table, then the other ``sections``."""
    runs = [r for g in groups for r in g.runs]
    datasets = sorted({r.dataset for r in runs})
    models = sorted({r.model for r in runs})
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="meta">Written {escape(written)} by <code>{escape(command)}</code></p>']
    if runs:
        parts.append(f'<p class="meta">{len(groups)} experiment{"s" * (len(groups) != 1)} '
                     f"({escape(', '.join(models))}) on {escape(', '.join(datasets))}"
                     + (f"; {len(failures)} point{'s' * (len(failures) != 1)} did not complete" if failures else "")
                     + ". Each experiment keeps its colour in every figure; repeats over seeds read mean ± "
                       "sample std.</p>")
    toc = [("summary", "Summary")] if summary else []
    toc += [(_id(s.title), s.title) for s in leading]
    toc += ([("results", "Results")] if groups else []) + ([("failures", "Did not complete")] if failures else [])
    toc += [(_id(s.title), s.title) for s in sections] + ([("notes", "Notes")] if notes else [])
    toc += [("runs-list", "Runs")] if runs else []
    parts.append("<nav>" + "".join(f'<a href="#{i}">{escape(t)}</a>' for i, t in toc) + "</nav>")
    if summary:
        parts += ['<h2 id="summary">Summary</h2>', '<ul class="summary">']
        parts += [f"<li>{_prose(line)}</li>" for line in summary] + ["</ul>"]
    parts += _sections(list(leading))
    if groups:
        parts += ['<h2 id="results">Results</h2>',
                  '<p class="note">Click a column header to sort by it (again to reverse).</p>',
                  results_table(groups), f'<p class="note">{_prose(table_note)}</p>',
                  '<p class="note">Files: <a href="results.md">results.md</a>, per run <a href="results.csv">'
                  'results.csv</a>, per experiment <a href="summary.csv">summary.csv</a>.</p>']
    if failures:
        parts += ['<h2 id="failures">Runs that did not complete</h2>', '<ul class="failures">']
        parts += [f'<li><b>{escape(f["name"])}</b> <span class="status">({escape(f["status"])})</span>: '
                  f'{escape(f["error"])}</li>' for f in failures]
        parts.append("</ul>")
        if failures_log:
            parts.append('<p class="note">Tracebacks: <a href="failures.log">failures.log</a>.</p>')
    parts += _sections(sections)
    if notes:
        parts += ['<h2 id="notes">Notes</h2>', "<ul>"] + [f"<li>{escape(n)}</li>" for n in notes] + ["</ul>"]
    if runs:
        parts += ['<h2 id="runs-list">Runs</h2>', runs_table(groups)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style><script>{ON_ERROR}</script></head>\n<body>\n"
            + "\n".join(parts) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")
