"""A report as a list of blocks, written twice from the same blocks: Markdown (to quote) and one
HTML page (to explore), so the two never disagree and the page shows no Markdown syntax.

The page is a complete document that opens from disk with no server and no network. Its
figures share one copy of plotly.js, written once beside it (`plotly-<version>.min.js`, about
4.8 MB) rather than embedded, so `report.html` itself stays small; `inline=True` embeds that one
copy instead, for a single file to send around."""

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
    quote: bool = False


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


def left_out_line(f: Figure) -> str:
    """The one line that stands in for a figure left out, in both formats."""
    return f"Left out: {f.title}: {f.left_out}."


def to_markdown(title: str, blocks: list[Block]) -> str:
    """The report as Markdown: tables to paste, figures named with a pointer to the page."""
    lines = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [("> " if b.quote else "") + b.text, ""]
        elif isinstance(b, Bullets):
            lines += [*(f"- {i}" for i in b.items), ""]
        elif isinstance(b, TableBlock):
            lines += ["| " + " | ".join(b.rows[0]) + " |", "|" + "---|" * len(b.rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in b.rows[1:]] + [""]
        elif b.fig is None:
            lines += [f"*{left_out_line(b)}*", ""]
        else:
            lines += [f"*Figure in [report.html](report.html): {b.title}.*", ""]
    return "\n".join(lines)


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


def plotly_js(out_dir: Path) -> str:
    """Write the shared plotly.js beside the page once; return its file name."""
    name = f"plotly-{plotly.__version__}.min.js"
    path = out_dir / name
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(get_plotlyjs(), encoding="utf-8")
        tmp.replace(path)
    return name


def to_html(title: str, blocks: list[Block], out_dir: Path, inline_js: bool = False) -> str:
    """The page: every block in order, figures drawn by the one plotly.js in the head."""
    figures = any(isinstance(b, Figure) and b.fig is not None for b in blocks)
    script = ""
    if figures:
        script = (f"<script>{get_plotlyjs()}</script>" if inline_js
                  else f"<script src='{plotly_js(out_dir)}'></script>")
    parts = [f"<h1>{inline(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            tag = "blockquote" if b.quote else "p"
            parts.append(f"<{tag}>{inline(b.text)}</{tag}>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, TableBlock):
            head = "".join(f"<th>{inline(x)}</th>" for x in b.rows[0])
            body = "".join("<tr>" + "".join(f"<td>{inline(x)}</td>" for x in r) + "</tr>" for r in b.rows[1:])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif b.fig is None:
            parts.append(f"<p class='left-out'>{inline(left_out_line(b))}</p>")
        else:
            parts.append(f"<h3>{inline(b.title)}</h3>")
            parts.append(b.fig.to_html(full_html=False, include_plotlyjs=False))
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
