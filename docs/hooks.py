"""The docs site's generated pages, made from the source tree at build time (an mkdocs hook).

The layout page lists every package and module under mhtrain/, studies/ and bench/ with the first
sentence of its module docstring, read with `ast` (nothing is imported). The API reference is one
mkdocstrings page per package and module of mhtrain/, added to the build and to the navigation
here, so a module that is added, moved or renamed needs no edit under docs/.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
TREES = ("mhtrain", "studies", "bench")  # the trees the layout page lists
API_TREE = "mhtrain"  # the tree the API reference documents
API_NAV = "api.md"  # the nav entry the generated API pages are hung under
MARKERS = {"layout.md": "<!-- generated: layout -->", "api.md": "<!-- generated: api -->"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`(])")


class Module(NamedTuple):
    """One Python file of a tree: its path from the root, dotted name, and docstring summary."""

    path: str  # "mhtrain/study/race.py"
    name: str  # "mhtrain.study.race"; a package is named by its folder ("mhtrain.study")
    package: bool  # an __init__.py
    summary: str  # the first sentence of the module docstring, "" when it has none

    @property
    def api_page(self) -> str:
        """This module's API page, relative to the docs folder."""
        parts = self.name.split(".")
        return "/".join(["api", *parts, "index.md"] if self.package else ["api", *parts]) + (
            "" if self.package else ".md")


def summary(source: str) -> str:
    """The first sentence of a module's docstring (its first paragraph, joined into one line)."""
    doc = ast.get_docstring(ast.parse(source)) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return SENTENCE_END.split(paragraph, maxsplit=1)[0]


def modules(tree: str, root: Path = ROOT) -> list[Module]:
    """Every .py file under root/tree, packages before their modules, in path order."""
    found = []
    for path in sorted((root / tree).rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith((".", "__pycache__")) for part in rel.parts):
            continue
        package = path.name == "__init__.py"
        parts = list(rel.parent.parts) if package else [*rel.parent.parts, path.stem]
        found.append(Module(rel.as_posix(), ".".join(parts), package, summary(path.read_text())))
    return sorted(found, key=lambda m: (m.name.split("."), not m.package))


def layout_markdown(root: Path = ROOT, link_api: bool = True) -> str:
    """The layout page's generated part: one nested list per tree, each entry with its summary;
    mhtrain's entries link to their API pages."""
    lines = []
    for tree in TREES:
        lines += [f"## `{tree}/`", ""]
        for m in modules(tree, root):
            shown = m.path.removesuffix("/__init__.py") + "/" if m.package else m.path
            label = f"[`{shown}`]({m.api_page})" if link_api and tree == API_TREE else f"`{shown}`"
            if m.name == tree:  # the tree's own package: its summary under the heading
                lines += [f"{label}: {m.summary}" if m.summary else label, ""]
                continue
            indent = "    " * (m.name.count(".") - 1)
            lines.append(f"{indent}- {label}" + (f": {m.summary}" if m.summary else ""))
        lines.append("")
    return "\n".join(lines)


def api_markdown(root: Path = ROOT) -> str:
    """The API index's generated part: every package and module of mhtrain with its summary."""
    lines = []
    for m in modules(API_TREE, root):
        indent = "    " * m.name.count(".")
        lines.append(f"{indent}- [`{m.name}`]({m.api_page})" + (f": {m.summary}" if m.summary else ""))
    return "\n".join(lines) + "\n"


def api_pages(root: Path = ROOT) -> dict[str, str]:
    """One mkdocstrings page per package and module: docs-relative path -> Markdown."""
    pages = {}
    for m in modules(API_TREE, root):
        options = "\n    options:\n      members: false" if m.package else ""
        pages[m.api_page] = f"# `{m.name}`\n\n::: {m.name}{options}\n"
    return pages


def api_nav(root: Path = ROOT) -> list:
    """The API reference's navigation: the index, then one section per package."""
    def section(package: str) -> list:
        items: list = []
        for m in modules(API_TREE, root):
            parent = m.name.rsplit(".", 1)[0] if "." in m.name else ""
            if m.package and m.name == package:
                items.insert(0, {"Overview": m.api_page})
            elif m.package and parent == package:
                items.append({m.name.rsplit(".", 1)[-1]: section(m.name)})
            elif not m.package and parent == package:
                items.append({m.name.rsplit(".", 1)[-1]: m.api_page})
        return items

    return [API_NAV, {API_TREE: section(API_TREE)}]


# ---- mkdocs events ----

def on_config(config, **_):
    """Hang the generated API pages under the nav entry that names api.md."""
    nav = config.get("nav") or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and list(item.values()) == [API_NAV]:
            nav[i] = {next(iter(item)): api_nav()}
    return config


def on_files(files, config, **_):
    """Add one generated page per API module to the build."""
    from mkdocs.structure.files import File

    for uri, content in api_pages().items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, **_):
    """Fill the layout page and the API index from the tree."""
    marker = MARKERS.get(page.file.src_uri)
    if marker is None:
        return markdown
    generated = layout_markdown() if page.file.src_uri == "layout.md" else api_markdown()
    return markdown.replace(marker, generated)
