r"""Hyper-parameter search: grid points and random points over the same space (the optimisation chapters).

A search space maps each hyper-parameter to its range, ``(low, high)`` for a
uniform scale or ``(low, high, "log")`` for a logarithmic one::

    space = {"lr": (1e-5, 1.0, "log"), "weight_decay": (1e-6, 1e-1, "log"), "dropout": (0.0, 0.5)}
    for point in random_points(space, 20, generator=0):
        score = train_and_evaluate(**point)

:func:`grid_points`, :func:`random_points` and :func:`sobol_points` return a list of
``{name: value}`` dicts, so the same loop runs a grid, a random or a quasi-random
search at the same budget. Checked in ``tests/test_search.py``.
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from ._checks import check_choice, check_int

SCALES = ("linear", "log")
Space = Mapping[str, Sequence[object]]


def _parse(space: Space) -> list[tuple[str, float, float, bool]]:
    """Validate a space; return ``(name, low, high, is_log)`` per axis, in the space's order."""
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a mapping {{name: (low, high[, 'log'])}}, got {type(space).__name__}")
    if not space:
        raise ValueError("space must name at least one hyper-parameter")
    axes = []
    for name, spec in space.items():
        if not isinstance(name, str):
            raise TypeError(f"space keys must be strings, got {name!r}")
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) not in (2, 3):
            raise ValueError(f"space[{name!r}] must be (low, high) or (low, high, 'log'), got {spec!r}")
        low, high = spec[0], spec[1]
        scale = spec[2] if len(spec) == 3 else "linear"
        check_choice(f"scale of space[{name!r}]", scale, SCALES)
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, numbers.Real) or not math.isfinite(bound):
                raise ValueError(f"space[{name!r}] bounds must be finite numbers, got {spec!r}")
        if not low < high:
            raise ValueError(f"space[{name!r}] needs low < high, got low={low}, high={high}")
        if scale == "log" and low <= 0:
            raise ValueError(f"space[{name!r}] is on a log scale, so low must be > 0, got {low}")
        axes.append((name, float(low), float(high), scale == "log"))
    return axes


def _from_unit(axes: list[tuple[str, float, float, bool]], u: torch.Tensor) -> list[dict[str, float]]:
    """Map points ``u`` in the unit cube ``[n, d]`` to the space, each axis on its own scale."""
    columns = []
    for j, (_, low, high, is_log) in enumerate(axes):
        if is_log:  # uniform in log(value): value = low · (high/low)^u
            columns.append(torch.exp(math.log(low) + u[:, j] * (math.log(high) - math.log(low))))
        else:
            columns.append(low + u[:, j] * (high - low))
    values = torch.stack(columns, dim=1).tolist()
    return [{name: v for (name, *_), v in zip(axes, row)} for row in values]


def grid_points(space: Space, n: int) -> list[dict[str, float]]:
    r"""A full grid of ``n`` points: :math:`k = n^{1/d}` values on each of the ``d`` axes.

    Each axis is cut into :math:`k` equal cells on its own scale (linear or log) and
    the grid takes the cell midpoints, :math:`u_i = (i + \tfrac12)/k`, so no point is
    wasted on the border and a grid of one point is the centre. Whatever ``d``, the
    grid tests only :math:`k` distinct values of each hyper-parameter; a random
    search of the same budget tests ``n`` (Bergstra & Bengio 2012, "Random Search
    for Hyper-Parameter Optimization").

    Args:
        space: ``{name: (low, high)}`` or ``{name: (low, high, "log")}``.
        n: the budget; must be a perfect ``d``-th power (9 or 16 in 2-D, 8 or 27 in 3-D).

    Returns:
        ``n`` dicts ``{name: value}``, the first axis varying slowest.
    """
    axes = _parse(space)
    n = check_int("n", n, 1)
    d = len(axes)
    k = round(n ** (1 / d))
    if k**d != n:
        lower, upper = max(1, math.floor(n ** (1 / d))), math.floor(n ** (1 / d)) + 1
        raise ValueError(f"a full grid over {d} axes needs n = k**{d}; got n={n} "
                         f"(nearest: {lower**d} or {upper**d})")
    mids = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    u = torch.tensor(list(itertools.product(mids.tolist(), repeat=d)), dtype=torch.float64).view(n, d)
    return _from_unit(axes, u)


def random_points(space: Space, n: int, generator: int | torch.Generator) -> list[dict[str, float]]:
    r"""``n`` points drawn independently and uniformly, each axis on its own scale.

    A linear axis draws :math:`x = a + u\,(b-a)`; a log axis draws
    :math:`x = a\,(b/a)^{u}`, i.e. :math:`\log x` uniform, with :math:`u \sim U[0,1)`.
    Every point brings a new value of *every* hyper-parameter, which is why random
    search beats a grid when only a few hyper-parameters matter (Bergstra & Bengio 2012).

    Args:
        space: ``{name: (low, high)}`` or ``{name: (low, high, "log")}``.
        n: number of points (>= 0).
        generator: a ``torch.Generator`` or an int seed; the same seed gives the same points.

    Returns:
        ``n`` dicts ``{name: value}``; the first ``m`` points of a draw of ``n`` are
        a draw of ``m`` (so one draw gives the search at every smaller budget).
    """
    axes = _parse(space)
    n = check_int("n", n, 0)
    if isinstance(generator, bool) or not isinstance(generator, (numbers.Integral, torch.Generator)):
        raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    g = generator if isinstance(generator, torch.Generator) else torch.Generator().manual_seed(int(generator))
    # one row per point, so a prefix of the draw is itself a draw
    u = torch.rand(n, len(axes), generator=g, dtype=torch.float64)
    return _from_unit(axes, u)


def sobol_points(space: Space, n: int, generator: int | torch.Generator) -> list[dict[str, float]]:
    r"""``n`` quasi-random points: a scrambled Sobol sequence, each axis on its own scale.

    Random points clump and leave holes by chance; a Sobol sequence (Sobol' 1967) fills
    the unit cube evenly — every prefix of :math:`2^k` points puts one point in each of
    :math:`2^k` equal boxes of many axis-aligned partitions — while, like random search,
    it gives every point a new value of every hyper-parameter. Scrambling (Owen 1995)
    makes it random again in distribution, so repeated searches differ. The unit-cube
    points come from ``torch.quasirandom.SobolEngine(d, scramble=True)`` and are mapped
    like :func:`random_points` (log axes uniform in :math:`\log x`).

    Args:
        space: ``{name: (low, high)}`` or ``{name: (low, high, "log")}``.
        n: number of points (>= 0); powers of two fill the space most evenly.
        generator: an int seed or a ``torch.Generator`` (its initial seed is used) for the scrambling.

    Returns:
        ``n`` dicts ``{name: value}``; a prefix of the sequence is the search at a smaller budget.
    """
    axes = _parse(space)
    n = check_int("n", n, 0)
    if isinstance(generator, bool) or not isinstance(generator, (numbers.Integral, torch.Generator)):
        raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")
    seed = int(generator) if not isinstance(generator, torch.Generator) else generator.initial_seed()
    engine = torch.quasirandom.SobolEngine(len(axes), scramble=True, seed=seed)
    return _from_unit(axes, engine.draw(n, dtype=torch.float64))
