"""Re-run chapter notebooks top to bottom and save their outputs, as the book shows them.

Runs at the small scale on the CPU with one thread, with progress bars off (a saved ipywidgets
progress bar would make the page load widget JavaScript from the network), and
keeps only the notebook metadata a reader needs.

Usage: python scripts/execute_chapters.py [NOTEBOOK ...]   (default: every chapter)
"""
from __future__ import annotations

import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def execute(path: pathlib.Path) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    elapsed = time.perf_counter() - start
    for key in ("widgets", "jupytext"):
        nb.metadata.pop(key, None)
    nb.metadata["kernelspec"] = KERNELSPEC
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str]) -> int:
    # one thread, as nbval runs them (see conftest.py): the saved numbers do not depend on core count
    os.environ.update(TRICKLIB_SCALE="small", TRICKLIB_DEVICE="cpu", TRICKLIB_PROGRESS="0",
                      OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    paths = [pathlib.Path(a).resolve() for a in argv] or sorted((ROOT / "chapters").rglob("*.ipynb"))
    for path in paths:
        print(f"{path.relative_to(ROOT)}: {execute(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
