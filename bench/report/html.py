"""``index.html``: the report on one self-contained page. Opens from a file or a CI artifact with
no server and no network: CSS and the sorting script inline, every image a base64 data URI.

The text is the leaderboard's markdown (:mod:`.markdown`: settings, ranked tables with
intervals and flags, legends, transfer matrices, curves per checkpoint) turned into HTML by the
small converter here, with each section's (data set and threat model) figures after its tables.
Every table sorts by a click on a column header (numbers by value, cells without a number
last)."""

from __future__ import annotations

import base64
import html
import re

from bench.report import crossnorm, markdown
from bench.report.heatmap import Matrix
from bench.report.model import Model
from bench.report.text import slug

PICTURES = (
    "The pictures below are computed from each checkpoint, not read from the store (it keeps "
    "per-point flags, not images) and cached by weights fingerprint under `cache/`; no number "
    "of this report comes from them."
)

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; \
padding: 0 1em; color: #222; }
h1, h2, h3 { line-height: 1.2; } \
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 12.5px; }
th, td { border: 1px solid #ddd; padding: 3px 7px; vertical-align: top; }
th { background: #f3f3f3; cursor: pointer; user-select: none; position: sticky; top: 0; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } \
th[aria-sort="descending"]::after { content: " \\25BC"; }
tbody tr:nth-child(even) { background: #fafafa; } td.num { text-align: right; white-space: nowrap; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; }
figure { margin: 1em 0; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } \
figcaption { font-size: 12px; color: #555; max-width: 900px; }
.notes { font-size: 12.5px; color: #555; }
"""

JS = """
(function () {
  function key(row, col) {
    var cell = row.cells[col];
    return cell && cell.hasAttribute("data-v") ? parseFloat(cell.getAttribute("data-v")) : NaN;
  }
  function sortBy(table, th, col) {
    var asc = th.getAttribute("aria-sort") !== "ascending", dir = asc ? 1 : -1;
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { \
h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.some(function (r) { return !isNaN(key(r, col)); });
    rows.sort(function (a, b) {
      if (numeric) {
        var x = key(a, col), y = key(b, col);
        if (isNaN(x) || isNaN(y)) { return isNaN(x) - isNaN(y); }
        return (x - y) * dir;
      }
      return a.cells[col].textContent.localeCompare(b.cells[col].textContent) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.title = "sort";
      th.addEventListener("click", function () { sortBy(table, th, col); });
    });
  });
})();
"""

NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)(?![\d.])(?:/(\d+))?")  # 60.0 (...), 7, 8/255
DURATION = re.compile(
    r"^\s*(?:(\d+) h )?(?:(\d+) min)?(?: ?(\d+(?:\.\d+)?) s)?\s*$"
)  # format_seconds


def inline(text: str) -> str:
    """Markdown inline text as HTML: escaped, with `code` and **bold**."""
    out = html.escape(text.replace("\\|", "|"))
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` inside a cell is kept)."""
    return re.split(r"(?<!\\) \| ", line.strip()[2:-2])


def sort_value(text: str) -> float | None:
    """A cell's number for sorting: a duration (``12 min 05 s``) in seconds, else its leading
    number (``60.0 (52.1–67.5)``: 60.0; ``8/255``: 8/255), else None."""
    d = DURATION.match(text)
    if d is not None and any(d.groups()):
        h, m, sec = (float(g) if g else 0.0 for g in d.groups())
        return 3600 * h + 60 * m + sec
    n = NUMBER.match(text)
    if n is None or (n.group(2) is not None and int(n.group(2)) == 0):
        return None
    return float(n.group(1)) / (int(n.group(2)) if n.group(2) else 1)


def _td(text: str) -> str:
    """A cell; a number in it (see :func:`sort_value`) becomes its sort value."""
    v = sort_value(text)
    if v is None:
        return f"<td>{inline(text)}</td>"
    return f'<td class="num" data-v="{v!r}">{inline(text)}</td>'


def table_html(lines: list[str]) -> str:
    """A markdown table (head, alignment row, body) as a sortable HTML table."""
    head = "".join(f"<th>{inline(c)}</th>" for c in _cells(lines[0]))
    body = "".join("<tr>" + "".join(_td(c) for c in _cells(row)) + "</tr>" for row in lines[2:])
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def convert(lines: list[str]) -> str:
    """The markdown the report writes (headings, paragraphs, bullet lists, tables) as HTML."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        block = [line]
        if line.startswith("|") or line.startswith("- "):  # a table or a list: its run of lines
            prefix = line[:2]
            while i + 1 < len(lines) and lines[i + 1].startswith(prefix):
                i += 1
                block.append(lines[i])
        out.append(_block(block))
        i += 1
    return "\n".join(o for o in out if o)


def _block(block: list[str]) -> str:
    line = block[0]
    if not line.strip():
        return ""
    if line.startswith("|"):
        return table_html(block)
    if line.startswith("- "):
        return "<ul>" + "".join(f"<li>{inline(b[2:])}</li>" for b in block) + "</ul>"
    m = re.match(r"^(#{1,4}) (.*)$", line)
    if m:
        level = len(m.group(1))
        return f"<h{level}>{inline(m.group(2))}</h{level}>"
    return f"<p>{inline(line)}</p>"


def figure(name: str, data: bytes, caption: str) -> str:
    """An inlined PNG with its caption; its id is the file name without ``.png``, its class the
    kind of figure (the name's first part: tradeoff, transfer, plot, gradients, adversarial)."""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    stem = html.escape(name.removesuffix(".png"))
    return (
        f'<figure id="{stem}" class="{stem.split("-")[0]}">'
        f'<img src="{src}" alt="{html.escape(name)}">'
        f"<figcaption>{inline(caption)} <code>{html.escape(name)}</code></figcaption></figure>"
    )


def _section(
    name: str,
    key: int,
    models: list[Model],
    rank_by: str,
    matrices: list[Matrix],
    rank_eps: float | None = None,
) -> str:
    """A section's tables; its first table, the ranked one, is marked as the leaderboard."""
    body = convert(markdown.dataset_section(name, key, models, rank_by, matrices, rank_eps))
    return body.replace(
        '<table class="sortable">',
        f'<table class="sortable leaderboard" id="leaderboard-{slug(name)}">',
        1,
    )


def _figures(names: list[str], files: dict[str, bytes], captions: dict[str, str]) -> str:
    """The figures of a section, with a note before the pictures made from checkpoints."""
    out = []
    for f in names:
        if f.startswith("gradients-"):
            out.append(f"<p>{inline(PICTURES)}</p>")
        out.append(figure(f, files[f], captions.get(f, "")))
    return '<div class="figures">' + "".join(out) + "</div>"


def render(
    sets: dict[str, tuple[int, list[Model]]],
    rank_by: str,
    matrices: dict[str, list[Matrix]],
    files: dict[str, bytes],
    figs: dict[str, list[str]],
    captions: dict[str, str],
    notes: list[str],
    rank_eps: float | None = None,
) -> str:
    """The page: settings, then per section its tables and figures, then every curve."""
    parts = [convert(markdown.header(sets, rank_by))]
    for name, (key, models) in sets.items():
        parts.append(_section(name, key, models, rank_by, matrices.get(name, []), rank_eps))
        parts.append(_figures(figs.get(name, []), files, captions))
    parts.append(convert(crossnorm.section(sets)))
    if notes:
        parts.append(
            '<h2>Pictures not made</h2><ul class="notes">'
            + "".join(f"<li>{inline(n)}</li>" for n in notes)
            + "</ul>"
        )
    parts.append(convert(markdown.curves_section(sets)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>bench report</title><style>{CSS}</style></head><body>\n"
        + "\n".join(parts)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )
