"""Measuring a trick honestly: repeated seeds, paired differences, calibration.

:func:`compare` runs every variant (baseline and tricks) on the same seeds and
returns a :class:`Comparison` with a tidy table. :meth:`Comparison.paired`
reports the per-seed difference trick − baseline and calls an effect *clear*
only when every seed agrees in sign; otherwise it says *within noise*.
:func:`median_times_ms` times functions against each other (warm medians).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from ._checks import check_tensor
from .harness import History
from .runtime import progress as progress_bar
from .runtime import seed_everything

RunFn = Callable[[Any, int], Mapping[str, Any]]


@dataclass
class Paired:
    """Per-seed differences ``trick − baseline`` of one metric."""

    metric: str
    baseline: str
    trick: str
    diffs: list[float]

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.diffs, dtype=torch.float64).mean())

    @property
    def std(self) -> float:
        return float(torch.tensor(self.diffs, dtype=torch.float64).std()) if len(self.diffs) > 1 else 0.0

    @property
    def clear(self) -> bool:
        """True when every seed's difference is non-zero and all have one sign."""
        return all(d > 0 for d in self.diffs) or all(d < 0 for d in self.diffs)

    def verdict(self, digits: int = 3) -> str:
        """One line such as ``val_acc: label-smoothing − baseline = +0.012 ± 0.004 (3/3 seeds agree: clear)``."""
        agree = max(sum(d > 0 for d in self.diffs), sum(d < 0 for d in self.diffs))
        word = "clear" if self.clear else "within noise"
        return (f"{self.metric}: {self.trick} − {self.baseline} = {self.mean:+.{digits}f} ± "
                f"{self.std:.{digits}f} ({agree}/{len(self.diffs)} seeds agree in sign: {word})")


@dataclass
class Comparison:
    """Results of :func:`compare`.

    Attributes:
        table: tidy ``DataFrame``, one row per (variant, seed), one column per metric.
        histories: ``{variant: [History per seed]}`` for runs that returned one.
        extras: ``{variant: [anything else per seed]}`` (non-scalar results).
    """

    table: pd.DataFrame
    histories: dict[str, list[History]] = field(default_factory=dict)
    extras: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.table["variant"]))

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.table.columns if c not in ("variant", "seed")]

    def summary(self, metrics: Sequence[str] | None = None, digits: int = 3) -> pd.DataFrame:
        """``mean ± std`` over seeds per variant (rows) and metric (columns), as strings."""
        metrics = list(metrics) if metrics is not None else self.metrics
        grouped = self.table.groupby("variant", sort=False)[metrics]
        mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
        out = mean.copy().astype(object)
        for m in metrics:
            out[m] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in zip(mean[m], std[m])]
        out.index.name = None
        return out

    def values(self, metric: str, variant: str) -> list[float]:
        """The per-seed values of ``metric`` for ``variant``, in seed order."""
        if metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r}; have {self.metrics}")
        rows = self.table[self.table["variant"] == variant].sort_values("seed")
        if rows.empty:
            raise ValueError(f"unknown variant {variant!r}; have {self.variants}")
        return rows[metric].tolist()

    def paired(self, metric: str, baseline: str, trick: str) -> Paired:
        """Per-seed difference ``trick − baseline`` of ``metric`` (same seeds, same data)."""
        base, new = self.values(metric, baseline), self.values(metric, trick)
        return Paired(metric, baseline, trick, [b - a for a, b in zip(base, new)])


def compare(run: RunFn, variants: Mapping[str, Any], seeds: Sequence[int] = (0, 1, 2), *,
            progress: bool = True) -> Comparison:
    """Run every variant on every seed and collect the results.

    Args:
        run: ``run(config, seed) -> {metric: float, ...}``; it may also return a
            :class:`~tricklib.harness.History` under ``"history"`` and other
            non-scalar values, kept in :attr:`Comparison.extras`.
            :func:`~tricklib.runtime.seed_everything` is called with ``seed``
            before each run, so the baseline and the trick see the same
            initial weights and data order for a given seed.
        variants: ``{name: config}``: the baseline and the tricks to compare.
        seeds: the seeds (at least one).
        progress: show a ``tqdm`` bar over runs (see :func:`tricklib.runtime.progress`).

    Returns:
        A :class:`Comparison`.
    """
    if not variants:
        raise ValueError("variants must name at least one configuration")
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}")
    jobs = [(name, config, seed) for name, config in variants.items() for seed in seeds]
    rows, histories, extras = [], {}, {}
    for name, config, seed in (progress_bar(jobs, desc="runs") if progress else jobs):
        seed_everything(seed)
        result = dict(run(config, seed))
        history = result.pop("history", None)
        if history is not None:
            histories.setdefault(name, []).append(history)
        scalars = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
        extras.setdefault(name, []).append({k: v for k, v in result.items() if k not in scalars})
        rows.append({"variant": name, "seed": seed, **scalars})
    return Comparison(pd.DataFrame(rows), histories, extras)


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, torch.Tensor]:
    """Bin predictions by confidence for a reliability diagram.

    Args:
        probs: ``Tensor[N, C]`` predicted probabilities (rows sum to 1).
        labels: ``Tensor[N]`` int64 true classes.
        n_bins: equal-width confidence bins on [0, 1].

    Returns:
        ``{"confidence", "accuracy", "count"}``, each ``Tensor[n_bins]`` (mean
        confidence and accuracy per bin; 0 where a bin is empty), and ``"edges"``.
    """
    check_tensor("probs", probs, ndim=2, floating=True)
    check_tensor("labels", labels, ndim=1)
    if len(probs) != len(labels):
        raise ValueError(f"probs and labels must have the same length, got {len(probs)} and {len(labels)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).to(probs.dtype)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype)
    # bins are (lo, hi]; confidence is at least 1/C > 0, so the first bin's open lower edge loses nothing
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).to(probs.dtype)
    safe = count.clamp(min=1)
    return {"confidence": torch.bincount(idx, conf, minlength=n_bins) / safe,
            "accuracy": torch.bincount(idx, correct, minlength=n_bins) / safe,
            "count": count, "edges": edges}


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    r"""Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

    .. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|

    over ``n_bins`` equal-width bins of the top-class confidence. Checked in the
    tests against a direct loop over bins.
    """
    bins = calibration_bins(probs, labels, n_bins)
    if len(labels) == 0:
        raise ValueError("ECE of an empty set is undefined")
    gap = (bins["accuracy"] - bins["confidence"]).abs()
    return float((bins["count"] * gap).sum() / len(labels))


def median_times_ms(functions: Sequence[Callable[[], object]], *, rounds: int = 5, repeats: int = 20,
                    warmup: int = 3, device: torch.device | str | None = None) -> list[float]:
    """Warm median running time of each function, in milliseconds.

    Each function is called ``warmup`` times first (compilation, caches), then ``repeats``
    times back to back, in ``rounds`` rounds that take turns, so that a machine busy with
    other work slows every function alike; the result is the median of the
    ``rounds * repeats`` samples. With torch on one CPU thread, the clock is the calling
    thread's CPU time (time spent waiting for a core does not count); otherwise it is
    wall-clock time, with CUDA synchronised before and after each call on a CUDA ``device``.
    """
    functions = list(functions)
    for name, value in (("rounds", rounds), ("repeats", repeats), ("warmup", warmup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be an integer >= {0 if name == 'warmup' else 1}, got {value!r}")
    if not all(callable(function) for function in functions):
        raise TypeError("functions must be callables taking no arguments")
    device = torch.device("cpu" if device is None else device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter

    def timed(function: Callable[[], object]) -> float:
        synchronise()
        start = clock()
        function()
        synchronise()
        return 1e3 * (clock() - start)

    for function in functions:
        for _ in range(warmup):
            function()
    samples: list[list[float]] = [[] for _ in functions]
    for _ in range(rounds):
        for function, times in zip(functions, samples):
            times.extend(timed(function) for _ in range(repeats))
    return [statistics.median(times) for times in samples]
