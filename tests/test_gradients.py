"""Per-layer gradient norms, the fit callback's ordering, clipping through fit, and the baselines."""
import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from torch import nn

import tricklib
from tricklib import GradNormRecorder, fit, layer_grad_norms, linear_baseline, majority_baseline


def deep_net(seed, width=8, depth=4, act=nn.Sigmoid):
    torch.manual_seed(seed)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


def data(seed, n=64, width=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, width, generator=g) * 3, torch.randint(3, (n,), generator=g)


@pytest.mark.parametrize("seed", range(3))
def test_layer_norms_equal_a_manual_computation(seed):
    model = deep_net(seed)
    X, y = data(seed)
    F.cross_entropy(model(X), y).backward()
    norms = layer_grad_norms(model)
    linears = [(str(i), m) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    assert list(norms) == [name for name, _ in linears]               # input layer first
    for name, layer in linears:
        manual = torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()]).norm().item()
        assert math.isclose(norms[name], manual, rel_tol=1e-6)
    total = math.sqrt(sum(v ** 2 for v in norms.values()))
    assert math.isclose(total, nn.utils.get_total_norm([p.grad for p in model.parameters()]).item(), rel_tol=1e-6)


def test_deep_sigmoid_gradients_vanish_towards_the_input():
    model = deep_net(0, width=32, depth=8)
    X, y = data(0, width=32)
    F.cross_entropy(model(X), y).backward()
    norms = list(layer_grad_norms(model).values())
    assert norms[0] < norms[-1] / 100                                  # sigma' <= 1/4 per layer


def test_layers_without_gradient_are_left_out_and_recorded_as_nan():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    assert layer_grad_norms(model) == {}
    model(torch.randn(3, 2)).sum().backward()
    assert list(layer_grad_norms(model)) == ["1"]
    frozen = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    rec = GradNormRecorder(frozen)
    frozen[1](torch.randn(3, 2)).sum().backward()
    rec.record()
    assert math.isnan(rec.norms["0"][0]) and rec.norms["1"][0] > 0


@pytest.mark.parametrize("seed", range(3))
def test_recorder_in_fit_equals_manual_steps(seed):
    """fit's callbacks run after optimizer.step(); the gradients are still populated then."""
    X, y = data(seed)
    model = deep_net(seed)
    manual_model = copy.deepcopy(model)
    rec = GradNormRecorder(model)
    fit(model, (X, y), epochs=2, lr=0.1, optimizer=torch.optim.SGD, batch_size=len(y), callbacks=[rec],
        seed=seed, device="cpu")
    opt = torch.optim.SGD(manual_model.parameters(), lr=0.1)
    expected = []
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(manual_model(X), y).backward()
        expected.append(layer_grad_norms(manual_model))
        opt.step()
    assert rec.as_tensor().shape == (2, 5)
    for step, exp in enumerate(expected):
        for name, value in exp.items():
            assert math.isclose(rec.norms[name][step], value, rel_tol=1e-4)


def one_step(clip, seed):
    """One full-batch SGD step through fit and by hand with torch's clipping utility."""
    X, y = data(seed)
    model = deep_net(seed, act=nn.ReLU)
    with torch.no_grad():                       # large weights: large gradients, so clipping bites
        for p in model.parameters():
            p.mul_(4)
    manual = copy.deepcopy(model)
    rec = GradNormRecorder(model)
    history = fit(model, (X, y), epochs=1, lr=0.01, optimizer=torch.optim.SGD, batch_size=len(y),
                  callbacks=[rec], seed=seed, device="cpu", **clip)
    F.cross_entropy(manual(X), y).backward()
    raw = nn.utils.get_total_norm([p.grad for p in manual.parameters()]).item()
    if "clip_grad_value" in clip:
        nn.utils.clip_grad_value_(manual.parameters(), clip["clip_grad_value"])
    else:
        nn.utils.clip_grad_norm_(manual.parameters(), clip["clip_grad_norm"])
    clipped = [p.grad.clone() for p in manual.parameters()]
    torch.optim.SGD(manual.parameters(), lr=0.01).step()
    return model, manual, history, rec, raw, clipped


@pytest.mark.parametrize("seed", range(3))
def test_clip_by_value_through_fit_equals_clip_grad_value_(seed):
    model, manual, history, rec, raw, clipped = one_step({"clip_grad_value": 0.0625}, seed)
    for p, q in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(p, q)
    assert max(g.abs().max().item() for g in clipped) == 0.0625           # clipping was active
    assert math.isclose(history.step["grad_norm"][0], raw, rel_tol=1e-5)   # history: the raw norm
    for p, g in zip(model.parameters(), clipped):                            # recorder: clipped grads
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("seed", range(3))
def test_clip_by_norm_through_fit_equals_clip_grad_norm_(seed):
    model, manual, history, rec, raw, clipped = one_step({"clip_grad_norm": 1.0}, seed)
    assert raw > 1.0                                                         # clipping was active
    for p, q in zip(model.parameters(), manual.parameters()):
        torch.testing.assert_close(p, q)
    recorded_total = math.sqrt(sum(v[0] ** 2 for v in rec.norms.values()))
    assert math.isclose(recorded_total, 1.0, rel_tol=1e-4)                   # the recorder sees the clipped norm
    assert math.isclose(history.step["grad_norm"][0], raw, rel_tol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_baselines_match_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(120, 4, generator=g)
    y = (X[:, 0] + 0.5 * torch.randn(120, generator=g) > 0.8).long() + (X[:, 1] > 1).long()
    tr, te = (X[:80], y[:80]), (X[80:], y[80:])
    dummy = DummyClassifier(strategy="most_frequent").fit(tr[0].numpy(), tr[1].numpy())
    assert majority_baseline(tr[1], te[1]) == pytest.approx(dummy.score(te[0].numpy(), te[1].numpy()))
    ref = LogisticRegression(max_iter=5000).fit(tr[0].double().numpy(), tr[1].numpy())
    assert linear_baseline(tr, te) == pytest.approx(ref.score(te[0].double().numpy(), te[1].numpy()))
    assert linear_baseline(tr, te) > majority_baseline(tr[1], te[1])


def test_errors():
    with pytest.raises(TypeError, match="nn.Module"):
        GradNormRecorder("model")
    with pytest.raises(TypeError, match="nn.Module"):
        layer_grad_norms(torch.zeros(2))
    with pytest.raises(ValueError, match="non-empty"):
        majority_baseline(torch.tensor([], dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="1 dimension"):
        majority_baseline(torch.zeros(2, 2, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="same length"):
        linear_baseline((torch.randn(5, 2), torch.zeros(4, dtype=torch.long)), (torch.randn(2, 2), torch.zeros(2)))


def test_dead_fraction_counts_units_silent_on_every_example():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU())
    with torch.no_grad():
        model[0].bias[:2] = -1e3          # units 0 and 1 of the first ReLU: dead on any input
        model[2].bias[:] = 1e3            # the second ReLU: alive
    x = torch.randn(50, 3)
    manual = (model[1](model[0](x)) > 0).any(0).logical_not().float().mean().item()
    assert manual == 0.5
    assert tricklib.dead_fraction(model, x, per_layer=True) == {"1": 0.5, "3": 0.0}
    assert tricklib.dead_fraction(model, x) == 2 / 6
    assert tricklib.dead_fraction(model, x, batch_size=7) == 2 / 6   # batching does not change the count
    model.train()
    tricklib.dead_fraction(model, x)
    assert model.training and not model[1]._forward_hooks     # left as it was
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
    with torch.no_grad():
        conv[0].bias[0] = -1e3
    assert tricklib.dead_fraction(conv, torch.randn(4, 1, 8, 8)) == 1 / 3   # a channel dead at every position
    with pytest.raises(ValueError, match="no"):
        tricklib.dead_fraction(nn.Linear(3, 2), x)
    with pytest.raises(ValueError, match="empty"):
        tricklib.dead_fraction(model, x[:0])
