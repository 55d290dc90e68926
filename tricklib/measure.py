"""Measuring a trick honestly: repeated seeds, paired differences, calibration.

:func:`compare` runs every variant (baseline and tricks) on the same seeds and
returns a :class:`Comparison` with a tidy table. :meth:`Comparison.paired`
takes the per-seed difference trick − baseline and calls it *clear* only when
an exact sign-flip test and a 95% interval both say so (:class:`Paired`): when
a trick does nothing, at most 5% of comparisons are called clear.
:func:`median_times_ms` times functions against each other (warm medians).
"""
from __future__ import annotations

import functools
import math
import numbers
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from ._checks import check_choice, check_int, check_range, check_tensor
from .harness import History
from .runtime import progress as progress_bar
from .runtime import seed_everything
from .runtime import seeds as default_seeds

RunFn = Callable[[Any, int], Mapping[str, Any]]

#: The two-sided level of every verdict. A difference is called clear only when the exact
#: sign-flip test rejects "no effect" at this level *and* the 95% interval excludes 0.
ALPHA = 0.05
#: Fewest seeds with which the exact sign-flip test can reach ``ALPHA`` (``2 / 2**6 < 0.05``).
MIN_SEEDS_FOR_CLEAR = 6
_EXACT_UP_TO = 16          # enumerate all 2**n sign patterns up to this many seeds
_MONTE_CARLO_DRAWS = 2**16  # random sign patterns beyond it (a valid, slightly conservative p-value)


def sign_flip_p_value(diffs: Sequence[float]) -> float:
    r"""Two-sided p-value of the paired sign-flip (permutation) test of "no effect".

    Under the null hypothesis that the trick changes nothing, trick and baseline are
    exchangeable within a seed, so each paired difference :math:`d_i` is as likely to
    have come out as :math:`-d_i`. The p-value is the share of the :math:`2^n` sign
    patterns :math:`s \in \{-1, 1\}^n` whose mean is at least as far from zero as the
    observed one:

    .. math:: p = \frac{1}{2^n}\,\#\Bigl\{s : \bigl|\tfrac1n\textstyle\sum_i s_i d_i\bigr|
              \ge \bigl|\bar d\bigr|\Bigr\}

    (Fisher 1935; Good, *Permutation Tests*, 2005). It is exact: when the null holds,
    :math:`P(p \le \alpha) \le \alpha` for any distribution of the differences that is
    symmetric about zero. The smallest possible value is :math:`2/2^n`, so 6 seeds are
    needed to reach 0.05. Up to 16 seeds all patterns are enumerated; beyond, 65,536
    random patterns from a fixed generator give :math:`(1 + \#)/(1 + 65536)`, which
    keeps the guarantee.

    Args:
        diffs: the per-seed differences (finite).

    Returns:
        The p-value in (0, 1]; 1.0 for an empty list.
    """
    d = torch.as_tensor([float(x) for x in diffs], dtype=torch.float64)
    if not torch.isfinite(d).all():
        raise ValueError(f"diffs must be finite, got {d.tolist()}")
    n = len(d)
    if n == 0:
        return 1.0
    observed = d.mean().abs()
    # a pattern's mean that equals the observed one up to rounding counts as "as extreme"
    tol = 1e-12 * float(d.abs().max()) + 1e-300
    if n <= _EXACT_UP_TO:
        hits = 0
        bits = torch.arange(n, dtype=torch.int64)
        chunk = 2**16
        for start in range(0, 2**n, chunk):
            codes = torch.arange(start, min(start + chunk, 2**n), dtype=torch.int64)
            signs = 1.0 - 2.0 * ((codes[:, None] >> bits) & 1).to(torch.float64)
            hits += int(((signs @ d).abs() / n >= observed - tol).sum())
        return hits / 2**n
    g = torch.Generator().manual_seed(0)
    signs = 1.0 - 2.0 * torch.randint(0, 2, (_MONTE_CARLO_DRAWS, n), generator=g).to(torch.float64)
    hits = int(((signs @ d).abs() / n >= observed - tol).sum())
    return (1 + hits) / (1 + _MONTE_CARLO_DRAWS)


@dataclass(frozen=True)
class Paired:
    r"""Per-seed differences ``trick − baseline`` of one metric, and the verdict on them.

    A difference is **clear** when both of these hold at the 5% level:

    - the exact sign-flip test (:func:`sign_flip_p_value`) rejects "no effect", and
    - the 95% Student-t interval of the mean difference,
      :math:`\bar d \pm t_{0.975,\,n-1}\, s_d/\sqrt n`, excludes zero.

    The first bounds the false-positive rate: when the trick does nothing, at most 5% of
    comparisons are called clear, whatever the (symmetric) distribution of the differences.
    It needs at least 6 seeds (:data:`MIN_SEEDS_FOR_CLEAR`); with fewer, no difference is
    called clear. The second keeps the words and the printed interval in agreement: a clear
    difference always has an interval off zero. The converse need not hold (with six seeds the
    sign-flip test needs about all six to agree); :attr:`interval_only` flags that case and the tables say so.
    ``tests/test_core.py`` simulates null comparisons and checks both properties.

    Attributes:
        metric, baseline, trick: what is compared (used in :meth:`verdict`).
        diffs: one difference per seed, in seed order.
        better: ``"higher"``, ``"lower"`` or ``None``: which direction of ``metric`` is an
            improvement; the verdict then says "better"/"worse" instead of "higher"/"lower".
    """

    metric: str
    baseline: str
    trick: str
    diffs: tuple[float, ...]
    better: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "diffs", tuple(float(d) for d in self.diffs))
        if not self.diffs:
            raise ValueError(f"no paired differences for {self.metric!r} ({self.trick} − {self.baseline})")
        check_choice("better", self.better, ("higher", "lower", None))

    @property
    def n(self) -> int:
        """Number of seeds."""
        return len(self.diffs)

    @property
    def finite(self) -> bool:
        """False when some seed's difference is NaN or infinite (e.g. a run diverged)."""
        return all(math.isfinite(d) for d in self.diffs)

    @property
    def mean(self) -> float:
        """Mean difference over seeds (NaN if any seed's difference is not finite)."""
        return statistics.fmean(self.diffs) if self.finite else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation of the differences (0 for one seed)."""
        if not self.finite:
            return math.nan
        return statistics.stdev(self.diffs) if self.n > 1 else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        """95% Student-t interval of the mean difference (NaN with one seed or a non-finite difference)."""
        if self.n < 2 or not self.finite:
            return (math.nan, math.nan)
        half = float(stats.t.ppf(1 - ALPHA / 2, self.n - 1)) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)

    @functools.cached_property
    def p_value(self) -> float:
        """Two-sided exact sign-flip p-value (:func:`sign_flip_p_value`); NaN if a difference is not finite."""
        return sign_flip_p_value(self.diffs) if self.finite else math.nan

    @property
    def clear(self) -> bool:
        """True when the difference is clear at the 5% level (see the class docstring)."""
        if not self.finite or self.n < MIN_SEEDS_FOR_CLEAR:
            return False
        lo, hi = self.ci
        return self.p_value <= ALPHA and (lo > 0 or hi < 0)

    @property
    def direction(self) -> int:
        """+1 when clearly higher, −1 when clearly lower, 0 when not clear."""
        return 0 if not self.clear else (1 if self.mean > 0 else -1)

    def within(self, margin: float) -> bool:
        """True when the whole 95% interval lies inside ``(-margin, +margin)``: the seeds rule out
        a difference as large as ``margin`` (an equivalence claim, which more seeds only make easier).

        Args:
            margin: the smallest difference that would matter, in the units of the metric, ``> 0``.
        """
        check_range("margin", margin, 0.0, low_open=True)
        lo, hi = self.ci
        return bool(-margin < lo and hi < margin)

    @property
    def interval_only(self) -> bool:
        """True when the 95% interval excludes zero but the sign-flip test does not reject "no effect"
        (e.g. five of six seeds agree): not clear, and the tables say why, so that an interval off
        zero beside "no clear difference" does not read as a contradiction."""
        if not self.finite or self.n < MIN_SEEDS_FOR_CLEAR:
            return False
        lo, hi = self.ci
        return (lo > 0 or hi < 0) and self.p_value > ALPHA

    @property
    def word(self) -> str:
        """The verdict in words, one of "clearly higher/lower" (or "better/worse"), "no clear difference", "undefined"."""
        if not self.finite:
            return "undefined"
        if not self.direction:
            return "no clear difference"
        up = self.direction > 0
        if self.better is None:
            return "clearly higher" if up else "clearly lower"
        return "clearly better" if up == (self.better == "higher") else "clearly worse"

    def summary(self, digits: int = 3) -> str:
        """The mean difference and the verdict in words, for a table cell: ``+0.021 (clearly better)``.

        A mean that rounds to zero is shown without a sign (``0.000``); a difference that is not
        finite on some seed reads ``undefined``.

        Args:
            digits: decimals shown for the mean difference.
        """
        return "undefined" if not self.finite else f"{_signed(self.mean, digits)} ({self.word})"

    def verdict(self, digits: int = 3) -> str:
        """One sentence, e.g. ``val_acc, smoothing − baseline: clearly higher, +0.021 (95% CI +0.012 … +0.030, 6 seeds)``.

        Args:
            digits: decimals shown for the mean difference and the interval.
        """
        what = f"{self.metric}, {self.trick} − {self.baseline}"
        if not self.finite:
            bad = sum(not math.isfinite(d) for d in self.diffs)
            return f"{what}: undefined (not finite on {bad} of {self.n} seeds)"
        if self.n < 2:
            return f"{what}: {self.word}, {_signed(self.mean, digits)} (1 seed: no interval)"
        lo, hi = self.ci
        few = f"; too few to call any difference clear (need ≥ {MIN_SEEDS_FOR_CLEAR})" \
            if self.n < MIN_SEEDS_FOR_CLEAR else ""
        if self.interval_only:
            few = f"; the sign-flip test does not reject no effect, p = {self.p_value:.2f}"
        return (f"{what}: {self.word}, {_signed(self.mean, digits)} "
                f"(95% CI {_signed(lo, digits)} … {_signed(hi, digits)}, {self.n} seeds{few})")


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
        """``mean ± std`` over seeds per variant (rows) and metric (columns), as strings.

        Args:
            metrics: the metrics to show, in this order; default all of them.
            digits: decimals shown for mean and std (the sample standard deviation, 0 for one seed).
        """
        metrics = list(metrics) if metrics is not None else self.metrics
        grouped = self.table.groupby("variant", sort=False)[metrics]
        mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
        out = mean.copy().astype(object)
        for m in metrics:
            out[m] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in zip(mean[m], std[m])]
        out.index.name = None
        return out

    def values(self, metric: str, variant: str) -> list[float]:
        """The per-seed values of ``metric`` for ``variant``, in seed order.

        Args:
            metric: a metric (column) of :attr:`table`.
            variant: a variant of this comparison.
        """
        if metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r}; have {self.metrics}")
        rows = self.table[self.table["variant"] == variant].sort_values("seed")
        if rows.empty:
            raise ValueError(f"unknown variant {variant!r}; have {self.variants}")
        return rows[metric].tolist()

    def with_variant(self, name: str, values: Mapping[str, Sequence[float]]) -> Comparison:
        """A copy with one more variant computed from the others, e.g. an ensemble of the runs.

        Args:
            name: the new variant's name (not already a variant).
            values: ``{metric: [value per seed, in seed order]}`` for some or all metrics.

        Returns:
            A new :class:`Comparison`; histories and extras are shared with this one.
        """
        if name in self.variants:
            raise ValueError(f"{name!r} is already a variant")
        seeds = sorted(set(self.table["seed"]))
        unknown = sorted(set(values) - set(self.metrics))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; have {self.metrics}")
        for metric, vals in values.items():
            if len(vals) != len(seeds):
                raise ValueError(f"{metric!r} needs one value per seed ({len(seeds)}), got {len(vals)}")
        rows = pd.DataFrame({"variant": name, "seed": seeds, **{m: list(map(float, v)) for m, v in values.items()}})
        return Comparison(pd.concat([self.table, rows], ignore_index=True), self.histories, self.extras)

    def paired(self, metric: str, baseline: str, trick: str, *, better: str | None = None) -> Paired:
        """Per-seed difference ``trick − baseline`` of ``metric`` (same seeds, same data), with its verdict.

        Args:
            metric, baseline, trick: a metric and two variants of this comparison.
            better: ``"higher"`` or ``"lower"`` if that direction of ``metric`` is an
                improvement (the verdict then says "better"/"worse"); ``None`` says
                "higher"/"lower".
        """
        base, new = self.values(metric, baseline), self.values(metric, trick)
        return Paired(metric, baseline, trick, tuple(b - a for a, b in zip(base, new)), better)


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign and ``digits`` decimals, negative with a typographic minus
    (``"−0.012"``, as the book's text writes it); a value that rounds to zero has no sign
    (``"0.000"``, not ``"-0.000"`` or ``"+0.000"``)."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text.replace("-", "\u2212")


def verdicts(pairs: Iterable[Paired], digits: int = 3) -> pd.DataFrame:
    """A table of paired comparisons, one row each (indexed by "trick − baseline"): metric, mean
    difference, 95% interval, seeds and the verdict in words.

    Shown as the last expression of a notebook cell it renders as an HTML table.

    Args:
        pairs: :class:`Paired` objects, e.g. from :meth:`Comparison.paired`.
        digits: decimals shown for the mean difference and the interval.
    """
    rows, index = [], []
    for p in pairs:
        if not isinstance(p, Paired):
            raise TypeError(f"verdicts takes Paired objects (Comparison.paired(...)), got {type(p).__name__}")
        lo, hi = p.ci
        verdict = p.word if p.n >= MIN_SEEDS_FOR_CLEAR or not p.finite else f"{p.word} (too few seeds)"
        if p.interval_only:
            verdict = f"{p.word} (sign test p = {p.p_value:.2f})"
        index.append(f"{p.trick} − {p.baseline}")
        # no-break spaces keep an interval on one line in an HTML table
        rows.append({"metric": p.metric, "mean difference": _signed(p.mean, digits),
                     "95% interval": "—" if math.isnan(lo) else
                     f"{_signed(lo, digits)}\u00a0…\u00a0{_signed(hi, digits)}",
                     "seeds": p.n, "verdict": verdict})
    return pd.DataFrame(rows, index=index, columns=["metric", "mean difference", "95% interval", "seeds", "verdict"])


def check_claims(claims: Mapping[str, object], *, title: str = "Checked on every build") -> None:
    """Check every claim a chapter's text makes about its numbers, and show them as a list.

    Each claim is a sentence and the expression that makes it true. All are
    evaluated; the list is displayed (rendered Markdown in a notebook, text
    elsewhere) with ✓ or ✗, and an ``AssertionError`` naming every failed claim is
    raised if any is false. In the book the cell's code is hidden and the list
    stays: the reader sees the claims, the notebook keeps the checks. A claim must
    hold on the saved seeds, on held-out seeds (``TRICKLIB_SEEDS``), under another
    CPU's rounding and at the full scale (see *How we measure*).

    Args:
        claims: ``{sentence: truth}``; the truth is anything with an unambiguous
            ``bool`` (a Python or NumPy bool, a one-element tensor).
        title: the list's heading.
    """
    if not claims:
        raise ValueError("claims is empty: a chapter checks at least one claim")
    results = {}
    for text, value in claims.items():
        try:
            results[text] = bool(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"claim {text!r} is not a single truth value ({type(value).__name__}): {e}") from None
    lines = [f"- {'✓' if ok else '✗ **FAILED:**'} {text}" for text, ok in results.items()]
    text = f"**{title}:**\n\n" + "\n".join(lines)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython ships with the book's requirements
        shell = None
    if shell is not None:
        display(Markdown(text))
    else:
        print(text)
    failed = [t for t, ok in results.items() if not ok]
    if failed:
        raise AssertionError("claims that do not hold: " + "; ".join(failed))


def _is_scalar(value: object) -> bool:
    """A plain, NumPy or 0-d tensor real number (these go in the table; anything else in ``extras``)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_complex()
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and np.isrealobj(value) and value.dtype.kind in "biuf"
    return isinstance(value, (numbers.Real, np.bool_))


def compare(run: RunFn, variants: Mapping[str, Any], seeds: Sequence[int] | None = None, *,
            progress: bool = True) -> Comparison:
    """Run every variant on every seed and collect the results.

    Args:
        run: ``run(config, seed) -> {metric: number, ...}`` (Python, NumPy or 0-d
            tensor numbers all count as metrics); it may also return a
            :class:`~tricklib.harness.History` under ``"history"`` and other
            non-scalar values, kept in :attr:`Comparison.extras`.
            :func:`~tricklib.runtime.seed_everything` is called with ``seed``
            before each run, so the baseline and the trick see the same
            initial weights and data order for a given seed.
        variants: ``{name: config}``: the baseline and the tricks to compare.
        seeds: the seeds (at least one); default :func:`tricklib.runtime.seeds` (6 at the
            small scale, 10 at full, or those of ``TRICKLIB_SEEDS``).
        progress: show a ``tqdm`` bar over runs (see :func:`tricklib.runtime.progress`).

    Returns:
        A :class:`Comparison`.
    """
    if not variants:
        raise ValueError("variants must name at least one configuration")
    seeds = default_seeds() if seeds is None else list(seeds)
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
        scalars = {k: float(v) for k, v in result.items() if _is_scalar(v)}
        extras.setdefault(name, []).append({k: v for k, v in result.items() if k not in scalars})
        rows.append({"variant": name, "seed": seed, **scalars})
    return Comparison(pd.DataFrame(rows), histories, extras)


@dataclass
class Sweep:
    """Results of :func:`sweep`: the paired effect ``trick − baseline`` at each value of one variable.

    Attributes:
        variable: what was swept, in words with its unit (an axis label).
        values: the values, in sweep order.
        paired: one :class:`Paired` per value (same order).
        comparisons: the full :class:`Comparison` per value (same order).
    """

    variable: str
    values: list[Any]
    paired: list[Paired]
    comparisons: list[Comparison]

    def table(self, digits: int = 3) -> pd.DataFrame:
        """:func:`verdicts` with the swept value as the index.

        Args:
            digits: decimals shown for the mean difference and the interval.
        """
        out = verdicts(self.paired, digits)
        out.index = pd.Index([str(v) for v in self.values], name=self.variable)
        return out

    def where(self, direction: int) -> list[Any]:
        """The values at which the effect is clearly positive (``1``), clearly negative (``-1``) or not clear (``0``).

        Args:
            direction: ``1``, ``-1`` or ``0``, compared with each :attr:`Paired.direction`
                (the sign of ``trick − baseline``, whichever direction is better).
        """
        check_choice("direction", direction, (-1, 0, 1))
        return [v for v, p in zip(self.values, self.paired) if p.direction == direction]


def sweep(run: Callable[[Any, Any, int], Mapping[str, Any]], values: Sequence[Any], variants: Mapping[str, Any], *,
          metric: str, baseline: str, trick: str, variable: str, seeds: Sequence[int] | None = None,
          better: str | None = None, progress: bool = True) -> Sweep:
    """When does the trick pay off? Run :func:`compare` at each value of one variable.

    For each ``value`` in ``values`` every variant runs on the same seeds, through
    ``run(value, config, seed)``, and the paired difference ``trick − baseline`` of
    ``metric`` is taken with its verdict (:class:`Paired`). Draw the result with
    :func:`tricklib.viz.payoff`.

    Args:
        run: ``run(value, config, seed) -> {metric: number, ...}``.
        values: the values of the variable that turns the effect on (noise level,
            imbalance, depth, batch size …).
        variants: ``{name: config}``, at least ``baseline`` and ``trick``.
        metric, baseline, trick: what to pair.
        variable: the variable in words with its unit (used as the axis label).
        seeds: as in :func:`compare`.
        better: ``"higher"`` or ``"lower"``: which direction of ``metric`` is an improvement.
        progress: a progress bar over values.

    Returns:
        A :class:`Sweep`.
    """
    values = list(values)
    if not values:
        raise ValueError("values must name at least one value of the swept variable")
    for name in (baseline, trick):
        if name not in variants:
            raise ValueError(f"{name!r} is not one of the variants {list(variants)}")
    comparisons = []
    for value in (progress_bar(values, desc=variable) if progress else values):
        comparisons.append(compare(lambda config, seed, value=value: run(value, config, seed), variants, seeds,
                                   progress=False))
    paired = [c.paired(metric, baseline, trick, better=better) for c in comparisons]
    return Sweep(variable, values, paired, comparisons)


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

    Args:
        probs: ``Tensor[N, C]`` predicted probabilities (rows sum to 1), ``N >= 1``.
        labels: ``Tensor[N]`` int64 true classes.
        n_bins: number of equal-width confidence bins on [0, 1], as in :func:`calibration_bins`.

    Returns:
        The ECE, a float in [0, 1].
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

    Args:
        functions: callables taking no arguments (wrap arguments with a ``lambda``).
        rounds: rounds of turns over the functions, ``>= 1``.
        repeats: back-to-back timed calls of each function per round, ``>= 1``.
        warmup: untimed calls of each function before the first round, ``>= 0``.
        device: the device the functions run on; ``"cuda"`` (or a CUDA device)
            synchronises around each call; default the CPU.

    Returns:
        One median time in milliseconds per function, in the order of ``functions``.
    """
    functions = list(functions)
    rounds, repeats = check_int("rounds", rounds, 1), check_int("repeats", repeats, 1)
    warmup = check_int("warmup", warmup, 0)
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
