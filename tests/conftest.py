"""What the book's table of contents lists, for tests/test_structure.py and tests/test_book.py;
and every test starts with no matplotlib figure open.

A test that takes ``toc_page`` runs once per page of ``_toc.yml`` (the root
included); one that takes ``toc_chapter`` once per chapter notebook it lists.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_open_figures():
    """Close every figure after each test: a figure one test leaves open must not fail a later test
    on the same worker that checks its own code closes what it opens (tests/test_knobs.py)."""
    yield
    plt.close("all")


def toc_docnames() -> list[str]:
    """Every ``file:`` of _toc.yml (root first), without extension, in book order."""
    try:
        toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # say which file, not only where in "<unicode string>"
        raise ValueError(f"_toc.yml is not valid YAML (quote a caption that has a colon): {e}") from None
    names = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                names.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(n).with_suffix("")) if Path(n).suffix in (".md", ".ipynb") else n for n in names]


def source_of(docname: str) -> Path:
    """The .ipynb or .md file of a docname (the .ipynb path when neither exists)."""
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{docname}{suffix}"
        if path.exists():
            return path
    return ROOT / f"{docname}.ipynb"


def toc_chapters() -> list[str]:
    """Docnames of the chapters: the pages under chapters/ (all notebooks)."""
    return [d for d in toc_docnames() if d.startswith("chapters/")]


def pytest_generate_tests(metafunc):
    if "toc_page" in metafunc.fixturenames:
        metafunc.parametrize("toc_page", toc_docnames())
    if "toc_chapter" in metafunc.fixturenames:
        metafunc.parametrize("toc_chapter", toc_chapters())
