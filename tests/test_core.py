"""runtime, data, harness, measure and averaging: the shared core every chapter uses."""
import math

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import tricklib
import tricklib.detection_eval
import tricklib.scenes
from tricklib import (Snapshots, accuracy, by_scale, compare, digits, ensemble_probs, evaluate,
                      expected_calibration_error, fit, get_device, make_imbalanced, predict, render_shapes,
                      seed_everything, shapes, split, toy_2d)
from tricklib.measure import calibration_bins

matplotlib.use("Agg")


# --- runtime -------------------------------------------------------------------------------------------------
def test_seeded_runs_are_bit_identical():
    def run():
        seed_everything(3)
        model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        X, y = toy_2d("moons", 200, seed=0)
        h = fit(model, (X, y), epochs=3, lr=1e-2, device="cpu")
        return h.step["loss"], [p.detach().clone() for p in model.parameters()]

    (loss_a, params_a), (loss_b, params_b) = run(), run()
    assert loss_a == loss_b
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_scale_and_device(monkeypatch):
    monkeypatch.setenv("TRICKLIB_SCALE", "full")
    assert by_scale(1, 2) == 2
    monkeypatch.setenv("TRICKLIB_SCALE", "small")
    assert by_scale(1, 2) == 1
    monkeypatch.setenv("TRICKLIB_SCALE", "huge")
    with pytest.raises(ValueError, match="TRICKLIB_SCALE"):
        by_scale(1, 2)
    assert get_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            get_device("cuda")
    with pytest.raises(ValueError):
        get_device("tpu")
    with pytest.raises(ValueError):
        seed_everything(-1)


# --- data ----------------------------------------------------------------------------------------------------
def test_shapes_same_scene_at_any_resolution():
    small, big = shapes(16, 16, seed=5), shapes(16, 64, seed=5)
    torch.testing.assert_close(small.params, big.params)
    assert torch.equal(small.labels, big.labels)
    torch.testing.assert_close(small.boxes * 4, big.boxes)
    assert small.images.shape == (16, 1, 16, 16) and big.images.shape == (16, 1, 64, 64)
    assert small.images.min() >= 0 and small.images.max() <= 1


def test_shape_masks_match_geometry():
    params = torch.tensor([[0.5, 0.5, 0.3, 0.0]] * 3)
    labels = torch.tensor([0, 1, 2])
    masks, boxes = render_shapes(params, labels, 400)
    area = masks.float().mean(dim=(1, 2))
    r = 0.3
    expected = torch.tensor([math.pi * r**2, 2 * r**2, 3 * math.sqrt(3) / 4 * r**2])
    torch.testing.assert_close(area, expected, rtol=2e-2, atol=0)
    # every mask pixel lies inside its box
    for m, b in zip(masks, boxes):
        ys, xs = m.nonzero(as_tuple=True)
        assert xs.min() + 0.5 >= b[0] - 1e-4 and xs.max() + 0.5 <= b[2] + 1e-4
        assert ys.min() + 0.5 >= b[1] - 1e-4 and ys.max() + 0.5 <= b[3] + 1e-4


def test_toy_sets_and_digits():
    for name in ("moons", "spirals", "gaussians", "ring"):
        X, y = toy_2d(name, 301, seed=1)
        assert X.shape == (301, 2) and X.dtype == torch.float32 and y.dtype == torch.int64
        counts = torch.bincount(y)
        assert counts.max() - counts.min() <= 1
    X, y = digits()
    assert X.shape == (1797, 64) and 0 <= X.min() and X.max() <= 1 and y.unique().numel() == 10
    assert digits(images=True)[0].shape == (1797, 1, 8, 8)
    with pytest.raises(ValueError):
        toy_2d("swiss", 10)


def test_make_imbalanced_and_split():
    X, y = toy_2d("moons", 2000, seed=0)
    Xi, yi = make_imbalanced(X, y, 0.01)
    assert int((yi == 1).sum()) == 10 and int((yi == 0).sum()) == 1000
    parts = split(X, y, (0.7, 0.2, 0.1))
    assert [len(p[1]) for p in parts] == [1400, 400, 200]
    joined = torch.cat([p[0] for p in parts])
    assert torch.equal(joined[torch.argsort(joined[:, 0])], X[torch.argsort(X[:, 0])])
    with pytest.raises(ValueError):
        split(X, y, (0.5, 0.6))
    with pytest.raises(ValueError):
        make_imbalanced(X, y, 0.0)


@pytest.mark.parametrize("ratio", [1.5, 2.0, 10.0])
def test_make_imbalanced_refuses_a_ratio_it_cannot_reach(ratio):
    X, y = toy_2d("moons", 200, seed=0)                        # 100 of each class
    with pytest.raises(ValueError, match=f"ratio={ratio}.*only subsamples"):
        make_imbalanced(X, y, ratio)
    with pytest.raises(ValueError, match="ratio"):
        make_imbalanced(X, y, float("inf"))
    _, yi = make_imbalanced(X, y, 1.0)                          # exactly reachable: all kept
    assert int((yi == 1).sum()) == 100
    _, yi = make_imbalanced(X, y, np.float32(0.25))
    assert int((yi == 1).sum()) == 25


@pytest.mark.parametrize("fractions", [(0.5, float("nan")), (float("nan"), 0.5, 0.5), (0.7, 0.3, float("inf")),
                                       (1.2, -0.2), (0.0, 1.0), ()])
def test_split_refuses_fractions_that_are_not_positive_and_summing_to_one(fractions):
    X, y = toy_2d("moons", 100, seed=0)
    with pytest.raises(ValueError, match="fractions"):
        split(X, y, fractions)
    assert [len(p[1]) for p in split(X, y, (np.float32(0.5), np.float64(0.5)))] == [50, 50]


# --- harness -------------------------------------------------------------------------------------------------
def test_fit_learns_and_records():
    seed_everything(0)
    X, y = toy_2d("moons", 400, noise=0.1, seed=0)
    model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, tricklib.cosine(7 * 30))
    h = fit(model, (X, y), (X, y), epochs=30, lr=3e-2, batch_size=64, scheduler=sched, device="cpu")
    assert len(h.step["loss"]) == 210 and len(h.epoch["val_acc"]) == 30
    assert h.step["lr"][0] == pytest.approx(3e-2) and h.step["lr"][-1] < 1e-5
    assert h.last("val_acc") > 0.95
    assert all(g > 0 for g in h.step["grad_norm"])


def test_fit_clips_and_detects_divergence():
    seed_everything(0)
    X, y = toy_2d("gaussians", 200, seed=0)
    model = nn.Linear(2, 2)
    snaps = Snapshots([2, 4])
    fit(model, (X, y), epochs=1, lr=1.0, batch_size=50, clip_grad_norm=1e-3, optimizer=torch.optim.SGD,
        callbacks=[snaps], device="cpu")
    assert len(snaps.states) == 2
    # the recorded step size is bounded by lr * clip: weights barely move between snapshots
    diff = sum((snaps.states[1][k] - snaps.states[0][k]).pow(2).sum() for k in snaps.states[0]).sqrt()
    assert diff <= 2 * 1.0 * 1e-3 + 1e-6
    h = fit(nn.Linear(2, 2), (X * 1e30, y), epochs=2, lr=1e30, optimizer=torch.optim.SGD, device="cpu")
    assert h.diverged_at is not None and not math.isfinite(h.step["loss"][-1])
    # every per-step series has one entry per step, the diverged one included
    assert len(h.step["loss"]) == len(h.step["lr"]) == len(h.step["grad_norm"]) == h.diverged_at
    assert math.isnan(h.step["grad_norm"][-1])
    with pytest.raises(ValueError):
        fit(model, (X, y), epochs=0)
    with pytest.raises(ValueError):
        fit(model, (X, y[:5]), epochs=1)


def test_ensemble_probs_average_of_members():
    model = nn.Linear(3, 4)
    states = [{k: torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(3)]
    X = torch.randn(10, 3)
    expected = torch.stack([torch.nn.functional.linear(X, s["weight"], s["bias"]).softmax(-1) for s in states]).mean(0)
    torch.testing.assert_close(ensemble_probs(model, states, X), expected)
    with pytest.raises(ValueError):
        ensemble_probs(model, [], X)


# --- measure (the verdict and seeds: tests/test_measure.py) ---------------------------------------------
def test_ece_against_direct_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(4, (500,), generator=g)
    conf, pred = probs.max(1)
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.sum().item() / 500 * abs((pred[sel] == labels[sel]).double().mean().item() - conf[sel].mean().item())
    assert expected_calibration_error(probs, labels, 10) == pytest.approx(ece, abs=1e-12)
    perfect = torch.eye(4, dtype=torch.float64)[labels]
    assert expected_calibration_error(perfect, labels) == 0.0
    assert calibration_bins(probs, labels, 10)["count"].sum() == 500
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels[:3])


def test_viz_functions_draw():
    import matplotlib.pyplot as plt

    c = compare(lambda s, seed: {"acc": s + 0.01 * seed, "history": _fake_history(s)}, {"a": 0.1, "b": 0.2},
                seeds=[0, 1, 2], progress=False)
    fig, axes = plt.subplots(1, 5)
    tricklib.plot_curves(c, "val_loss", ax=axes[0])
    tricklib.bars(c, "acc", ax=axes[1])
    tricklib.paired_diffs(c, "acc", "a", ["b"], ax=axes[2])
    tricklib.plot_schedules({"cos": tricklib.cosine(10)}, 10, ax=axes[3])
    tricklib.draw_boxes(torch.tensor([[1.0, 1, 5, 5]]), torch.tensor([0.5]), image=torch.zeros(8, 8), ax=axes[4])
    assert len(axes[0].lines) == 2 * 4 and len(axes[4].patches) == 1
    plt.close(fig)


def _fake_history(shift):
    h = tricklib.History()
    h.epoch["val_loss"].extend([1 + shift, 0.5 + shift, 0.2 + shift])
    return h


def test_fit_clip_by_value_matches_manual_step():
    X, y = toy_2d("moons", 64, seed=0)
    seed_everything(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    manual = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    manual.load_state_dict(model.state_dict())
    h = fit(model, (X, y), epochs=1, lr=0.5, batch_size=64, optimizer=torch.optim.SGD, clip_grad_value=0.01,
            device="cpu")
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))  # fit's shuffle for seed=0
    loss = torch.nn.functional.cross_entropy(manual(X[order]), y[order])
    loss.backward()
    raw_norm = torch.nn.utils.get_total_norm([p.grad for p in manual.parameters()])
    torch.nn.utils.clip_grad_value_(manual.parameters(), 0.01)
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.5 * p.grad
    for a, b in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)
    assert h.step["grad_norm"][0] == pytest.approx(raw_norm.item(), rel=1e-6)  # recorded before clipping


def test_plot_curves_skips_runs_without_a_series():
    import matplotlib.pyplot as plt

    diverged = tricklib.History()
    diverged.step["loss"].append(float("nan"))
    fig, ax = plt.subplots()
    tricklib.plot_curves({"a": [_fake_history(0.0), diverged]}, "val_loss", ax=ax)
    assert len(ax.lines) == 2  # one seed line and the mean
    with pytest.raises(ValueError, match="no epoch series"):
        tricklib.plot_curves({"b": [diverged]}, "val_loss", ax=ax)
    plt.close(fig)


def test_mlp_builder_layers_and_errors():
    torch.manual_seed(0)
    built = tricklib.mlp(4, 8, 3, activation=nn.Tanh)
    torch.manual_seed(0)
    by_hand = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    assert [type(m) for m in built] == [type(m) for m in by_hand]
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), by_hand.parameters()))
    for bad, error in [((4,), ValueError), ((4, 0, 2), ValueError), ((4, 2.5, 2), TypeError)]:
        with pytest.raises(error, match="sizes"):
            tricklib.mlp(*bad)


def test_median_times_ms_orders_work_and_rejects_bad_arguments():
    calls = []
    fast, slow = (lambda: calls.append(sum(range(1_000)))), (lambda: sum(range(200_000)))
    fast_ms, slow_ms = tricklib.median_times_ms([fast, slow], rounds=2, repeats=3, warmup=1)
    assert 0 < fast_ms < slow_ms
    assert len(calls) == 1 + 2 * 3  # warm-up, then rounds x repeats
    for bad, error in (({"rounds": 0}, ValueError), ({"repeats": 1.5}, TypeError), ({"warmup": -1}, ValueError),
                       ({"rounds": True}, TypeError)):
        with pytest.raises(error, match=next(iter(bad))):
            tricklib.median_times_ms([fast], **bad)
    with pytest.raises(TypeError):
        tricklib.median_times_ms([1.0])


# --- accuracy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target_shape", ["[N, 1]", "[N]"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.long, torch.bool, torch.uint8])
def test_accuracy_binary_one_logit(target_shape, dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 1, generator=g)
    truth = (logits > 0).squeeze(1)
    truth[:10] = ~truth[:10]                                 # 10 of 200 wrong: accuracy 0.95
    y = truth[:, None] if target_shape == "[N, 1]" else truth
    assert accuracy(logits, y.to(dtype)) == pytest.approx(0.95)
    assert accuracy(logits.squeeze(1), truth.to(dtype)) == pytest.approx(0.95)          # logits [N]
    assert accuracy(logits.view(20, 10, 1), y.reshape(20, 10, *y.shape[1:]).to(dtype)) == pytest.approx(0.95)


def test_accuracy_binary_soft_targets_count_from_one_half():
    logits = torch.tensor([[2.0], [-2.0], [1.0]])
    assert accuracy(logits, torch.tensor([[0.95], [0.05], [0.4]])) == pytest.approx(2 / 3)


def test_accuracy_multiclass_indices_and_one_hot():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 5, generator=g)
    y = logits.argmax(1)
    y[:30] = (y[:30] + 1) % 5
    assert accuracy(logits, y) == pytest.approx(0.9)
    assert accuracy(logits, y.to(torch.uint8)) == pytest.approx(0.9)
    assert accuracy(logits, y.double()) == pytest.approx(0.9)
    assert accuracy(logits, torch.nn.functional.one_hot(y, 5).float()) == pytest.approx(0.9)
    assert accuracy(logits.view(30, 10, 5), y.view(30, 10)) == pytest.approx(0.9)


@pytest.mark.parametrize("logits, y, error, match", [
    (torch.randn(4, 3), torch.zeros(4, 1, dtype=torch.long), ValueError, "shape"),
    (torch.randn(4, 1), torch.zeros(3), ValueError, "shape"),
    (torch.randn(4, 1), torch.zeros(4, 2), ValueError, "shape"),
    (torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), ValueError, r"\[0, 2\]"),
    (torch.randn(4, 3), torch.tensor([0.0, 1.5, 2.0, 0.0]), ValueError, "whole"),
    (torch.randn(4, 1), torch.tensor([0, 1, 2, 1]), ValueError, "0 or 1"),
    (torch.randn(4), torch.tensor([0.0, 1.0, float("nan"), 1.0]), ValueError, r"\[0, 1\]"),
    (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "no examples"),
    (torch.ones(4, 3, dtype=torch.long), torch.zeros(4), TypeError, "floating"),
    ([0.5], torch.zeros(1), TypeError, "logits"),
])
def test_accuracy_refuses_what_it_cannot_score(logits, y, error, match):
    with pytest.raises(error, match=match):
        accuracy(logits, y)


def test_fit_reports_the_true_accuracy_of_a_binary_model():
    """BCE-with-logits wants [N, 1] logits and [N, 1] float targets; val_acc must be the real accuracy."""
    X, y = toy_2d("gaussians", 600, noise=0.3, seed=0)
    y = y.float()[:, None]
    seed_everything(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    h = fit(model, (X, y), (X, y), epochs=20, lr=1e-2, loss_fn=torch.nn.functional.binary_cross_entropy_with_logits,
            device="cpu")
    truth = ((predict(model, X) > 0).float() == y).float().mean().item()
    assert truth > 0.9 and h.last("val_acc") == pytest.approx(truth)


# --- fit, predict and evaluate refuse what they cannot use -------------------------------------------------
def test_fit_and_predict_on_empty_data_say_so():
    model = nn.Linear(2, 2)
    X, y = torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="train holds no examples"):
        fit(model, (X, y), epochs=1, device="cpu")
    good = (torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="val holds no examples"):
        fit(model, good, (X, y), epochs=1, device="cpu")
    with pytest.raises(ValueError, match="X holds no examples"):
        predict(model, X)
    with pytest.raises(ValueError, match="X holds no examples"):
        evaluate(model, (X, y))


def test_predict_works_for_a_model_without_parameters_and_restores_its_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5))
    out = predict(model, torch.ones(5, 2), batch_size=2)
    assert torch.equal(out, torch.ones(5, 2)) and model.training


@pytest.mark.parametrize("reduction", ["none"])
def test_fit_with_a_per_example_loss_says_what_to_do(reduction):
    X, y = torch.randn(16, 2), (torch.rand(16) < 0.5).float()
    model = nn.Linear(2, 1)
    per_example = lambda logits, t: tricklib.focal_loss(logits.squeeze(-1), t, reduction=reduction)
    with pytest.raises(ValueError, match=r"loss_fn must return one number.*shape \(16,\).*reduction='mean'"):
        fit(model, (X, y), epochs=1, batch_size=16, loss_fn=per_example, device="cpu")
    with pytest.raises(ValueError, match="loss_fn must return one number"):
        evaluate(model, (X, y), loss_fn=per_example)
    fit(model, (X, y), epochs=1, loss_fn=lambda z, t: per_example(z, t).mean(), device="cpu", metrics={})


def test_numpy_integers_count_as_counts():
    X, y = toy_2d("moons", 64, seed=0)
    h = fit(nn.Linear(2, 2), (X, y), epochs=np.int64(2), batch_size=np.int32(32), device="cpu")
    assert len(h.step["loss"]) == 4
    assert predict(nn.Linear(2, 2), X, batch_size=np.int64(10)).shape == (64, 2)
    assert tricklib.mlp(np.int64(4), 8, np.int16(2))[-1].out_features == 2
    seed_everything(np.int64(3))
    assert tricklib.median_times_ms([lambda: None], rounds=np.int64(1), repeats=np.int8(2), warmup=np.int64(0))
    assert tricklib.warmup(tricklib.cosine(10), np.int64(5))(0) == 0.0
    assert tricklib.linear_scaling(0.1, np.int64(512)) == pytest.approx(0.2)
    assert len(tricklib.random_points({"lr": (0.0, 1.0)}, np.int64(3), generator=np.int64(0))) == 3
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    ap = tricklib.detection_eval.detection_metrics([gt], [torch.ones(1)], [gt], max_detections=np.int64(100))["ap"]
    assert ap.item() == pytest.approx(1.0)
    assert len(tricklib.scenes.crowded_scene(np.int64(4), group_size=np.int32(2))) == 4
    for bad in (2.0, True, np.bool_(True), "3"):
        with pytest.raises(TypeError, match="epochs"):
            fit(nn.Linear(2, 2), (X, y), epochs=bad, device="cpu")
