r"""Learning-rate schedules as plain functions of the step (the optimisation chapters of the book).

Each factory returns ``f(step) -> multiplier of the base learning rate``, so it
drops into PyTorch's ``LambdaLR`` in one line::

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, sgdr(T_0=100, T_mult=2))

and is stepped once per optimisation step. Each one is checked in
``tests/test_schedules.py`` against its ``torch.optim.lr_scheduler`` counterpart.
"""
from __future__ import annotations

import bisect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._checks import check_int, check_range

Schedule = Callable[[int], float]


def step_decay(milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    r"""Multiply the learning rate by ``gamma`` at each milestone step.

    .. math:: \eta_t = \eta_0\,\gamma^{\,|\{m \in \text{milestones} : m \le t\}|}

    Equals ``torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)``.

    Args:
        milestones: increasing steps ``>= 1`` (optimisation steps, not epochs) at which
            the rate is multiplied by ``gamma``.
        gamma: the factor applied at each milestone, in (0, 1].

    Returns:
        ``f(step) -> multiplier`` of the base learning rate.
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

    Args:
        total_steps: :math:`T \ge 1`, the steps the decay takes.
        eta_min_ratio: :math:`\eta_{\min}/\eta_0 \in [0, 1]`, the final multiplier.

    Returns:
        ``f(step) -> multiplier`` of the base learning rate.
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

    Args:
        T_0: length of the first cycle in steps, an integer ``>= 1``.
        T_mult: factor by which each cycle is longer than the one before, an integer
            ``>= 1`` (1: all cycles have ``T_0`` steps).
        eta_min_ratio: :math:`\eta_{\min}/\eta_0 \in [0, 1]`, the multiplier at the end of each cycle.

    Returns:
        ``f(step) -> multiplier`` of the base learning rate.
    """
    T_0, T_mult = check_int("T_0", T_0, 1), check_int("T_mult", T_mult, 1)
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
    its minimum there, just before it jumps back up. ``T_0`` and ``T_mult`` as in
    :func:`sgdr` (integers >= 1: cycles of ``T_0 * T_mult**k`` steps), ``total_steps >= 0``.

    Args:
        T_0: length of the first cycle in steps, ``>= 1``.
        T_mult: growth factor of the cycle length, ``>= 1``.
        total_steps: length of the run, ``>= 0``; only cycles that end within it are listed.
    """
    T_0, T_mult = check_int("T_0", T_0, 1), check_int("T_mult", T_mult, 1)
    total_steps = check_int("total_steps", total_steps, 0)
    ends, length, end = [], T_0, T_0
    while end <= total_steps:
        ends.append(end)
        length *= T_mult
        end += length
    return ends


def warmup(schedule: Schedule, warmup_steps: int, start_factor: float = 0.0, *,
           total_steps: int | None = None) -> Schedule:
    r"""Linear learning-rate warm-up over the first ``warmup_steps`` steps, then ``schedule``.

    With :math:`m` warm-up steps, start factor :math:`s` and the wrapped schedule :math:`f`,

    .. math:: \eta_t = \eta_0\bigl(s + (1-s)\,t/m\bigr) \ \text{ for } t < m, \qquad
              \eta_t = \eta_0\, f(t - m) \ \text{ for } t \ge m.

    With ``start_factor=0`` this is the gradual warm-up of Goyal et al. 2017,
    "Accurate, Large Minibatch SGD", :math:`\eta_t = t\,\eta_0/m`; He et al. 2019
    ("Bag of Tricks") pair it with cosine decay.

    **The wrapped schedule's clock starts at 0 when the warm-up ends**, as in
    PyTorch's ``SequentialLR``: for a run of ``T`` steps, give it the remaining
    ``T - m`` steps, e.g. ``warmup(cosine(T - m), m)``, and shift step-decay
    milestones by ``-m``. For ``start_factor > 0`` the result equals
    ``SequentialLR(opt, [LinearLR(opt, start_factor, total_iters=m), LambdaLR(opt, schedule)],
    milestones=[m])`` (checked in ``tests/test_schedules.py``, which also checks the
    ``start_factor=0`` case against the formula).

    Args:
        schedule: any ``f(step) -> multiplier`` (e.g. :func:`cosine`, :func:`step_decay`).
        warmup_steps: :math:`m \ge 0`; ``0`` returns ``schedule`` unchanged.
        start_factor: :math:`s \in [0, 1]`, the multiplier at step 0.
        total_steps: the length of the run, if known; then a warm-up that would
            take the whole run (``warmup_steps >= total_steps``) raises.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a function of the step, got {type(schedule).__name__}")
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    check_range("start_factor", start_factor, 0.0, 1.0)
    if total_steps is not None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be shorter than the run "
                             f"(total_steps={total_steps}): the warm-up would never end")
    if warmup_steps == 0:
        return schedule

    def f(t: int) -> float:
        if t < warmup_steps:
            return start_factor + (1 - start_factor) * t / warmup_steps
        return schedule(t - warmup_steps)

    return f


def linear_scaling(base_lr: float, batch_size: int, base_batch: int = 256) -> float:
    r"""The linear scaling rule: scale the learning rate with the batch size.

    .. math:: \eta = \eta_{\text{base}} \cdot b / b_{\text{base}}

    Goyal et al. 2017: "when the minibatch size is multiplied by :math:`k`,
    multiply the learning rate by :math:`k`" (:math:`\eta = 0.1\,b/256` for
    ResNet-50 on ImageNet), used together with :func:`warmup`.

    Args:
        base_lr: :math:`\eta_{\text{base}} > 0`, tuned at batch size ``base_batch``.
        batch_size: the new batch size :math:`b \ge 1`.
        base_batch: :math:`b_{\text{base}} \ge 1` (default 256, as in the paper).
    """
    check_range("base_lr", base_lr, 0.0, low_open=True)
    batch_size, base_batch = check_int("batch_size", batch_size, 1), check_int("base_batch", base_batch, 1)
    return base_lr * batch_size / base_batch


@dataclass(frozen=True)
class ScheduleCheck:
    """What :func:`check_schedule` found.

    Attributes:
        total_steps: the steps checked (``0 .. total_steps - 1``).
        floor: the threshold, as a fraction of the base rate.
        fraction_below: share of the steps whose multiplier is below ``floor``.
        first_below: first step below ``floor`` (``None`` if none).
        final: the multiplier at the last step (``1.0``: the rate never decayed).
    """

    total_steps: int
    floor: float
    fraction_below: float
    first_below: int | None
    final: float

    def __str__(self) -> str:
        where = "never" if self.first_below is None else f"from step {self.first_below}"
        return (f"{self.fraction_below:.0%} of {self.total_steps} steps below {self.floor:g}× the base rate "
                f"({where}); final multiplier {self.final:.3g}")


def check_schedule(schedule: Schedule, total_steps: int, *, floor: float = 0.01, max_fraction: float = 0.25,
                   warn: bool = True) -> ScheduleCheck:
    r"""Check a schedule over the real length of the run before training with it.

    Counts the steps where the multiplier is below ``floor`` (default 1% of the
    base rate), where training has all but stopped:

    .. math:: \text{fraction\_below} = \frac{1}{T}\,\bigl|\{t < T : f(t) < \text{floor}\}\bigr|

    and warns (``UserWarning``) when it exceeds ``max_fraction``. The classic
    cause is a schedule copied with its defaults: milestones in *epochs* of
    another dataset, or a scheduler configured in epochs but stepped per batch
    ("don't trust decay defaults"). Cosine decay to zero spends 6.4% of its steps
    below 1%, and the ImageNet step schedule ÷10 at epochs 30, 60, 80 of 90 spends
    11%, so neither warns at the default ``max_fraction=0.25``. Also check
    :attr:`ScheduleCheck.final`: ``1.0`` means the rate never decayed in this run.
    ``tests/test_schedules.py`` checks the counts against these closed forms.

    Args:
        schedule: ``f(step) -> multiplier``; for a PyTorch scheduler, record its
            multipliers over the run and pass ``trace.__getitem__``.
        total_steps: the number of optimisation steps of the run (``epochs × batches per epoch``).
        floor: multiplier below which a step counts as stalled, in (0, 1].
        max_fraction: warn when more than this share of the run is below ``floor``.
        warn: issue the warning (else only return the report).

    Returns:
        A :class:`ScheduleCheck`.
    """
    if not callable(schedule):
        raise TypeError(f"schedule must be a function of the step, got {type(schedule).__name__}")
    total_steps = check_int("total_steps", total_steps, 1)
    check_range("floor", floor, 0.0, 1.0, low_open=True)
    check_range("max_fraction", max_fraction, 0.0, 1.0)
    below = [t for t in range(total_steps) if schedule(t) < floor]
    report = ScheduleCheck(total_steps=total_steps, floor=floor, fraction_below=len(below) / total_steps,
                           first_below=below[0] if below else None, final=float(schedule(total_steps - 1)))
    if warn and report.fraction_below > max_fraction:
        warnings.warn(f"learning-rate schedule: {report}. Are its milestones in epochs while it is stepped "
                      "per batch, or keyed to another dataset's length?", UserWarning, stacklevel=2)
    return report
