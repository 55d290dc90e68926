"""Shared pictures: curves with their seed spread, schedules, boxes, bars, calibration.

Every function draws on a Matplotlib ``Axes`` (a new one if ``ax`` is None)
and returns it, so chapters compose them into one figure.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from .harness import History
from .measure import Comparison, Sweep, calibration_bins

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]

#: The column of the book is about 690 px wide, so at 100 dpi a figure of 6.9 inches is shown
#: at its natural size, and 9-point text is 12.5 px on the page (the page wants >= 9 px).
BOOK_STYLE = {
    "figure.figsize": (6.8, 3.4),
    "figure.dpi": 100,
    "savefig.dpi": "figure",
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 11,
}


def use_book_style() -> None:
    """Set Matplotlib's defaults for figures drawn for the book's text column (:data:`BOOK_STYLE`).

    Every chapter calls it in its first cell. Figures up to 6.9 inches wide are then shown at
    their natural size, and no default text is smaller than 9 points (12.5 px); a figure
    meant to be wide can be wider, but at more than ~11 inches the page shrinks it below
    60% and its text below 9 px.
    """
    plt.rcParams.update(BOOK_STYLE)


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5, 3.2)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize, layout="constrained")[1]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_curves(histories: Mapping[str, Sequence[History]] | Comparison, key: str = "val_loss", *,
                per: str = "epoch", smooth: int = 1, ax: Axes | None = None, logy: bool = False,
                ylabel: str | None = None) -> Axes:
    """One colour per variant: every seed as a thin line, the mean over seeds bold.

    Args:
        histories: ``{variant: [History per seed]}`` or a :class:`~tricklib.measure.Comparison`.
        key: the recorded series, e.g. ``"val_loss"`` (per epoch) or ``"loss"`` (per step).
        per: ``"epoch"`` or ``"step"``.
        smooth: moving-average window (useful for noisy per-step losses).
        ax: the Matplotlib ``Axes`` to draw on; default a new 5 x 3.2 inch figure.
        logy: logarithmic y axis.
        ylabel: the y-axis label; default ``key``.
    """
    if isinstance(histories, Comparison):
        histories = histories.histories
    if per not in ("epoch", "step"):
        raise ValueError(f"per must be 'epoch' or 'step', got {per!r}")
    ax = _axes(ax)
    for i, (name, runs) in enumerate(histories.items()):
        color = COLORS[i % len(COLORS)]
        # a run that diverged before its first epoch ended has no epoch series: skip it
        series = [s for h in runs if len(s := _smooth(np.asarray(getattr(h, per)[key], dtype=float), smooth))]
        if not series:
            raise ValueError(f"no {per} series {key!r} recorded for variant {name!r}")
        length = min(len(s) for s in series)
        start = 1 + (smooth - 1 if per == "step" else 0)
        for s in series:
            ax.plot(np.arange(start, start + len(s)), s, color=color, lw=0.7, alpha=0.35)
        mean = np.mean([s[:length] for s in series], axis=0)
        ax.plot(np.arange(start, start + length), mean, color=color, lw=2,
                label=f"{name} (mean of {len(series)})")
    ax.set_xlabel(per)
    ax.set_ylabel(ylabel or key)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_schedules(schedules: Mapping[str, Callable[[int], float] | Sequence[float]], steps: int | None = None,
                   *, ax: Axes | None = None, ylabel: str = "learning rate") -> Axes:
    """Learning rate against step for each named schedule (a function of the step, or a list).

    Args:
        schedules: ``{name: schedule}``, each a function of the step (e.g. :func:`~tricklib.schedules.cosine`)
            or a list of values, one per step from step 0.
        steps: the steps ``0 .. steps - 1`` at which the functions are evaluated; needed
            when any schedule is a function (lists are drawn whole).
        ax: the Matplotlib ``Axes`` to draw on; default a new 5 x 3.2 inch figure.
        ylabel: the y-axis label.
    """
    ax = _axes(ax)
    for i, (name, sched) in enumerate(schedules.items()):
        if callable(sched):
            if steps is None:
                raise ValueError("steps is required when schedules are functions")
            values = [sched(t) for t in range(steps)]
        else:
            values = list(sched)
        ax.plot(np.arange(len(values)), values, color=COLORS[i % len(COLORS)], lw=1.8, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def draw_boxes(boxes: torch.Tensor, scores: torch.Tensor | None = None, *, image: torch.Tensor | None = None,
               ax: Axes | None = None, color: str = "tab:red", lw: float = 1.5, label: str | None = None,
               linestyle: str = "-") -> Axes:
    """Draw ``(x1, y1, x2, y2)`` boxes; each box's opacity is its score (0 → invisible, 1 → solid).

    Args:
        boxes: ``Tensor[N, 4]`` in pixel coordinates of ``image`` (if given).
        scores: ``Tensor[N]`` in [0, 1], drawn as opacity; all solid if None.
        image: ``Tensor[C, H, W]`` or ``[H, W]`` shown underneath.
        ax: the Matplotlib ``Axes`` to draw on; default a new 4 x 4 inch figure.
        color: edge colour of every box (any Matplotlib colour).
        lw: line width in points.
        label: one legend entry for all these boxes (call ``ax.legend()`` to show it).
        linestyle: Matplotlib line style, e.g. ``"-"`` or ``"--"``.
    """
    ax = _axes(ax, (4, 4))
    if image is not None:
        img = image.detach().cpu()
        img = img.permute(1, 2, 0).squeeze(-1) if img.dim() == 3 else img
        ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
    alphas = scores.detach().cpu().clamp(0, 1).tolist() if scores is not None else [1.0] * len(boxes)
    for (x1, y1, x2, y2), a in zip(boxes.detach().cpu().tolist(), alphas):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=lw,
                               alpha=a, linestyle=linestyle))
    if label is not None:
        ax.plot([], [], color=color, lw=lw, linestyle=linestyle, label=label)
    if image is None:
        ax.autoscale_view()
        ax.set_aspect("equal")
        if not ax.yaxis_inverted():
            ax.invert_yaxis()
    return ax


def bars(comparison: Comparison, metric: str, *, ax: Axes | None = None, ylabel: str | None = None) -> Axes:
    """Mean ± std per variant as bars with error bars, every seed as a dot.

    Args:
        comparison: a :class:`~tricklib.measure.Comparison` from :func:`~tricklib.measure.compare`.
        metric: the metric (column) to show.
        ax: the Matplotlib ``Axes`` to draw on; default a new 4 x 3 inch figure.
        ylabel: the y-axis label; default ``metric``.
    """
    ax = _axes(ax, (4, 3))
    for i, name in enumerate(comparison.variants):
        vals = np.asarray(comparison.values(metric, name))
        color = COLORS[i % len(COLORS)]
        ax.bar(i, vals.mean(), yerr=vals.std(ddof=1) if len(vals) > 1 else 0, color=color, alpha=0.6,
               capsize=4, edgecolor=color)
        ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(comparison.variants)), comparison.variants, rotation=15)
    ax.set_ylabel(ylabel or metric)
    ax.grid(alpha=0.3, axis="y")
    return ax


def paired_diffs(comparison: Comparison, metric: str, baseline: str, tricks: Sequence[str], *,
                 ax: Axes | None = None) -> Axes:
    """Per-seed differences ``trick − baseline``: one dot per seed, the mean with its 95% interval, zero line.

    A filled marker means the difference is clear (:attr:`~tricklib.measure.Paired.clear`), a hollow one
    that it is not.

    Args:
        comparison: a :class:`~tricklib.measure.Comparison` from :func:`~tricklib.measure.compare`.
        metric: the metric (column) whose differences are shown.
        baseline: the variant subtracted.
        tricks: the variants compared with ``baseline``, one column each, in this order.
        ax: the Matplotlib ``Axes`` to draw on; default a new 4 x 3 inch figure.
    """
    ax = _axes(ax, (4, 3))
    for i, trick in enumerate(tricks):
        p = comparison.paired(metric, baseline, trick)
        color = COLORS[(comparison.variants.index(trick)) % len(COLORS)]
        lo, hi = p.ci
        yerr = None if np.isnan(lo) else [[p.mean - lo], [hi - p.mean]]
        ax.errorbar(i, p.mean, yerr=yerr, fmt="o", color=color, capsize=5, ms=7,
                    mfc=color if p.clear else "white")
        ax.scatter(np.full(len(p.diffs), i + 0.12), p.diffs, color="black", s=10, zorder=3)
    ax.axhline(0, color="gray", lw=1)
    ax.set_xticks(range(len(tricks)), tricks, rotation=15)
    ax.set_ylabel(f"Δ {metric} vs {baseline}\n(mean, 95% interval; dots: seeds)")
    ax.grid(alpha=0.3, axis="y")
    return ax


def payoff(result: Sweep, *, ax: Axes | None = None, ylabel: str | None = None, logx: bool = False,
           annotate: bool = True, words: tuple[str, str] = ("helps", "hurts")) -> Axes:
    """When does it pay off? The paired effect ``trick − baseline`` against the swept variable.

    One point per value: the mean difference with its 95% interval, filled where the
    difference is clear and hollow where it is not; every seed's difference as a small
    dot; a zero line. With ``annotate``, each clear point is labelled with ``words``
    (when the sweep knows which direction is better) or "higher"/"lower".

    Args:
        result: a :class:`~tricklib.measure.Sweep` from :func:`~tricklib.measure.sweep`.
        ax: the Matplotlib ``Axes`` to draw on; default a new 5 x 3.2 inch figure.
        ylabel: default ``"Δ <metric>: <trick> − <baseline>"``.
        logx: logarithmic x axis (numeric values only).
        annotate: write the verdict above or below each clear point.
        words: the labels of a clearly better and a clearly worse point; pass neutral words
            (e.g. ``("fewer dead", "more dead")``) when "better" is a mechanism, not the goal.
    """
    ax = _axes(ax, (5, 3.2))
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in result.values)
    xs = np.asarray(result.values, dtype=float) if numeric else np.arange(len(result.values), dtype=float)
    width = (np.diff(np.log(xs)).min() if logx and len(xs) > 1 else np.diff(xs).min() if len(xs) > 1 else 1.0)
    for x, p in zip(xs, result.paired):
        lo, hi = p.ci
        yerr = None if np.isnan(lo) else [[p.mean - lo], [hi - p.mean]]
        color = {"clearly better": "tab:green", "clearly worse": "tab:red"}.get(p.word, "black" if p.direction else "0.45")
        ax.errorbar(x, p.mean, yerr=yerr, fmt="o", color=color, capsize=4, ms=7, lw=1.5,
                    mfc=color if p.clear else "white", zorder=3)
        jitter = np.linspace(-0.12, 0.12, p.n) * width
        seed_x = np.exp(np.log(x) + jitter) if logx else x + jitter
        ax.scatter(seed_x, p.diffs, color=color, s=8, alpha=0.45, zorder=2, lw=0)
        if annotate and p.direction:
            word = dict(zip(("clearly better", "clearly worse"), words)).get(p.word, p.word.split()[-1])
            ax.annotate(word, (x, hi if p.mean > 0 else lo), xytext=(0, 6 if p.mean > 0 else -12),
                        textcoords="offset points", ha="center", fontsize=9, color=color)
    ax.axhline(0, color="gray", lw=1)
    ax.margins(y=0.18)  # room for the labels
    if logx:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in result.values])
    first = result.paired[0]
    ax.set_xlabel(result.variable)
    ax.set_ylabel(ylabel or f"Δ {first.metric}: {first.trick} − {first.baseline}")
    ax.grid(alpha=0.3)
    return ax


def reliability_diagram(probs: torch.Tensor, labels: torch.Tensor, *, n_bins: int = 10, ax: Axes | None = None,
                        label: str | None = None, color: str | None = None) -> Axes:
    """Accuracy against confidence per bin; the diagonal is perfect calibration.

    Args:
        probs: ``Tensor[N, C]`` predicted probabilities (rows sum to 1).
        labels: ``Tensor[N]`` int64 true classes.
        n_bins: equal-width confidence bins on [0, 1] (:func:`~tricklib.measure.calibration_bins`);
            empty bins are not drawn.
        ax: the Matplotlib ``Axes`` to draw on; default a new 3.5 x 3.5 inch figure.
        label: legend entry for this curve (the legend is shown when given).
        color: the curve's colour; default Matplotlib's next one.
    """
    ax = _axes(ax, (3.5, 3.5))
    b = calibration_bins(probs, labels, n_bins)
    filled = b["count"] > 0
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
    ax.plot(b["confidence"][filled].numpy(), b["accuracy"][filled].numpy(), "o-", label=label, color=color)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if label is not None:
        ax.legend()
    return ax
