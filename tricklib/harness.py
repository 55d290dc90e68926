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
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_int, check_range, check_same_device, check_tensor
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
        stop: set it to ``True`` in a callback to end training: :func:`fit` checks it
            after every epoch's ``on_epoch_end`` calls (set in ``on_step_end``, the
            run still finishes that epoch), e.g. :class:`EarlyStopping`.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    step: int = 0
    epoch: int = 0
    loss: float = math.nan
    stop: bool = False


class Callback:
    """Hook into :func:`fit`. Override what you need; every hook defaults to a no-op."""

    def on_train_begin(self, state: TrainState) -> None:
        """Called once when :func:`fit` starts, before the first step: reset per-run state here
        (:class:`EarlyStopping` does), so that one callback object can serve several runs.

        Args:
            state: the loop's :class:`TrainState` (``state.step == 0``, empty history).
        """

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

    def on_train_end(self, state: TrainState) -> None:
        """Called once when :func:`fit` returns: after the last epoch, when a callback set
        ``state.stop``, or when the loss diverged.

        Args:
            state: the loop's :class:`TrainState` as training left it.
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


class EarlyStopping(Callback):
    r"""Stop training when a validation metric stops improving, and restore the best weights.

    After every epoch the monitored value :math:`v_t` (e.g. ``history.epoch["val_loss"][-1]``)
    is compared with the best so far, :math:`v^\ast`. With ``mode="min"`` epoch :math:`t`
    *improves* when

    .. math:: v_t < v^\ast - \delta_{\min}

    (``mode="max"``: :math:`v_t > v^\ast + \delta_{\min}`; the first epoch always improves, a
    NaN never does). An improving epoch becomes the best: :math:`v^\ast = v_t`,
    :math:`t^\ast = t`, and a copy of the weights is kept. Training stops at the end of the
    first epoch :math:`t = t^\ast + \text{patience}`, i.e. after ``patience`` epochs in a row
    without improvement (the convention of Keras' and Lightning's ``EarlyStopping``), and the
    model is given back the weights of epoch :math:`t^\ast` — also when the run reaches its
    last epoch without stopping. Prechelt (1998), "Early stopping — but when?", compares such
    stopping criteria.

    The best weights are kept **in CPU memory**, as a ``state_dict`` copy moved to the CPU (so a
    model on a GPU does not need its parameter memory twice there; restoring copies them back
    onto the model's device): they are needed only at the end of this run, so there is no file to
    write, no random-generator state and nothing to clean up. To keep the best model across a
    crash, write it yourself when :attr:`improved` is true, with
    :func:`~tricklib.checkpoint.save_checkpoint` (weights, optimiser, scheduler, epoch).

    Use it as a callback of :func:`fit` (``fit(..., val=val, callbacks=[stopper])``), or in
    your own loop::

        for epoch in range(max_epochs):
            train_one_epoch(model)
            if stopper.update(evaluate(model, val)["loss"], model):
                break
        stopper.restore(model)

    **One run at a time.** The stopper remembers the best value, epoch and weights of the run
    it watches. :func:`fit` calls :meth:`reset` at the start of every run (the
    ``on_train_begin`` hook), so one object may serve several runs of ``fit`` one after the
    other; in your own loop call :meth:`reset` before reusing it for a new run, or the new
    run is compared with the old run's best.

    Only the **model's** weights are restored, not the optimiser's or scheduler's state:
    enough to use the model, not to resume training from the best epoch (checkpoint those
    for that).

    Args:
        monitor: the per-epoch key of :attr:`History.epoch` to watch in :func:`fit`, e.g.
            ``"val_loss"`` or ``"val_acc"`` (ignored by :meth:`update`, which is given the
            value).
        mode: ``"min"`` (lower is better, losses), ``"max"`` (accuracies) or ``"auto"``, which
            reads the last word of ``monitor`` (split at ``_``, ``/``, ``.``, ``-``):
            ``"min"`` for ``loss``, ``error``/``err``, ``mse``, ``mae``, ``rmse``, ``nll``;
            ``"max"`` for ``acc``/``accuracy``, ``auc``, ``f1``, ``iou``, ``ap``, ``map``,
            ``r2`` and ``top1``, ``top5``, …; any other name raises a ValueError asking for
            ``mode="min"`` or ``mode="max"`` (a wrong guess would keep the *worst* epoch).
        patience: epochs in a row without improvement that end the run, ``>= 1``
            (Keras' and Lightning's ``patience=0``, stop at the first epoch without
            improvement, is ``patience=1`` here).
        min_delta: smallest change that counts as an improvement, ``>= 0``, in the units
            of the monitored value.
        restore_best: give the model back its best weights at the end (default ``True``).
            With ``False`` no copy of the weights is kept.

    Attributes:
        mode: ``"min"`` or ``"max"``, as given or as ``"auto"`` resolved it.
        best_value: the best monitored value so far (``inf``/``-inf`` before the first epoch).
        best_epoch: the epoch it was reached, counting from 1 (0 before the first).
        stopped_epoch: the epoch at whose end training was stopped, ``None`` if it was not.
        improved: whether the last epoch improved on the best.
        best_state: the ``state_dict`` of the best epoch, on the CPU (``None`` with
            ``restore_best=False``).

    Raises:
        ValueError: ``mode`` not ``"min"``, ``"max"`` or ``"auto"``; ``mode="auto"`` with a
            ``monitor`` whose direction it cannot tell; ``patience < 1``;
            ``min_delta < 0``; in :func:`fit`, a ``monitor`` that is not a per-epoch key of the
            history (the message lists those there are, and says when ``fit`` was given no
            validation set).
        TypeError: ``monitor`` not a string, ``patience`` not an int.

    Checked in ``tests/test_early_stopping.py`` against a hand-written patience loop (the
    same stopping epoch on scripted sequences of values, the restored weights equal to those
    saved at the best epoch) and with :func:`fit` (it stops there, and the restored model
    equals the one a run of exactly ``best_epoch`` epochs ends with).
    """

    def __init__(self, monitor: str = "val_loss", *, mode: str = "auto", patience: int = 10,
                 min_delta: float = 0.0, restore_best: bool = True):
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a per-epoch history key such as 'val_loss', got {monitor!r}")
        check_choice("mode", mode, ("min", "max", "auto"))
        if mode == "auto":
            word = re.split(r"[_/.\-]", monitor.lower())[-1]
            if word in ("loss", "error", "err", "mse", "mae", "rmse", "nll"):
                mode = "min"
            elif word in ("acc", "accuracy", "auc", "f1", "iou", "ap", "map", "r2") or re.fullmatch(r"top\d*", word):
                mode = "max"
            else:
                raise ValueError(f"mode='auto' cannot tell whether {monitor!r} should go up or down: "
                                 "pass mode='min' or mode='max'")
        if isinstance(patience, int) and not isinstance(patience, bool) and patience == 0:
            raise ValueError("patience=0 would stop after the first epoch; patience=1 stops at the first epoch "
                             "without improvement (what Keras' and Lightning's patience=0 does)")
        self.monitor, self.mode = monitor, mode
        self.patience = check_int("patience", patience, 1)
        self.min_delta = float(check_range("min_delta", min_delta, 0.0))
        self.restore_best = bool(restore_best)
        self.reset()

    def reset(self) -> None:
        """Forget the run watched so far (best value, epochs, weights), to watch a new one.

        :func:`fit` calls it at the start of every run (``on_train_begin``); call it yourself
        before reusing a stopper in your own loop.
        """
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.stopped_epoch: int | None = None
        self.improved = False
        self.best_state: dict[str, torch.Tensor] | None = None
        self._epoch = 0

    def update(self, value: float, model: nn.Module | None = None) -> bool:
        """Record one epoch's monitored value; ``True`` when training should stop.

        Args:
            value: the monitored value of this epoch (a NaN never improves).
            model: the model; its ``state_dict`` is copied when this epoch is the best
                (needed for :meth:`restore` when ``restore_best``).

        Returns:
            ``True`` once ``patience`` epochs in a row have not improved on the best.
        """
        value = float(value)
        self._epoch += 1
        if self.mode == "min":
            self.improved = value < self.best_value - self.min_delta
        else:
            self.improved = value > self.best_value + self.min_delta
        if self.improved:
            self.best_value, self.best_epoch = value, self._epoch
            if self.restore_best and model is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                   for k, v in model.state_dict().items()}
        if self._epoch - self.best_epoch >= self.patience:
            self.stopped_epoch = self._epoch
            return True
        return False

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (a no-op with ``restore_best=False``).

        Args:
            model: the model whose ``state_dict`` was copied by :meth:`update`.

        Raises:
            ValueError: ``restore_best`` is on but no weights were kept (no epoch had a model).
        """
        if not self.restore_best:
            return
        if self.best_state is None:
            raise ValueError("no best weights to restore: update() was never given the model at an improving epoch")
        model.load_state_dict(self.best_state)

    def on_train_begin(self, state: TrainState) -> None:
        """:meth:`reset`: every run of :func:`fit` starts from no best value.

        Args:
            state: the loop's :class:`TrainState`.
        """
        self.reset()

    def on_epoch_end(self, state: TrainState) -> None:
        """Read ``state.history.epoch[monitor][-1]``, :meth:`update`, and set ``state.stop`` when it says so.

        Args:
            state: the loop's :class:`TrainState`.
        """
        if self.monitor not in state.history.epoch:
            keys = sorted(state.history.epoch)
            hint = (" (fit was given no validation set: pass val=(X, y) — never the test set)"
                    if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in keys) else "")
            raise ValueError(f"monitor {self.monitor!r} is not a per-epoch history key{hint}; the history has {keys}")
        if self.update(state.history.epoch[self.monitor][-1], state.model):
            state.stop = True

    def on_train_end(self, state: TrainState) -> None:
        """Give the model its best weights back (with ``restore_best``, once an epoch was recorded).

        Args:
            state: the loop's :class:`TrainState`.
        """
        if self.restore_best and self.best_state is not None:
            state.model.load_state_dict(self.best_state)


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
        callbacks: :class:`Callback` objects (EMA, snapshots, recorders,
            :class:`EarlyStopping`); every callback's ``on_train_begin`` runs before
            the first step, a callback ends training early by setting
            ``state.stop`` (:class:`TrainState`), and every callback's
            ``on_train_end`` runs when ``fit`` returns.
        seed: seeds the shuffling of batches (model init is the caller's).
        device: where to train; default :func:`~tricklib.runtime.get_device`.
        progress: show a ``tqdm`` bar over epochs.

    Returns:
        The :class:`History` (per-step loss/lr/grad-norm, per-epoch metrics; one entry per
        epoch run, fewer than ``epochs`` when a callback stopped training). If the loss
        becomes NaN or infinite, training stops there and ``history.diverged_at`` holds
        the step.
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
    for cb in callbacks:
        cb.on_train_begin(state)
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
                for cb in callbacks:
                    cb.on_train_end(state)
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
        if state.stop:  # a callback ended training (e.g. EarlyStopping)
            break
    for cb in callbacks:
        cb.on_train_end(state)
    return history
