"""Early stopping (``tricklib.EarlyStopping``) and the stop flag of ``tricklib.fit``.

The reference is a hand-written patience loop (Keras' and Lightning's convention: stop once
``patience`` epochs in a row have not improved on the best by more than ``min_delta``): on
scripted sequences of values the callback must stop at the same epoch and remember the same
best epoch, and with :func:`tricklib.fit` it must stop there and give the model back exactly
the weights it had at the end of the best epoch (saved by a plain per-epoch copy).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklib as tl


def reference_stop(values: list[float], patience: int, min_delta: float = 0.0, mode: str = "min") -> tuple[int, int]:
    """(epoch at which training stops or the last epoch, best epoch), counting from 1 — a plain loop."""
    sign = 1.0 if mode == "min" else -1.0
    best, best_epoch, wait = math.inf, 0, 0
    for epoch, value in enumerate(values, start=1):
        v = sign * value
        if v < best - min_delta:  # NaN compares False: never an improvement
            best, best_epoch, wait = v, epoch, 0
        else:
            wait += 1
        if wait >= patience:
            return epoch, best_epoch
    return len(values), best_epoch


SEQUENCES = {
    "dip then rise": [1.0, 0.8, 0.7, 0.75, 0.72, 0.71, 0.9, 1.0, 1.1, 1.2, 1.3],
    "keeps improving": [5.0, 4.0, 3.0, 2.0, 1.0, 0.5],
    "noisy": [1.0, 0.9, 0.95, 0.85, 0.86, 0.87, 0.84, 0.88, 0.89, 0.9, 0.91, 0.92, 0.93],
    "ties": [1.0, 1.0, 1.0, 1.0, 1.0],
    "tiny gains": [1.0, 0.999, 0.998, 0.997, 0.996, 0.995, 0.994],
    "nan": [1.0, float("nan"), 0.9, float("nan"), float("nan"), float("nan")],
    "first is best": [0.5, 0.6, 0.7, 0.8],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
@pytest.mark.parametrize("patience", [1, 2, 3, 5])
@pytest.mark.parametrize("min_delta", [0.0, 0.005, 0.05])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_update_matches_a_hand_written_patience_loop(name, patience, min_delta, mode):
    values = SEQUENCES[name] if mode == "min" else [-v for v in SEQUENCES[name]]
    stop_epoch, best_epoch = reference_stop(values, patience, min_delta, mode)
    stopper = tl.EarlyStopping(mode=mode, patience=patience, min_delta=min_delta, restore_best=False)
    for epoch, value in enumerate(values, start=1):
        if stopper.update(value):
            break
    assert epoch == stop_epoch
    assert stopper.best_epoch == best_epoch
    assert stopper.stopped_epoch == (stop_epoch if stop_epoch - best_epoch >= patience else None)
    if best_epoch:
        assert stopper.best_value == values[best_epoch - 1]


def test_random_sequences_match_the_reference():
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        n = int(torch.randint(1, 30, (1,), generator=g))
        values = (torch.rand(n, generator=g).cumsum(0) * 0.1 - torch.linspace(0, 1, n) + 0.2 * torch.rand(n, generator=g)).tolist()
        patience = int(torch.randint(1, 6, (1,), generator=g))
        min_delta = float(torch.rand(1, generator=g)) * 0.05
        stopper = tl.EarlyStopping(patience=patience, min_delta=min_delta, restore_best=False)
        for epoch, value in enumerate(values, start=1):
            if stopper.update(value):
                break
        assert (epoch, stopper.best_epoch) == reference_stop(values, patience, min_delta)


@pytest.mark.parametrize("monitor", ["val_loss", "train_loss", "loss", "val_error", "val_mse", "val/mae", "val.nll"])
def test_mode_auto_minimises_losses_and_errors(monitor):
    assert tl.EarlyStopping(monitor).mode == "min"


@pytest.mark.parametrize("monitor", ["val_acc", "val_accuracy", "val_auc", "val_f1", "val_iou", "val_ap", "val_map",
                                     "val_top1", "val_top5", "val_top5_acc", "val_r2", "VAL_ACC", "val/acc"])
def test_mode_auto_maximises_accuracy_like_metrics(monitor):
    assert tl.EarlyStopping(monitor).mode == "max"


@pytest.mark.parametrize("monitor", ["val_xyz", "val_scripted", "val_ece", "val_lossy", "val_topk_gap", "val_acc_drop"])
def test_mode_auto_refuses_to_guess(monitor):
    with pytest.raises(ValueError, match=r"mode='min' or mode='max'"):
        tl.EarlyStopping(monitor)
    assert tl.EarlyStopping(monitor, mode="max").mode == "max"  # an explicit mode is always taken


def test_an_explicit_mode_overrides_the_name():
    assert tl.EarlyStopping("val_acc", mode="min").mode == "min"
    assert tl.EarlyStopping("val_loss", mode="max").mode == "max"


def test_fit_resets_a_reused_stopper_so_each_run_is_its_own():
    """One stopper over two runs of fit: the second run must behave exactly as with a fresh stopper."""
    train, val = toy_problem()
    first, second = SEQUENCES["first is best"], SEQUENCES["dip then rise"]
    reused = tl.EarlyStopping("val_scripted", mode="min", patience=2)
    torch.manual_seed(0)
    tl.fit(nn.Sequential(nn.Linear(6, 2)), train, val, epochs=len(first), batch_size=16, device="cpu",
           metrics={"scripted": ScriptedMetric([v - 1.0 for v in first])}, callbacks=[reused])  # a better best
    assert reused.best_value < min(second)
    fresh = tl.EarlyStopping("val_scripted", mode="min", patience=2)
    results = []
    for stopper in (reused, fresh):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(6, 2))
        every = EveryEpoch()
        history = tl.fit(model, train, val, epochs=len(second), batch_size=16, device="cpu",
                         metrics={"scripted": ScriptedMetric(second)}, callbacks=[every, stopper])
        assert all(torch.equal(model.state_dict()[k], every.states[stopper.best_epoch - 1][k]) for k in every.states[0])
        results.append((len(history.epoch["val_loss"]), stopper.best_epoch, stopper.best_value, stopper.stopped_epoch))
    assert results[0] == results[1] == (*reference_stop(second, 2), min(second), reference_stop(second, 2)[0])


def test_reset_in_a_plain_loop():
    stopper = tl.EarlyStopping(patience=2, restore_best=False)
    for value in [0.1, 0.2, 0.3]:
        stopper.update(value)
    stopper.reset()
    assert (stopper.best_value, stopper.best_epoch, stopper.stopped_epoch, stopper.improved) == (math.inf, 0, None, False)
    values = SEQUENCES["dip then rise"]
    for epoch, value in enumerate(values, start=1):
        if stopper.update(value):
            break
    assert (epoch, stopper.best_epoch) == reference_stop(values, 2)


def test_on_train_begin_is_called_once_before_the_first_step():
    class Order(tl.Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, state):
            self.calls.append(("begin", state.step, len(state.history.epoch)))

        def on_step_end(self, state):
            if not self.calls or self.calls[-1][0] != "step":
                self.calls.append(("step", state.step, None))

    train, val = toy_problem()
    order = Order()
    tl.fit(nn.Sequential(nn.Linear(6, 2)), train, val, epochs=2, batch_size=16, device="cpu", callbacks=[order])
    assert order.calls == [("begin", 0, 0), ("step", 1, None)]


def test_best_weights_are_kept_on_the_cpu():
    model = nn.Sequential(nn.Linear(6, 2))
    stopper = tl.EarlyStopping(patience=2)
    stopper.update(1.0, model)
    assert all(v.device.type == "cpu" for v in stopper.best_state.values())
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)  # the copy is not a view of the parameters
    assert all(torch.equal(stopper.best_state[k], saved[k]) for k in saved)
    stopper.restore(model)
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_best_weights_of_a_gpu_model_go_to_the_cpu_and_come_back():
    model = nn.Sequential(nn.Linear(6, 2)).cuda()
    stopper = tl.EarlyStopping(patience=2)
    stopper.update(1.0, model)
    assert all(v.device.type == "cpu" for v in stopper.best_state.values())
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    stopper.restore(model)
    assert all(v.device.type == "cuda" and torch.equal(v, saved[k]) for k, v in model.state_dict().items())


class ScriptedMetric:
    """A metric for ``fit`` that returns scripted values, one per epoch (fit evaluates train, then val)."""

    def __init__(self, values: list[float]):
        self.values, self.calls = values, 0

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        value = self.values[self.calls // 2]
        self.calls += 1
        return value


class EveryEpoch(tl.Callback):
    """A plain copy of the weights at the end of every epoch (the reference for the restored model)."""

    def __init__(self):
        self.states = []

    def on_epoch_end(self, state):
        self.states.append(copy.deepcopy(state.model.state_dict()))


def toy_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(96, 6, generator=g)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()
    return (X[:64], y[:64]), (X[64:], y[64:])


@pytest.mark.parametrize("name", ["dip then rise", "noisy", "keeps improving", "first is best"])
@pytest.mark.parametrize("patience", [1, 3])
def test_fit_stops_where_the_reference_stops_and_restores_the_best_weights(name, patience):
    values = SEQUENCES[name]
    stop_epoch, best_epoch = reference_stop(values, patience)
    train, val = toy_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    stopper, every = tl.EarlyStopping("val_scripted", mode="min", patience=patience), EveryEpoch()
    history = tl.fit(model, train, val, epochs=len(values), lr=0.05, batch_size=16, device="cpu",
                     metrics={"scripted": ScriptedMetric(values)}, callbacks=[every, stopper])
    assert len(history.epoch["val_loss"]) == stop_epoch
    assert stopper.best_epoch == best_epoch
    assert stopper.stopped_epoch == (stop_epoch if stop_epoch - best_epoch >= patience else None)
    restored = model.state_dict()
    assert all(torch.equal(restored[k], every.states[best_epoch - 1][k]) for k in restored)
    if best_epoch < stop_epoch:  # the model really moved after its best epoch
        assert not all(torch.equal(every.states[-1][k], every.states[best_epoch - 1][k]) for k in restored)


def test_restored_model_equals_a_run_of_exactly_best_epoch_epochs():
    train, val = toy_problem(1)
    values = SEQUENCES["dip then rise"]
    stopper = tl.EarlyStopping("val_scripted", mode="min", patience=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    tl.fit(model, train, val, epochs=len(values), lr=0.05, batch_size=16, seed=3, device="cpu",
           metrics={"scripted": ScriptedMetric(values)}, callbacks=[stopper])
    torch.manual_seed(0)
    short = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    tl.fit(short, train, val, epochs=stopper.best_epoch, lr=0.05, batch_size=16, seed=3, device="cpu")
    assert stopper.best_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), short.state_dict().values()))


def test_restore_best_false_keeps_the_last_weights_and_no_copy():
    train, val = toy_problem()
    values = SEQUENCES["dip then rise"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    stopper, every = tl.EarlyStopping("val_scripted", mode="min", patience=2, restore_best=False), EveryEpoch()
    tl.fit(model, train, val, epochs=len(values), lr=0.05, batch_size=16, device="cpu",
           metrics={"scripted": ScriptedMetric(values)}, callbacks=[every, stopper])
    assert stopper.best_state is None
    assert all(torch.equal(model.state_dict()[k], every.states[-1][k]) for k in every.states[-1])
    stopper.restore(model)  # a no-op


def test_the_best_epoch_is_restored_when_the_run_ends_without_stopping():
    train, val = toy_problem()
    values = [1.0, 0.5, 0.6, 0.7]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    stopper, every = tl.EarlyStopping("val_scripted", mode="min", patience=5), EveryEpoch()
    history = tl.fit(model, train, val, epochs=4, lr=0.05, batch_size=16, device="cpu",
                     metrics={"scripted": ScriptedMetric(values)}, callbacks=[every, stopper])
    assert len(history.epoch["val_loss"]) == 4 and stopper.stopped_epoch is None and stopper.best_epoch == 2
    assert all(torch.equal(model.state_dict()[k], every.states[1][k]) for k in every.states[1])


def test_on_real_validation_loss_with_fit():
    """Monitoring the real val_loss: the stop and best epochs are the reference's on the recorded curve."""
    train, val = toy_problem(2)
    y_noisy = train[1].clone()
    y_noisy[::3] = 1 - y_noisy[::3]  # label noise, so that the validation loss turns up
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))
    stopper = tl.EarlyStopping("val_loss", patience=4)
    history = tl.fit(model, (train[0], y_noisy), val, epochs=300, lr=0.03, batch_size=16, device="cpu",
                     callbacks=[stopper])
    curve = history.epoch["val_loss"]
    assert (len(curve), stopper.best_epoch) == reference_stop(curve, 4)
    assert len(curve) < 300
    assert stopper.best_value == min(curve)
    assert tl.evaluate(model, val)["loss"] == pytest.approx(min(curve), abs=1e-6)


def test_stop_flag_set_by_any_callback_ends_fit_after_that_epoch():
    class StopAt(tl.Callback):
        def __init__(self, epoch):
            self.epoch, self.ended = epoch, 0

        def on_step_end(self, state):
            if state.epoch == self.epoch:
                state.stop = True

        def on_train_end(self, state):
            self.ended += 1

    train, val = toy_problem()
    model = nn.Sequential(nn.Linear(6, 2))
    callback = StopAt(2)
    history = tl.fit(model, train, val, epochs=10, batch_size=16, device="cpu", callbacks=[callback])
    assert len(history.epoch["val_loss"]) == 2  # the epoch in which it was set is finished
    assert callback.ended == 1
    assert len(history.step["loss"]) == 2 * 4


def test_on_train_end_runs_once_after_a_divergence_and_restores():
    train, val = toy_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 2))
    stopper = tl.EarlyStopping(patience=100)

    class Blow(tl.Callback):
        def on_epoch_end(self, state):
            if state.epoch == 2:
                with torch.no_grad():
                    state.model[0].weight.fill_(float("inf"))

    history = tl.fit(model, train, val, epochs=5, batch_size=16, device="cpu", callbacks=[stopper, Blow()])
    assert history.diverged_at is not None
    assert torch.isfinite(model[0].weight).all()  # the best (finite) weights are back
    assert stopper.best_epoch in (1, 2)


def test_fit_without_callbacks_is_unchanged_by_the_stop_flag():
    train, val = toy_problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 2))
    history = tl.fit(model, train, val, epochs=3, batch_size=16, device="cpu")
    assert len(history.epoch["val_loss"]) == 3


def test_in_a_plain_loop():
    train, val = toy_problem(3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    stopper = tl.EarlyStopping(patience=3)
    losses, states = [], []
    for _ in range(100):
        loss = F.cross_entropy(model(train[0]), 1 - train[1] if len(losses) > 2 else train[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            losses.append(F.cross_entropy(model(val[0]), val[1]).item())
        states.append(copy.deepcopy(model.state_dict()))
        if stopper.update(losses[-1], model):
            break
    stopper.restore(model)
    assert (len(losses), stopper.best_epoch) == reference_stop(losses, 3)
    assert all(torch.equal(model.state_dict()[k], states[stopper.best_epoch - 1][k]) for k in states[0])


def test_bad_input_raises_clearly():
    with pytest.raises(ValueError, match="patience"):
        tl.EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match="patience=0.*patience=1.*Keras"):
        tl.EarlyStopping(patience=0)
    with pytest.raises(TypeError, match="patience"):
        tl.EarlyStopping(patience=2.5)
    with pytest.raises(ValueError, match="min_delta"):
        tl.EarlyStopping(min_delta=-0.1)
    with pytest.raises(ValueError, match="mode"):
        tl.EarlyStopping(mode="lowest")
    with pytest.raises(TypeError, match="monitor"):
        tl.EarlyStopping(monitor=None)
    with pytest.raises(ValueError, match="no best weights"):
        tl.EarlyStopping().restore(nn.Linear(2, 2))
    train, val = toy_problem()
    model = nn.Sequential(nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"'val_los'.*'val_loss'"):
        tl.fit(model, train, val, epochs=2, device="cpu", callbacks=[tl.EarlyStopping("val_los", mode="min")])
    with pytest.raises(ValueError, match="no validation set"):
        tl.fit(model, train, epochs=2, device="cpu", callbacks=[tl.EarlyStopping("val_loss")])
