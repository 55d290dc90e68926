"""Averages of weights and of predictions: snapshot ensembles, EMA of weights, SWA, precise BatchNorm statistics, model soups."""
from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from .harness import predict


@torch.no_grad()
def ensemble_probs(model: nn.Module, states: Sequence[dict[str, torch.Tensor]], X: torch.Tensor) -> torch.Tensor:
    r"""Average the softmax outputs of several weight snapshots of one architecture.

    .. math:: p(y \mid x) = \frac1M \sum_{m=1}^{M} \mathrm{softmax}\bigl(f(x; \theta_m)\bigr)

    This is the prediction of a snapshot ensemble (Huang et al. 2017, "Snapshot
    Ensembles: Train 1, get M for free"), with ``states`` the ``state_dict``\ s
    saved at the end of each SGDR cycle.

    Args:
        model: the architecture, a classifier that outputs logits ``[N, C]``; it is
            deep-copied, so its own weights and mode are left as they are.
        states: at least one ``state_dict`` of ``model`` (the snapshots :math:`\theta_m`),
            e.g. :class:`~tricklib.harness.Snapshots`' ``states``.
        X: ``Tensor[N, ...]`` inputs, predicted in eval mode and in batches by
            :func:`~tricklib.harness.predict` (on the model's device).

    Returns:
        ``Tensor[N, C]`` averaged probabilities on the CPU.
    """
    if not states:
        raise ValueError("states must hold at least one state_dict")
    member = copy.deepcopy(model)
    total = None
    for state in states:
        member.load_state_dict(state)
        probs = predict(member, X).softmax(dim=-1)
        total = probs if total is None else total + probs
    return total / len(states)


def _slots(module: nn.Module, average_buffers: bool) -> tuple[list, list]:
    """Where each tensor of ``module`` lives, as ``(owner dict, name)`` pairs: those to average
    (floating parameters, and floating buffers if ``average_buffers``) and those to copy.

    Looking a tensor up in its owner's ``_parameters``/``_buffers`` dict finds it after
    ``module.to(...)`` or an attribute assignment; shared tensors appear once."""
    averaged, copied = [], []
    for kind, named in (("_parameters", module.named_parameters()), ("_buffers", module.named_buffers())):
        for name, tensor in named:
            owner, _, attr = name.rpartition(".")
            slot = (getattr(module.get_submodule(owner), kind), attr)
            if tensor.is_floating_point() and (kind == "_parameters" or average_buffers):
                averaged.append(slot)
            else:
                copied.append(slot)
    return averaged, copied


class _WeightAverage:
    """What :class:`ModelEMA` and :class:`SWA` share: a frozen copy of the model (:attr:`module`),
    where each of its tensors lives, and one ``foreach`` step of the averaged tensors towards a
    model's (the other tensors are copied). Subclasses set :attr:`_count`, the name of their
    update counter, and call :meth:`_step` with the weight of the new snapshot."""

    _count = "updates"

    def __init__(self, model: nn.Module, buffers: str, device: str | torch.device | None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if buffers not in ("average", "copy"):
            raise ValueError(f"buffers must be 'average' or 'copy', got {buffers!r}")
        self.buffers = buffers
        self.module = copy.deepcopy(model).eval()
        if device is not None:
            self.module.to(device)
        for p in self.module.parameters():
            p.requires_grad_(False)
        setattr(self, self._count, 0)
        self._own = _slots(self.module, buffers == "average")
        self._source: tuple[weakref.ref, tuple[list, list]] | None = None

    @torch.no_grad()
    def _step(self, model: nn.Module, weight: float) -> None:
        r""":math:`\bar\theta \leftarrow \bar\theta + w\,(\theta - \bar\theta)` for the averaged tensors
        (a copy when :math:`w = 1`), a copy for the others; then count the update."""
        source = self._source[1] if self._source is not None and self._source[0]() is model else None
        if source is None:  # a new model: find its tensors once, check they match ours
            source = _slots(model, self.buffers == "average")
            shapes = [[d[k].shape for d, k in slots] for slots in source]
            if shapes != [[d[k].shape for d, k in slots] for slots in self._own]:
                raise ValueError(f"model does not have the architecture this {type(self).__name__} was made from")
            self._source = (weakref.ref(model), source)
        (avg_slots, copy_slots), (cur_slots, src_slots) = self._own, source
        averaged = [d[k] for d, k in avg_slots]
        current = [d[k] for d, k in cur_slots]
        if current and (current[0].device != averaged[0].device
                        or any(c.dtype != a.dtype for c, a in zip(current, averaged))):
            current = [c.to(a.device, a.dtype, non_blocking=True) for c, a in zip(current, averaged)]
        if weight == 1.0:
            torch._foreach_copy_(averaged, current)
        elif averaged:
            torch._foreach_lerp_(averaged, current, weight)
        if copy_slots:
            torch._foreach_copy_([d[k] for d, k in copy_slots], [d[k] for d, k in src_slots], non_blocking=True)
        setattr(self, self._count, getattr(self, self._count) + 1)

    def state_dict(self) -> dict:
        """The averaged weights and the update count (for :func:`~tricklib.checkpoint.save_checkpoint`)."""
        return {"module": self.module.state_dict(), self._count: getattr(self, self._count)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (as :func:`~tricklib.checkpoint.load_checkpoint` does).

        Args:
            state: a dict with ``"module"`` (the average's ``state_dict``) and the update count.
        """
        name, count = type(self).__name__, self._count
        if not isinstance(state, dict) or set(state) != {"module", count}:
            raise ValueError(f"not a {name} state: expected the keys 'module' and {count!r}")
        n = state[count]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{count} must be a non-negative int, got {n!r}")
        self.module.load_state_dict(state["module"])
        setattr(self, count, n)


class ModelEMA(_WeightAverage):
    r"""An exponential moving average of a model's weights, evaluated instead of the last weights.

    .. math:: \theta_{\text{ema}} \leftarrow \beta_t\,\theta_{\text{ema}} + (1-\beta_t)\,\theta,
        \qquad \beta_t = \min\!\Bigl(\beta, \frac{1+t}{10+t}\Bigr) \text{ with warm-up, else } \beta

    after every optimiser step ``t = 0, 1, …`` (Polyak & Juditsky 1992; the warm-up is
    TensorFlow's ``ExponentialMovingAverage(num_updates=…)``, used by timm and YOLO): early
    on, when :math:`\theta` moves fast and the average would still remember the random
    initialisation, :math:`\beta_t` is small; after ~1,000 steps it is :math:`\beta`. The
    average covers roughly the last :math:`1/(1-\beta)` steps.

    One ``torch._foreach_lerp_`` over all floating tensors per update (the per-tensor loop
    over ``state_dict()`` that is often copied is several times slower; ``benchmarks/ema.py``).
    Where each tensor lives is found once per model, so the average follows a model that is
    moved (``.to``) or whose parameters are reassigned; after replacing a whole submodule,
    make a new ``ModelEMA``.
    BatchNorm's running statistics are floating *buffers*: with ``buffers="average"``
    (default, as timm's ``ModelEmaV2``) they are averaged like the weights, so the statistics
    come from the same window of training as the averaged weights; with ``buffers="copy"``
    (``torch.optim.swa_utils.AveragedModel``'s default) they are the training model's
    current ones. Neither is exact for the averaged weights — :func:`precise_bn` recomputes
    them. Integer buffers (``num_batches_tracked``) are always copied.

    Equal, update by update, to ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(β),
    use_buffers=…)`` after its first ``update_parameters`` (which copies the model, as this
    constructor does) — ``tests/test_averaging.py``.

    Args:
        model: the model being trained; it is deep-copied (its own weights are untouched).
        decay: :math:`\beta \in [0, 1)`, e.g. 0.999 (about the last 1,000 steps) or 0.9999
            for long runs.
        warmup: use :math:`\beta_t = \min(\beta, (1+t)/(10+t))`.
        buffers: ``"average"`` or ``"copy"`` the floating buffers (BatchNorm statistics).
        device: where to keep the average (e.g. ``"cpu"`` to spare GPU memory); default:
            the model's device.

    Example::

        ema = ModelEMA(model, decay=0.999)
        for x, y in loader:
            loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
            ema.update(model)
        evaluate(ema.module, ...)
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True, *,
                 buffers: str = "average", device: str | torch.device | None = None):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)
        super().__init__(model, buffers, device)

    def decay_at(self, t: int) -> float:
        r""":math:`\beta_t` used by the update after ``t`` earlier updates.

        Args:
            t: number of updates made before this one (0 for the first).
        """
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step).

        Args:
            model: the model being trained, of the same architecture as the one given to the
                constructor (any device: its tensors are copied to the average's device).
        """
        self._step(model, 1.0 - self.decay_at(self.updates))


class SWA(_WeightAverage):
    r"""Stochastic weight averaging: the equal-weight mean of weight snapshots along a run.

    .. math:: \bar\theta_{n} = \frac1n\sum_{i=1}^{n}\theta_i, \qquad
        \bar\theta_{n+1} = \bar\theta_n + \frac{\theta_{n+1} - \bar\theta_n}{n+1}

    (Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and Better
    Generalization"): train as usual, then for the last part of the run (about 25%) keep a
    constant or cyclic learning rate and call :meth:`update` at the end of every epoch (or
    cycle, or step); evaluate the average. The running mean needs one extra copy of the
    weights, whatever the number of snapshots. Afterwards the BatchNorm statistics must be
    recomputed for the averaged weights with :func:`precise_bn` (``update_bn``): no snapshot's
    running statistics belong to them.

    BatchNorm's running statistics are floating *buffers*: with ``buffers="average"``
    (default, as :class:`ModelEMA`) they are averaged like the weights
    (``AveragedModel(use_buffers=True)``); with ``buffers="copy"`` they are the last
    snapshot's (``AveragedModel``'s default, ``use_buffers=False``). Average is the better
    stale guess: the mean of a layer's output is linear in its weights, so for the first
    BatchNorm the averaged running mean is the averaged weights' mean, while the last
    snapshot's belongs to other weights; the variances are wrong either way (that of
    averaged weights is smaller than the mean of the snapshots'), hence :func:`precise_bn`.
    Integer buffers (``num_batches_tracked``) are always copied.

    Equal, update by update, to ``torch.optim.swa_utils.AveragedModel(model,
    use_buffers=…)`` with its default ``avg_fn`` (one ``torch._foreach_lerp_`` with weight
    :math:`1/(n+1)`, as ``AveragedModel`` on CUDA; on the CPU it agrees to rounding) —
    ``tests/test_averaging.py``. As in ``AveragedModel``, the first :meth:`update` copies the
    model: before it, :attr:`module` is the model as it was at construction.

    Args:
        model: the model being trained; it is deep-copied (its own weights are untouched).
        buffers: ``"average"`` or ``"copy"`` the floating buffers (BatchNorm statistics).
        device: where to keep the average (e.g. ``"cpu"`` to spare GPU memory); default:
            the model's device.

    Attributes:
        module: the averaged network (eval mode, no gradients).
        n_averaged: the number of snapshots in the average.

    Example::

        swa = SWA(model)
        for epoch in range(epochs):
            train_one_epoch(model, optimizer, scheduler)  # constant lr once epoch >= swa_start
            if epoch >= swa_start:
                swa.update(model)
        precise_bn(swa.module, train_loader)
        evaluate(swa.module, ...)
    """

    _count = "n_averaged"

    def __init__(self, model: nn.Module, *, buffers: str = "average",
                 device: str | torch.device | None = None):
        super().__init__(model, buffers, device)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        r"""Add ``model``'s current weights to the average: :math:`\bar\theta \leftarrow
        \bar\theta + (\theta - \bar\theta)/(n+1)`, then :math:`n \leftarrow n + 1`.

        Args:
            model: the model being trained, of the same architecture as the one given to the
                constructor (any device: its tensors are copied to the average's device).
        """
        # the first snapshot is copied (weight 1), as AveragedModel does
        self._step(model, 1.0 / (self.n_averaged + 1))


@torch.no_grad()
def precise_bn(model: nn.Module, batches, max_batches: int | None = None) -> nn.Module:
    r"""Recompute every BatchNorm's running statistics as a true average over ``batches``.

    .. math:: \hat\mu = \frac1K\sum_{k=1}^{K}\mu_{B_k},\qquad
        \hat\sigma^2 = \frac1K\sum_{k=1}^{K}\sigma^2_{B_k}\ \text{(unbiased per batch)}

    with the weights frozen (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", §3:
    "precise BN"). The running averages kept during training mix statistics of many
    different weights, the older ones stale, and their exponential window (momentum 0.1)
    is short; after weight averaging (EMA, SWA, soups) they belong to no model at all.
    Equal to ``torch.optim.swa_utils.update_bn`` (BatchNorm's cumulative average,
    ``momentum=None``); momentum and train/eval mode are restored afterwards.

    Args:
        model: a network with ``nn.BatchNorm1d/2d/3d`` (or ``SyncBatchNorm``) layers; the
            running statistics are reset and recomputed in place.
        batches: an iterable of input tensors, or of ``(inputs, ...)`` tuples/lists (a
            ``DataLoader`` over training data), moved to the model's device.
        max_batches: stop after this many batches (None: all of them). Wu & Johnson find
            about 100 batches enough.

    Returns:
        ``model``.

    Raises:
        ValueError: no BatchNorm layer, or no batch.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        raise ValueError("model has no BatchNorm layer with running statistics: nothing to recompute")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    device = next(model.parameters(), norms[0].running_mean).device
    momenta = {m: m.momentum for m in norms}
    was_training = model.training
    seen = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: running = mean over the batches seen
        model.train()
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(x.to(device))
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty: no statistics to compute")
    return model


def _check_states(states: Sequence[dict[str, torch.Tensor]]) -> None:
    if not states:
        raise ValueError("states must hold at least one state_dict")
    keys = list(states[0])
    for i, state in enumerate(states[1:], 1):
        if list(state) != keys:
            raise ValueError(f"state {i} has other keys than state 0: not the same architecture")
        for k in keys:
            if state[k].shape != states[0][k].shape:
                raise ValueError(f"state {i}'s {k!r} has shape {tuple(state[k].shape)}, "
                                 f"state 0's {tuple(states[0][k].shape)}")


def uniform_soup(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    r"""The average of several ``state_dict``\ s of one architecture: a "uniform model soup".

    .. math:: \theta_{\text{soup}} = \frac1M\sum_{m=1}^{M}\theta_m

    (Wortsman et al. 2022, "Model soups"). Meaningful for models fine-tuned from one
    pre-trained start, which lie in one basin; for independently trained models the
    average usually falls on a loss barrier. Floating tensors are averaged (in float64,
    returned in their dtype); integer ones (``num_batches_tracked``) are taken from the first.

    Args:
        states: at least one ``state_dict`` with the same keys and shapes.

    Returns:
        A new ``state_dict`` (the inputs are not modified).
    """
    _check_states(states)
    soup = {}
    for k, first in states[0].items():
        if first.is_floating_point():
            soup[k] = (sum(s[k].double() for s in states) / len(states)).to(first.dtype)
        else:
            soup[k] = first.clone()
    return soup


def greedy_soup(states: Sequence[dict[str, torch.Tensor]], score) -> tuple[dict[str, torch.Tensor], list[int]]:
    r"""Wortsman et al.'s greedy soup: add a model to the average only if held-out score does not drop.

    Sort the models by their own held-out ``score`` (best first); start the soup with the
    best; for each next model, keep it if :math:`\text{score}(\text{uniform\_soup}(S \cup
    \{\theta_i\})) \ge \text{score}(\text{uniform\_soup}(S))` (Wortsman et al. 2022,
    Recipe 1). The soup is never worse than the best single model on the held-out data
    used to build it (report a separate test split).

    Args:
        states: the candidate ``state_dict``\ s (same architecture, one pre-trained start).
        score: a function ``state_dict -> float``, higher is better, computed on held-out
            (validation) data — e.g. load the state into a model and return its accuracy.
            Called ``2M - 1`` times.

    Returns:
        ``(soup_state, kept)``: the averaged ``state_dict`` and the indices into ``states``
        of the models in it, in the order they were added.
    """
    _check_states(states)
    singles = [float(score(s)) for s in states]
    order = sorted(range(len(states)), key=lambda i: -singles[i])
    kept, best = [order[0]], singles[order[0]]
    for i in order[1:]:
        candidate = float(score(uniform_soup([states[j] for j in kept + [i]])))
        if candidate >= best:
            kept.append(i)
            best = candidate
    return uniform_soup([states[j] for j in kept]), kept


def interpolate(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                t: float) -> dict[str, torch.Tensor]:
    r"""The point a fraction ``t`` of the way along the straight line from ``state_a`` to ``state_b``.

    .. math:: \theta(t) = (1-t)\,\theta_A + t\,\theta_B

    Evaluating a model at :math:`\theta(t)` for :math:`t \in [0, 1]` traces the loss along the
    line between two solutions: flat or lower in the middle when they lie in one basin
    ("linearly mode connected", Frankle et al. 2020, "Linear Mode Connectivity and the
    Lottery Ticket Hypothesis"), with a barrier between them when they do not — usually the
    case for networks trained from different random initialisations. ``t = 0.5`` is the
    uniform soup of the two (:func:`uniform_soup`); ``t`` between a pre-trained and a
    fine-tuned model is WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot
    models"). ``t`` outside ``[0, 1]`` extrapolates.

    Floating tensors are combined in float64 and returned in their dtype; integer ones
    (``num_batches_tracked``) are copied from ``state_a``. BatchNorm running statistics are
    interpolated like the weights, which is *not* the statistics of the interpolated
    network: recompute them with :func:`precise_bn` before evaluating a model with BatchNorm.
    Checked against ``torch.lerp`` and :func:`uniform_soup` in ``tests/test_averaging.py``.

    Args:
        state_a: the ``state_dict`` at ``t = 0``.
        state_b: a ``state_dict`` with the same keys and shapes, at ``t = 1``.
        t: a finite real number.

    Returns:
        A new ``state_dict`` (the inputs are not modified).
    """
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a real number, got {type(t).__name__}")
    t = float(t)
    if not torch.isfinite(torch.tensor(t)):
        raise ValueError(f"t must be finite, got {t}")
    _check_states([state_a, state_b])
    out = {}
    for k, a in state_a.items():
        if a.is_floating_point():
            out[k] = ((1.0 - t) * a.double() + t * state_b[k].double()).to(a.dtype)
        else:
            out[k] = a.clone()
    return out
