"""How the chapters are checked: one CPU thread, numbers compared within a stated tolerance.

**One thread.** The numbers nbval compares were saved by ``scripts/execute_chapters.py``
with one thread: float sums split over a different number of threads round differently,
and after a thousand SGD steps that can move a printed accuracy. Kernels are child
processes and inherit these variables.

**Checked outputs survive a last-digit change.** Another CPU (or ``ATEN_CPU_CAPABILITY=avx2``)
rounds a few float operations differently, and after hundreds of SGD steps a printed
number can move in its last digit. A cell marked ``# NBVAL_CHECK_OUTPUT`` therefore
passes when its text is the saved text with every number *within tolerance*:

- the words and symbols between numbers are equal (runs of spaces count as one space,
  so a column that got one character wider still matches);
- integers (no decimal point) are equal: counts are claims, not measurements;
- a decimal number printed with ``d`` decimals may differ from the saved one by at most
  ``NUMBER_UNITS`` units of its last digit (``NUMBER_UNITS · 10^-d``) or by
  ``NUMBER_RELATIVE`` of its magnitude, whichever is larger.

The claims themselves are guarded by the chapters' ``assert`` statements, which run in
every mode. **Claims-only mode:** with ``TRICKLIB_SEEDS`` set, at ``TRICKLIB_SCALE=full``
or on a GPU the saved outputs were made under other conditions, so no output is
compared at all; every cell still runs and every ``assert`` must hold.
"""
from __future__ import annotations

import math
import os
import re

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

NUMBER_UNITS = 3
NUMBER_RELATIVE = 0.002
# a number: optional sign (ASCII or Unicode minus), digits, optional decimals and exponent
NUMBER = re.compile(r"[-+−]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def claims_only() -> bool:
    """True when the saved outputs cannot be compared (other seeds, scale or device)."""
    return bool(os.environ.get("TRICKLIB_SEEDS", "").strip()) or \
        os.environ.get("TRICKLIB_SCALE", "small") != "small" or \
        os.environ.get("TRICKLIB_DEVICE", "cpu") != "cpu"


def _value(token: str) -> float:
    return float(token.replace("−", "-"))


def _decimals(token: str) -> int | None:
    mantissa = re.split(r"[eE]", token)[0]
    if "." not in mantissa:
        return None if not re.search(r"[eE]", token) else 0
    decimals = len(mantissa.split(".")[1])
    exponent = int(re.split(r"[eE]", token)[1]) if re.search(r"[eE]", token) else 0
    return decimals - exponent


def numbers_close(saved: str, new: str) -> bool:
    """Whether ``new`` is ``saved`` with every number within the tolerance stated above."""
    words_saved, words_new = NUMBER.split(saved), NUMBER.split(new)
    nums_saved, nums_new = NUMBER.findall(saved), NUMBER.findall(new)
    if len(nums_saved) != len(nums_new):
        return False
    if [" ".join(w.split()) for w in words_saved] != [" ".join(w.split()) for w in words_new]:
        return False
    for a, b in zip(nums_saved, nums_new):
        da, db = _decimals(a), _decimals(b)
        if da is None or db is None:
            if a.replace("−", "-") != b.replace("−", "-"):
                return False
            continue
        x, y = _value(a), _value(b)
        if math.isnan(x) or math.isnan(y):
            return False
        allowed = max(NUMBER_UNITS * 10.0 ** -min(da, db), NUMBER_RELATIVE * max(abs(x), abs(y)))
        if abs(x - y) > allowed * (1 + 1e-9):
            return False
    return True


def _text_fields(output: dict) -> list[tuple[dict, str]]:
    if output.get("output_type") == "stream":
        return [(output, "text")]
    data = output.get("data", {})
    return [(data, key) for key in ("text/plain", "text/html", "text/markdown") if key in data]


def _tolerant(compare_outputs):
    def compare(self, test, ref, skip_compare=None):
        if claims_only():
            return True
        from nbval.plugin import coalesce_streams

        test, ref = coalesce_streams(list(test)), coalesce_streams(list(ref))
        for t_out, r_out in zip(test, ref):
            for (t_holder, key), (r_holder, r_key) in zip(_text_fields(t_out), _text_fields(r_out)):
                t_text, r_text = t_holder[key], r_holder[r_key]
                t_text = "".join(t_text) if isinstance(t_text, list) else t_text
                r_text = "".join(r_text) if isinstance(r_text, list) else r_text
                if key == r_key and t_text != r_text and numbers_close(r_text, t_text):
                    t_holder[key] = r_text  # within tolerance: let nbval see the saved text
        return compare_outputs(self, test, ref, skip_compare)

    return compare


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to patch
        return
    if not getattr(IPyNbCell.compare_outputs, "_tricklib_tolerant", False):
        IPyNbCell.compare_outputs = _tolerant(IPyNbCell.compare_outputs)
        IPyNbCell.compare_outputs._tricklib_tolerant = True
