"""Run chapters top to bottom at TRICKLIB_SCALE=full (nothing saved) and record how long each took.

    python scripts/run_full_scale.py [NOTEBOOK ...]             # default: every chapter in _toc.yml
    python scripts/run_full_scale.py --write-how-to-run [...]   # also update book/how-to-run.md's table

Each chapter runs in a fresh kernel on this machine's CPU (one thread, as the book's
small-scale runs), with its claims checked (``tricklib.check_claims`` raises when one fails).
Prints one Markdown table row per chapter; with ``--write-how-to-run`` each row replaces
that chapter's row in the table between the ``full-scale-times`` markers of
book/how-to-run.md (other chapters' rows are kept, so one chapter can be re-run after a
change), with the date and the CPU. A background job, not CI: the whole book takes about an hour.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import platform
import re
import sys
import time

import nbformat
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = pathlib.Path(__file__).resolve().parent.parent
HOW_TO_RUN = ROOT / "book" / "how-to-run.md"
BEGIN, END = "<!-- full-scale-times: begin -->", "<!-- full-scale-times: end -->"


def toc_chapters() -> list[pathlib.Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = re.findall(r"file:\s*(chapters/\S+)", yaml.safe_dump(toc))
    return [ROOT / f"{f}.ipynb" for f in files]


def run(path: pathlib.Path) -> tuple[float, str]:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=3600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        outcome = "ran to the end, every claim held"
    except CellExecutionError as e:
        outcome = f"FAILED ({e.ename}: {str(e.evalue)[:80]})"
    return time.perf_counter() - start, outcome


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    unknown = [a for a in argv if a.startswith("-") and a != "--write-how-to-run"]
    if unknown:
        raise SystemExit(f"unknown option(s) {unknown}; see --help")
    write = "--write-how-to-run" in argv
    paths = [pathlib.Path(a).resolve() for a in argv if a != "--write-how-to-run"] or toc_chapters()
    # the kernels import this checkout's tricklib, installed or not
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.update(TRICKLIB_SCALE="full", TRICKLIB_DEVICE="cpu", TRICKLIB_PROGRESS="0",
                      OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = []
    for path in paths:
        seconds, outcome = run(path)
        row = (f"| {path.relative_to(ROOT).with_suffix('')} | {seconds / 60:.1f} min | {outcome} "
               f"| {datetime.date.today().isoformat()}, {cpu_name()} |")
        print(row, flush=True)
        rows.append(row)
        if write:
            write_row(row)
    return 0 if all("FAILED" not in r for r in rows) else 1


def write_row(row: str) -> None:
    """Put ``row`` into book/how-to-run.md's table, replacing the row of the same chapter."""
    text = HOW_TO_RUN.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{HOW_TO_RUN} has no {BEGIN} … {END} block")
    head, rest = text.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    chapter = row.split("|")[1].strip()
    old = {r.split("|")[1].strip(): r for r in block.splitlines() if r.startswith("| chapters/")}
    old[chapter] = row
    order = [str(p.relative_to(ROOT).with_suffix("")) for p in toc_chapters()]
    rows = [old[c] for c in order if c in old]
    table = "\n".join(["One CPU thread, `python scripts/run_full_scale.py --write-how-to-run [chapter ...]`:", "",
                        "| chapter | time at full scale | outcome | measured |", "|---|---|---|---|", *rows])
    HOW_TO_RUN.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
