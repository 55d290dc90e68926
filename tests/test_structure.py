"""The book's sources follow the chapter guide (CHAPTER_GUIDE.md): static checks, nothing is executed.

Every page of _toc.yml exists and every chapter notebook is in _toc.yml; each
chapter notebook has the guided shape (sections, the one-line diff, a checked
output, a figure), runs on Colab (the guarded install of tricklib from the
repository that _config.yml names) and was saved from one clean run (in-order
execution counts, no errors, no stderr, no widget state, no huge outputs).
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from conftest import ROOT, source_of, toc_chapters, toc_docnames

SECTIONS = ["one line", "why it works", "see it", "measure it", "in tricklib", "pitfall", "exercise", "reference"]
MAX_OUTPUT_BYTES = 2_000_000
# absolute paths of some machine: a reader's copy should not show where it was built
MACHINE_PATH = re.compile(r"(?<![\w:/.])/(?:tmp|root|home|work|mnt|Users|opt|private)/[\w.-]+")
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def load(docname: str) -> dict:
    path = source_of(docname)
    if not path.exists():
        pytest.skip(f"{docname} does not exist yet (test_toc_page_exists fails for it)")
    assert path.suffix == ".ipynb", f"chapter {docname} must be a notebook, found {path.name}"
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def markdown(nb: dict) -> str:
    return "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def outputs(nb: dict):
    for i, cell in enumerate(code_cells(nb)):
        for out in cell.get("outputs", []):
            yield i, out


# ---- the table of contents ------------------------------------------------------------

def test_toc_page_exists(toc_page):
    path = source_of(toc_page)
    assert path.exists(), f"_toc.yml lists {toc_page}, but neither {toc_page}.ipynb nor .md exists"


def test_toc_lists_chapters_once():
    names = toc_docnames()
    assert toc_chapters(), "_toc.yml lists no chapter"
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"listed twice in _toc.yml: {sorted(dupes)}"


def test_every_chapter_notebook_is_in_the_toc():
    listed = set(toc_docnames())
    notebooks = [p for p in (ROOT / "chapters").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
    missing = sorted(str(p.relative_to(ROOT).with_suffix("")) for p in notebooks
                     if str(p.relative_to(ROOT).with_suffix("")) not in listed)
    assert not missing, f"notebooks not in _toc.yml (the book would not show them): {missing}"


def test_config_names_the_repository_and_colab():
    url = CONFIG["repository"]["url"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_api_page_documents_every_module():
    api = (ROOT / "book" / "api.md").read_text(encoding="utf-8")
    modules = sorted(p.stem for p in (ROOT / "tricklib").glob("*.py") if not p.stem.startswith("_"))
    missing = [m for m in modules if f"automodule:: tricklib.{m}\n" not in api]
    assert not missing, (f"book/api.md has no automodule for {missing}: chapters cannot link their "
                         "functions ({py:func}`~tricklib.<module>.<name>`)")


# ---- each chapter -----------------------------------------------------------------------

def test_first_code_cell_installs_tricklib_on_colab(toc_chapter):
    nb = load(toc_chapter)
    cells = code_cells(nb)
    assert cells, "no code cell"
    first = source(cells[0])
    pattern = re.compile(
        r"^try:\s*\n\s+import tricklib\s*\n"
        r"except ImportError:.*\n"
        r"\s+%pip install -q [\"']tricklib @ git\+(?P<url>[^\"'@\s]+)(?P<ref>@[\w./-]+)?[\"']\s*\n"
        r"\s+import tricklib\s*$",
        re.MULTILINE)
    m = pattern.search(first)
    assert m, ("the first code cell must start with the guarded install:\n"
               "try:\n    import tricklib\nexcept ImportError:  # on Colab: ...\n"
               f'    %pip install -q "tricklib @ git+{CONFIG["repository"]["url"]}"\n    import tricklib\n'
               f"found:\n{first}")
    assert m.group("url").removesuffix(".git") == CONFIG["repository"]["url"], (
        f"installs from {m.group('url')}, but _config.yml's repository.url is {CONFIG['repository']['url']}")


def test_names_its_language(toc_chapter):
    meta = load(toc_chapter).get("metadata", {})
    language = meta.get("kernelspec", {}).get("language") or meta.get("language_info", {}).get("name")
    assert language == "python", (
        "metadata.kernelspec / language_info missing: the book cannot highlight the code "
        "('No source code lexer found'); keep them when converting (jupytext: do not filter them out)")


def test_title_is_before_to_after(toc_chapter):
    nb = load(toc_chapter)
    first = next((source(c) for c in nb["cells"] if c["cell_type"] == "markdown"), "")
    title = first.lstrip().splitlines()[0] if first.strip() else ""
    assert title.startswith("# ") and "→" in title, f"first line should be '# Before → After', got {title!r}"


def test_has_the_guide_sections(toc_chapter):
    headings = "\n".join(line.lower() for line in markdown(load(toc_chapter)).splitlines()
                         if line.lstrip().startswith("#"))
    missing = [s for s in SECTIONS if s not in headings]
    assert not missing, f"no heading containing {missing}"


def test_shows_the_one_line_as_a_diff(toc_chapter):
    assert "```diff" in markdown(load(toc_chapter)), "no ```diff block showing the one line"


def test_has_a_checked_output(toc_chapter):
    srcs = [source(c) for c in code_cells(load(toc_chapter))]
    assert any("# NBVAL_CHECK_OUTPUT" in s for s in srcs), "no cell marked # NBVAL_CHECK_OUTPUT"


def test_has_a_saved_figure(toc_chapter):
    assert any("image/png" in out.get("data", {}) for _, out in outputs(load(toc_chapter))), \
        "no saved figure (image/png output)"


def test_links_to_the_api_and_cites_from_the_bib(toc_chapter):
    md = markdown(load(toc_chapter))
    assert re.search(r"\{py:(func|class|mod|meth|data)\}`[^`]*tricklib\.", md), \
        "the 'In tricklib' section should link the API page, e.g. {py:func}`tricklib.losses.focal_loss`"
    assert re.search(r"\{footcite(:[tp])?\}`", md), "no {footcite:t}`key` / {footcite:p}`key` citation"
    assert "{footbibliography}" in md, "no ```{footbibliography}``` block under '## References'"


def test_saved_from_one_clean_in_order_run(toc_chapter):
    counts = [c.get("execution_count") for c in code_cells(load(toc_chapter))]
    assert None not in counts, f"{counts.count(None)} code cell(s) not executed"
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts} are not 1..n"


def test_no_errors_or_stderr_saved(toc_chapter):
    bad = []
    for i, out in outputs(load(toc_chapter)):
        if out["output_type"] == "error":
            bad.append(f"code cell {i}: error {out.get('ename')}: {out.get('evalue')}")
        if out["output_type"] == "stream" and out.get("name") == "stderr":
            bad.append(f"code cell {i}: stderr {''.join(out.get('text', ''))[:100]!r}")
    assert not bad, "\n".join(bad)


def test_no_widget_state(toc_chapter):
    nb = load(toc_chapter)
    assert "widgets" not in nb.get("metadata", {}), (
        "the notebook carries ipywidgets state (metadata.widgets), which makes the book load a widget "
        "manager from a CDN; save it without (nbclient/nbconvert: store_widget_state=False)")


def test_outputs_are_small(toc_chapter):
    big = [(i, len(json.dumps(out))) for i, out in outputs(load(toc_chapter))
           if len(json.dumps(out)) > MAX_OUTPUT_BYTES]
    assert not big, f"outputs over {MAX_OUTPUT_BYTES / 1e6:.0f} MB (code cell, bytes): {big}"


def test_no_machine_paths(toc_chapter):
    nb = load(toc_chapter)
    texts = [source(c) for c in nb["cells"]]
    for _, out in outputs(nb):
        texts.append(json.dumps({k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")}))
        texts.append("".join(out.get("text", "")))
    text = DATA_URI.sub("", "\n".join(texts))  # base64 could spell a path by chance
    m = MACHINE_PATH.search(text)
    assert not m, f"an absolute path of the machine it ran on is saved in the notebook: {m.group(0)}"
