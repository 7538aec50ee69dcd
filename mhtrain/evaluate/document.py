"""A report as a list of blocks, written twice from the same blocks: Markdown (to quote) and one
HTML page (to explore), so the two never disagree and the page shows no Markdown syntax.

The page opens from disk with no server and no network. Its figures share one plotly.js written
once beside it (`plotly-<version>.min.js`, 4.8 MB), so `report.html` stays small; `inline_js=True`
embeds it instead, for a single file to send around."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path

import plotly
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

Table = list[list[str]]  # header row first


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # may hold `code` spans


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class TableBlock:
    rows: Table


@dataclass(frozen=True)
class Figure:
    """A figure, or (fig None) the one line that says why it was left out."""

    title: str
    fig: go.Figure | None = None
    left_out: str = ""


Block = Heading | Para | Bullets | TableBlock | Figure


def render(b: Block, md: bool) -> str:
    """One block as Markdown (`md`) or as HTML: the one place each kind of block is written."""
    if isinstance(b, Heading):
        return "#" * b.level + " " + b.text if md else f"<h{b.level}>{inline(b.text)}</h{b.level}>"
    if isinstance(b, Para):
        return b.text if md else f"<p>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        if md:
            return "\n".join(f"- {i}" for i in b.items)
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>"
    if isinstance(b, TableBlock):
        if md:
            rows = ["| " + " | ".join(r) + " |" for r in b.rows]
            return "\n".join([rows[0], "|" + "---|" * len(b.rows[0]), *rows[1:]])
        tags = ["th"] + ["td"] * (len(b.rows) - 1)
        return "<table>" + "".join("<tr>" + "".join(f"<{t}>{inline(x)}</{t}>" for x in r) + "</tr>"
                                   for t, r in zip(tags, b.rows, strict=True)) + "</table>"
    if b.fig is None:
        line = f"Left out: {b.title}: {b.left_out}."
        return f"*{line}*" if md else f"<p class='left-out'>{inline(line)}</p>"
    if md:
        return f"*Figure in [report.html](report.html): {b.title}.*"
    return f"<h3>{inline(b.title)}</h3>\n" + b.fig.to_html(full_html=False, include_plotlyjs=False)


def to_markdown(title: str, blocks: list[Block]) -> str:
    """The report as Markdown: tables to paste, figures named with a pointer to the page."""
    return "\n".join([f"# {title}", "", *(x for b in blocks for x in (render(b, md=True), ""))])


def to_text(rows: Table) -> str:
    """A table for the console: columns aligned, no Markdown."""
    rows = [[x.replace("`", "") for x in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def inline(text: str) -> str:
    """Escaped text with `code` spans as <code>: the page shows no backticks."""
    parts = re.split(r"`([^`]*)`", text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p)
                   for i, p in enumerate(parts))


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px}"
         "td{text-align:right}td:first-child{text-align:left}code{background:#f2f2f2;padding:0 3px}"
         "blockquote{border-left:4px solid #ccc;margin:1em 0;padding:0 1em}.left-out{color:#666}")


def to_html(title: str, blocks: list[Block], out_dir: Path, inline_js: bool = False) -> str:
    """The page: every block in order, figures drawn by the one plotly.js in the head (in it with
    `inline_js`, else beside the page, written there once)."""
    script = ""
    if any(isinstance(b, Figure) and b.fig is not None for b in blocks):
        js = out_dir / f"plotly-{plotly.__version__}.min.js"
        if not inline_js and not js.exists():
            tmp = js.with_suffix(".tmp")
            tmp.write_text(get_plotlyjs(), encoding="utf-8")
            tmp.replace(js)
        script = f"<script>{get_plotlyjs()}</script>" if inline_js else f"<script src='{js.name}'></script>"
    parts = [f"<h1>{inline(title)}</h1>", *(render(b, md=False) for b in blocks)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>{script}</head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write(out_dir: Path, title: str, blocks: list[Block], inline_js: bool = False) -> tuple[Path, Path]:
    """Write report.md and report.html into `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(title, blocks), encoding="utf-8")
    page.write_text(to_html(title, blocks, out_dir, inline_js), encoding="utf-8")
    return md, page
