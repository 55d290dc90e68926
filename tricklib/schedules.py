r"""Learning-rate schedules as plain functions of the step (Part 2 of the book).

Each factory returns ``f(step) -> multiplier of the base learning rate``, so it
drops into PyTorch's ``LambdaLR`` in one line::

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sgdr(T_0=100, T_mult=2))

and is stepped once per optimisation step. Each one is checked in
``tests/test_schedules.py`` against its ``torch.optim.lr_scheduler`` counterpart.
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from ._checks import check_range

Schedule = Callable[[int], float]


def step_decay(milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""Multiply the learning rate by ``gamma`` at each milestone step.

    .. math:: \eta_t = \eta_0\,\gamma^{\,|\{m \in \text{milestones} : m \le t\}|}

    Equals ``torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)``.
    """
    if list(milestones) != sorted(milestones) or any(m < 1 for m in milestones):
        raise ValueError(f"milestones must be increasing positive steps, got {list(milestones)}")
    check_range("gamma", gamma, 0.0, 1.0, low_open=True)
    marks = list(milestones)
    return lambda t: gamma ** bisect.bisect_right(marks, t)


def cosine(total_steps: int, eta_min_ratio: float = 0.0) -> Schedule:
    r"""Cosine decay from the base rate to ``eta_min_ratio`` times it over ``total_steps``.

    .. math:: \eta_t = \eta_{\min} + \tfrac12(\eta_0-\eta_{\min})\bigl(1+\cos(\pi t/T)\bigr),\quad t \le T

    and :math:`\eta_{\min}` after ``T``. Loshchilov & Hutter 2017, "SGDR"; He et
    al. 2019, "Bag of Tricks". Equals ``CosineAnnealingLR(optimizer, T_max=T,
    eta_min=eta_min_ratio * lr)`` for ``t <= T``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    check_range("eta_min_ratio", eta_min_ratio, 0.0, 1.0)

    def f(t: int) -> float:
        frac = min(t, total_steps) / total_steps
        return eta_min_ratio + (1 - eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return f


def sgdr(T_0: int, T_mult: int = 1, eta_min_ratio: float = 0.0) -> Schedule:
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    .. math:: \eta_t = \eta_{\min} + \tfrac12(\eta_0-\eta_{\min})\bigl(1+\cos(\pi\,T_{cur}/T_i)\bigr)

    where :math:`T_{cur}` counts steps since the last restart and the cycle
    length starts at ``T_0`` and is multiplied by ``T_mult`` after every restart.
    Equals ``CosineAnnealingWarmRestarts(optimizer, T_0, T_mult, eta_min=eta_min_ratio * lr)``
    stepped once per step.
    """
    if T_0 < 1:
        raise ValueError(f"T_0 must be >= 1, got {T_0}")
    if T_mult < 1 or int(T_mult) != T_mult:
        raise ValueError(f"T_mult must be an integer >= 1, got {T_mult}")
    check_range("eta_min_ratio", eta_min_ratio, 0.0, 1.0)

    def f(t: int) -> float:
        t_cur, t_i = t, T_0
        if T_mult == 1:
            t_cur = t % T_0
        else:
            # cycles of length T_0 * T_mult**k; find k in closed form, not by looping
            k = int(math.log(t / T_0 * (T_mult - 1) + 1, T_mult)) if t >= T_0 else 0
            t_cur = t - T_0 * (T_mult**k - 1) // (T_mult - 1)
            t_i = T_0 * T_mult**k
            if t_cur >= t_i:  # guard against float rounding in the log
                t_cur, t_i = t_cur - t_i, t_i * T_mult
        return eta_min_ratio + (1 - eta_min_ratio) * 0.5 * (1 + math.cos(math.pi * t_cur / t_i))

    return f


def restart_steps(T_0: int, T_mult: int, total_steps: int) -> list[int]:
    """The steps at which SGDR cycles end (their last step, counting from 1), up to ``total_steps``.

    These are where a snapshot ensemble saves a model: the learning rate is at
    its minimum there, just before it jumps back up.
    """
    if T_0 < 1 or T_mult < 1:
        raise ValueError(f"T_0 and T_mult must be >= 1, got {T_0} and {T_mult}")
    ends, length, end = [], T_0, T_0
    while end <= total_steps:
        ends.append(end)
        length *= T_mult
        end += length
    return ends
