"""The README stays one screen-full, every relative link in it and in docs/ resolves, the generated
layout page covers the whole source tree, and (slow) the docs site builds in strict mode."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def hooks():
    """docs/hooks.py, loaded from its file as mkdocs loads it (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mhtrain_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, outside code blocks, without their #anchor."""
    text = FENCE.sub("", page.read_text())
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t.split("#")[0] for t in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#") and t.split("#")[0]]


def test_readme_is_one_screen_full():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file(page):
    links = relative_links(page)
    missing = [t for t in links if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_readme_links_into_every_docs_page():
    linked = {(ROOT / t).resolve() for t in relative_links(ROOT / "README.md")}
    pages = {p.resolve() for p in DOCS.glob("*.md")} - {(DOCS / "index.md").resolve()}
    unlinked = sorted(p.name for p in pages - linked)
    assert not unlinked, f"README.md does not say where to read: {unlinked}"


def test_generated_layout_covers_every_module():
    h = hooks()
    page = h.layout_markdown()
    for tree in h.TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            shown = rel.parent.as_posix() + "/" if path.name == "__init__.py" else rel.as_posix()
            assert f"`{shown}`" in page, f"{shown} is missing from the generated layout"


def test_generated_layout_summarises_from_the_docstring(tmp_path):
    pkg = tmp_path / "mhtrain" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "mhtrain" / "__init__.py").write_text('"""The root. More."""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text('"""First sentence, e.g. this\nline. Second sentence."""\nimport nowhere\n')
    h = hooks()
    mods = {m.name: m for m in h.modules("mhtrain", tmp_path)}
    assert mods["mhtrain.sub.mod"].summary == "First sentence, e.g. this line."  # read, not imported
    assert mods["mhtrain.sub"].summary == ""
    assert mods["mhtrain"].summary == "The root."
    assert mods["mhtrain.sub.mod"].api_page == "api/mhtrain/sub/mod.md"
    assert mods["mhtrain.sub"].api_page == "api/mhtrain/sub/index.md"


def test_one_api_page_per_module_in_the_nav():
    h = hooks()
    pages = h.api_pages()
    modules = h.modules(h.API_TREE)
    assert set(pages) == {m.api_page for m in modules}
    assert all(f"::: {m.name}" in pages[m.api_page] for m in modules)

    def uris(item) -> set[str]:
        if isinstance(item, str):
            return {item}
        if isinstance(item, dict):
            return set().union(*(uris(v) for v in item.values()))
        return set().union(*(uris(v) for v in item))

    assert uris(h.api_nav()) == set(pages) | {h.API_NAV}


def test_docs_name_no_module_path_by_hand():
    """Modules are renamed: docs/ reaches them only through generated pages (commands stay)."""
    path = re.compile(r"mhtrain/[\w/]+\.py|(?<!-m )\bmhtrain\.[a-z_]+\.[a-z_.]+")
    found = {p.name: path.findall(p.read_text()) for p in DOCS.glob("*.md")}
    assert not {k: v for k, v in found.items() if v}


@pytest.mark.slow
def test_mkdocs_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed (the `docs` extra; make install has it)")
    site = tmp_path / "site"
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    layout = (site / "layout" / "index.html").read_text()
    for module in hooks().modules("mhtrain"):
        page = site / module.api_page.removesuffix("index.md").removesuffix(".md")
        assert (page / "index.html").exists(), f"no API page for {module.name}"
        assert module.path.removesuffix("__init__.py") in layout, f"{module.path} not on the layout page"
