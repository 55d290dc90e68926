"""The training loop every chapter shares: :func:`fit`, :func:`evaluate` and callbacks.

The harness *uses* tricks, it never owns them: a trick arrives as the loss
function (focal loss, label smoothing, flooding), the scheduler (cosine,
SGDR, warm-up), the optimiser, a batch transform (mixup) or a callback (EMA,
snapshots, gradient-norm recording). Every trick also works in a reader's own
loop without this file.
"""
from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int, check_range, check_same_device, check_tensor
from .runtime import get_device
from .runtime import progress as progress_bar

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass
class History:
    """What :func:`fit` recorded.

    Attributes:
        step: per optimisation step: ``"loss"`` (training batch loss), ``"lr"``
            (learning rate used for that step), ``"grad_norm"`` (global L2 norm of
            the gradient before clipping), plus anything callbacks add.
        epoch: per epoch: ``"train_loss"``, ``"val_loss"`` and each metric as
            ``"train_<name>"`` / ``"val_<name>"`` (evaluated in ``eval`` mode).
        diverged_at: the step whose loss was NaN/inf (training stopped there), else ``None``.
    """

    step: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    epoch: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    diverged_at: int | None = None

    def last(self, key: str) -> float:
        """The last per-epoch value of ``key`` (e.g. ``history.last("val_acc")``).

        Args:
            key: a key of :attr:`epoch`, e.g. ``"val_loss"`` or ``"train_acc"``.
        """
        return self.epoch[key][-1]


@dataclass
class TrainState:
    """What a callback sees: the objects being trained and where the loop is.

    Attributes:
        model: the model being trained.
        optimizer: the optimiser :func:`fit` built.
        history: the :class:`History` being recorded.
        step: optimisation steps done so far (1 at the first ``on_step_end``).
        epoch: the current epoch, counting from 1.
        loss: training loss of the last batch (NaN before the first step).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    step: int = 0
    epoch: int = 0
    loss: float = math.nan


class Callback:
    """Hook into :func:`fit`. Override what you need; both hooks default to no-ops."""

    def on_step_end(self, state: TrainState) -> None:
        """Called after each optimiser step (``state.step`` counts from 1).

        Args:
            state: the loop's :class:`TrainState`, updated for this step.
        """

    def on_epoch_end(self, state: TrainState) -> None:
        """Called after each epoch, once the epoch metrics are in ``state.history``.

        Args:
            state: the loop's :class:`TrainState` (``state.epoch`` counts from 1).
        """


class Snapshots(Callback):
    """Keep a copy of the model's weights at chosen steps (for snapshot ensembles).

    Args:
        at_steps: optimisation steps (counting from 1) after which to copy the
            ``state_dict``; e.g. the ends of SGDR cycles.
    """

    def __init__(self, at_steps: Sequence[int]):
        self.at_steps = set(at_steps)
        self.states: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, state: TrainState) -> None:
        """Append a deep copy of ``state.model.state_dict()`` to ``self.states`` if this step is one of ``at_steps``.

        Args:
            state: the loop's :class:`TrainState`.
        """
        if state.step in self.at_steps:
            self.states.append(copy.deepcopy(state.model.state_dict()))


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    r"""Fraction of examples whose prediction equals the label.

    .. math:: \mathrm{acc} = \frac1N \sum_i [\hat y_i = y_i],\qquad
              \hat y_i = \arg\max_k z_{ik} \ \text{(multi-class)},\quad
              \hat y_i = [z_i > 0] \ \text{(binary: one logit, } p > 0.5\text{)}

    Shapes (any leading dimensions ``...``, e.g. ``[N]`` or ``[N, T]``):

    - multi-class: ``logits`` ``[..., C]`` with ``C >= 2``; ``y`` ``[...]`` class indices
      in ``[0, C)``, or ``[..., C]`` one-hot / soft targets (their arg-max is the label);
    - binary: ``logits`` ``[...]`` or ``[..., 1]``; ``y`` of the same shape, or without the
      trailing 1 (``[N, 1]`` logits with ``[N, 1]`` or ``[N]`` targets, as
      ``binary_cross_entropy_with_logits`` wants them); 0/1 labels (bool, integer or
      float; float targets in [0, 1] count as 1 from 0.5, so smoothed labels work).

    Args:
        logits: float tensor of model outputs, ``[..., C]`` (multi-class) or ``[...]`` /
            ``[..., 1]`` (binary), as above.
        y: the labels: class indices, one-hot or soft targets, or binary 0/1 labels, as above.

    Returns:
        The accuracy, a float in [0, 1].

    Raises:
        TypeError: ``logits`` or ``y`` is not a tensor, or ``logits`` is not floating point.
        ValueError: shapes that match neither convention, labels out of range, or no examples.
    """
    check_tensor("logits", logits, floating=True)
    check_tensor("y", y)
    check_same_device(logits=logits, y=y)
    if logits.numel() == 0:
        raise ValueError(f"accuracy of no examples is undefined (logits of shape {tuple(logits.shape)})")
    binary = logits.dim() == 1 or logits.shape[-1] == 1
    if binary:
        if y.shape == logits.shape[:-1] and logits.dim() > 1:
            y = y.unsqueeze(-1)
        if y.shape != logits.shape:
            raise ValueError(f"binary logits of shape {tuple(logits.shape)} need y of the same shape"
                             f"{' or ' + str(tuple(logits.shape[:-1])) if logits.dim() > 1 else ''}, "
                             f"got {tuple(y.shape)}")
        if y.is_floating_point():
            if not ((y >= 0) & (y <= 1)).all():
                raise ValueError("binary float targets y must lie in [0, 1] (no NaN)")
            y = y >= 0.5
        elif y.dtype != torch.bool and not ((y == 0) | (y == 1)).all():
            raise ValueError("binary targets y must be 0 or 1")
        return ((logits > 0) == y.bool()).float().mean().item()
    classes = logits.shape[-1]
    if y.shape == logits.shape:
        y = y.argmax(-1)
    elif y.shape != logits.shape[:-1]:
        raise ValueError(f"logits of shape {tuple(logits.shape)} need y of shape {tuple(logits.shape[:-1])} (class "
                         f"indices) or {tuple(logits.shape)} (one-hot or soft targets), got {tuple(y.shape)}")
    elif y.is_floating_point() and not (y == y.round()).all():
        raise ValueError("class indices y must be whole numbers")
    elif y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"class indices y must be integers, got dtype {y.dtype}")
    if ((y < 0) | (y >= classes)).any():
        raise ValueError(f"class indices y must be in [0, {classes - 1}]")
    return (logits.argmax(-1) == y.long()).float().mean().item()


def batches(X: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[Batch]:
    """Yield ``(X, y)`` mini-batches from in-memory tensors (much faster than a DataLoader for toys).

    Args:
        X: ``Tensor[N, ...]`` inputs.
        y: ``Tensor[N, ...]`` targets.
        batch_size: examples per batch; the last batch holds the remainder.
        shuffle: visit the examples in a random order (a new one each call) instead of in order.
        generator: ``torch.Generator`` for the shuffle (reproducible order); ignored
            without ``shuffle``.
    """
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield X[idx], y[idx]


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, *, batch_size: int = 1024,
            device: torch.device | None = None) -> torch.Tensor:
    """Model outputs for ``X`` (at least one example) in eval mode, batched, returned on the CPU.

    ``device`` defaults to that of the model's first parameter (the CPU for a model
    without parameters); the model's train/eval mode is restored afterwards.

    Args:
        model: the ``nn.Module`` to run.
        X: ``Tensor[N, ...]`` inputs, ``N >= 1``; moved to ``device`` one batch at a time.
        batch_size: examples per forward pass, ``>= 1``.
        device: where to run ``model`` (it is not moved: give the device it is on);
            default its first parameter's.

    Returns:
        The outputs ``model(X)``, concatenated over batches, on the CPU.
    """
    check_tensor("X", X)
    if X.dim() == 0 or len(X) == 0:
        raise ValueError(f"X holds no examples (shape {tuple(X.shape)}): there is nothing to predict")
    batch_size = check_int("batch_size", batch_size, 1)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(X[i:i + batch_size].to(device)).cpu() for i in range(0, len(X), batch_size)])
    finally:
        model.train(was_training)


def _scalar_loss(loss: torch.Tensor, name: str) -> torch.Tensor:
    """``loss`` if it is one number, else a ValueError that says how to reduce a per-example loss."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{name} must return one number (the mean loss of the batch), got {got}; a per-example "
                         "loss such as focal_loss (reduction='none' by default) needs reduction='mean', or pass "
                         "lambda logits, y: loss(logits, y).mean()")
    return loss


def evaluate(model: nn.Module, data: Batch, *, loss_fn: LossFn = F.cross_entropy,
             metrics: dict[str, MetricFn] | None = None, batch_size: int = 1024) -> dict[str, float]:
    """Loss and metrics of ``model`` on ``data = (X, y)`` (at least one example) in eval mode.

    Args:
        model: the ``nn.Module`` mapping ``X`` to logits, run with :func:`predict`.
        data: ``(X, y)`` tensors.
        loss_fn: ``loss_fn(logits, y)`` returning one number (a mean), default cross-entropy.
        metrics: ``{name: fn(logits, y)}``, each returning a float; default
            ``{"acc": accuracy}``.
        batch_size: examples per forward pass.

    Returns:
        ``{"loss": ..., <metric name>: ...}``.
    """
    X, y = data
    logits = predict(model, X, batch_size=batch_size)
    out = {"loss": _scalar_loss(loss_fn(logits, y), "loss_fn").item()}
    for name, fn in (metrics if metrics is not None else {"acc": accuracy}).items():
        out[name] = fn(logits, y)
    return out


def fit(model: nn.Module, train: Batch, val: Batch | None = None, *, epochs: int,
        lr: float = 1e-3,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        scheduler: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None = None,
        loss_fn: LossFn = F.cross_entropy,
        eval_loss_fn: LossFn | None = None,
        metrics: dict[str, MetricFn] | None = None,
        batch_size: int = 64,
        batch_transform: Callable[[torch.Tensor, torch.Tensor], Batch] | None = None,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        callbacks: Sequence[Callback] = (),
        seed: int = 0,
        device: torch.device | str | None = None,
        progress: bool = False) -> History:
    """Train ``model`` on in-memory ``train = (X, y)`` and record a :class:`History`.

    Args:
        model: any ``nn.Module`` mapping a batch of ``X`` to logits.
        train, val: ``(X, y)`` tensors; ``val`` is evaluated after every epoch.
        epochs: passes over ``train``.
        lr: learning rate given to ``optimizer``.
        optimizer: ``optimizer(model.parameters(), lr=lr)`` builds it (use
            ``functools.partial`` for other arguments, or pass a function that
            builds parameter groups).
        scheduler: ``scheduler(optimizer)`` builds an LR scheduler stepped after
            **every optimisation step** (schedules are in steps, not epochs).
        loss_fn: ``loss_fn(logits, y)``: where loss tricks plug in.
        eval_loss_fn: loss reported on train/val at epoch ends (default ``loss_fn``;
            pass ``F.cross_entropy`` to report the plain loss when training with a
            modified one).
        metrics: ``{name: fn(logits, y)}`` evaluated per epoch (default accuracy).
        batch_size: mini-batch size.
        batch_transform: ``(x, y) -> (x, y)`` applied to each training batch (mixup...).
        clip_grad_norm: clip the global gradient L2 norm to this value
            (``nn.utils.clip_grad_norm_``: the direction is kept).
        clip_grad_value: clamp every gradient entry to ``[-v, v]``
            (``nn.utils.clip_grad_value_``: the direction may change). Applied
            before norm clipping when both are given.
        callbacks: :class:`Callback` objects (EMA, snapshots, recorders).
        seed: seeds the shuffling of batches (model init is the caller's).
        device: where to train; default :func:`~tricklib.runtime.get_device`.
        progress: show a ``tqdm`` bar over epochs.

    Returns:
        The :class:`History` (per-step loss/lr/grad-norm, per-epoch metrics). If the
        loss becomes NaN or infinite, training stops there and
        ``history.diverged_at`` holds the step.
    """
    epochs = check_int("epochs", epochs, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    check_range("lr", lr, 0.0)
    if clip_grad_norm is not None:
        check_range("clip_grad_norm", clip_grad_norm, 0.0, low_open=True)
    if clip_grad_value is not None:
        check_range("clip_grad_value", clip_grad_value, 0.0, low_open=True)
    for name, data in (("train", train), ("val", val)):
        if data is not None:
            if len(data[0]) != len(data[1]):
                raise ValueError(f"{name} X and y must have the same length, got {len(data[0])} and {len(data[1])}")
            if len(data[1]) == 0:
                raise ValueError(f"{name} holds no examples: there is nothing to "
                                 f"{'train on' if name == 'train' else 'evaluate'}")
    X, y = train
    device = torch.device(device) if device is not None else get_device()
    model.to(device)
    opt = optimizer(model.parameters(), lr=lr)
    sched = scheduler(opt) if scheduler is not None else None
    eval_loss_fn = eval_loss_fn or loss_fn
    history = History()
    state = TrainState(model=model, optimizer=opt, history=history)
    generator = torch.Generator().manual_seed(seed)
    epoch_iter = range(1, epochs + 1)
    for epoch in (progress_bar(epoch_iter, desc="epochs") if progress else epoch_iter):
        model.train()
        state.epoch = epoch
        for xb, yb in batches(X, y, batch_size, shuffle=True, generator=generator):
            xb, yb = xb.to(device), yb.to(device)
            if batch_transform is not None:
                xb, yb = batch_transform(xb, yb)
            loss = _scalar_loss(loss_fn(model(xb), yb), "loss_fn")
            if not torch.isfinite(loss):
                # the step that diverged is recorded in every per-step series (no update was made)
                history.diverged_at = state.step + 1
                history.step["loss"].append(loss.item())
                history.step["lr"].append(opt.param_groups[0]["lr"])
                history.step["grad_norm"].append(math.nan)
                return history
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # the recorded norm is the raw one, before any clipping
            grad_norm = nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            if clip_grad_value is not None:
                nn.utils.clip_grad_value_(model.parameters(), clip_grad_value)
            if clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            history.step["lr"].append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
            state.step += 1
            state.loss = loss.item()
            history.step["loss"].append(state.loss)
            history.step["grad_norm"].append(grad_norm.item())
            for cb in callbacks:
                cb.on_step_end(state)
        for prefix, data in (("train", train), ("val", val)):
            if data is not None:
                for name, value in evaluate(model, data, loss_fn=eval_loss_fn, metrics=metrics).items():
                    history.epoch[f"{prefix}_{name}"].append(value)
        for cb in callbacks:
            cb.on_epoch_end(state)
    return history
