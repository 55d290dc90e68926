"""Adversarial training (the adversarial-training chapter): PGD against a plain loop and a hand
computation, and :func:`tricklib.adversarial_batch_transform` in and out of ``fit``."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tricklib import adversarial_batch_transform, fgsm, fit, pgd


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _pgd_loop(model, x, y, epsilon, step_size, steps, clamp, noise):
    """Madry et al.'s PGD written out one example and one step at a time (the reference)."""
    out = []
    for i in range(len(x)):
        x0 = x[i:i + 1]
        xa = x0 + (2 * noise[i:i + 1] - 1) * epsilon
        for _ in range(steps):
            if clamp is not None:
                xa = xa.clamp(*clamp)
            xa = xa.detach().requires_grad_()
            loss = F.cross_entropy(model(xa), y[i:i + 1])
            (grad,) = torch.autograd.grad(loss, xa)
            xa = xa.detach() + step_size * grad.sign()
            xa = torch.minimum(torch.maximum(xa, x0 - epsilon), x0 + epsilon)  # project onto the ball
        out.append(xa.clamp(*clamp) if clamp is not None else xa)
    return torch.cat(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("clamp", [None, (0.0, 1.0)])
def test_pgd_equals_a_plain_loop(seed, clamp):
    model = _mlp(seed).double()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(20, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (20,), generator=g)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ours = pgd(model, x, y, 0.2, 0.05, steps=7, clamp=clamp, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, _pgd_loop(model, x, y, 0.2, 0.05, 7, clamp, noise))


def test_pgd_reaches_the_hand_computed_corner_of_a_linear_model():
    # binary linear model: the loss of class y grows along -(w_y - w_other), so the worst point of the
    # L∞ ball is the corner x - ε sign(w_y - w_other); PGD from any start gets there when steps·η ≥ 2ε
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    x, y = torch.randn(8, 5), torch.tensor([0, 1] * 4)
    w = model.weight.detach()
    corner = x - 0.3 * (w[y] - w[1 - y]).sign()
    torch.testing.assert_close(pgd(model, x, y, 0.3, 0.1, steps=6), corner)
    torch.testing.assert_close(fgsm(model, x, y, 0.3), corner)  # one step is exact for a linear model


def test_pgd_one_step_with_random_start_is_wong_fgsm_rs():
    model = _mlp()
    x, y = torch.rand(16, 6), torch.randint(0, 3, (16,))
    delta = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) - 1) * 0.1
    start = x + delta
    step = start + 0.125 * fgsm(model, start, y, 1.0).sub(start).sign()  # δ + α sign(∇), α = 1.25 ε
    expected = torch.minimum(torch.maximum(step, x - 0.1), x + 0.1)
    torch.testing.assert_close(pgd(model, x, y, 0.1, 0.125, steps=1, generator=torch.Generator().manual_seed(3)),
                               expected)


def test_pgd_with_zero_epsilon_returns_the_input():
    model = _mlp()
    x, y = torch.rand(4, 6), torch.randint(0, 3, (4,))
    torch.testing.assert_close(pgd(model, x, y, 0.0, 0.01, steps=3), x)


class _Recorder(torch.nn.Module):
    """An MLP with dropout that records the train/eval mode of every forward pass."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(16, 3))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.net(x)


def test_batch_transform_attacks_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    model = _Recorder()
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    transform = adversarial_batch_transform(model, pgd, epsilon=0.1, step_size=0.04, steps=3, clamp=(0.0, 1.0),
                                            generator=torch.Generator().manual_seed(0))
    model.train()
    x_adv, y_out = transform(x, y)
    assert model.training and model.modes == [False] * 3 and y_out is y
    model.eval()
    expected = pgd(model, x, y, 0.1, 0.04, steps=3, clamp=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x_adv, expected)
    transform(x, y)
    assert not model.training  # eval stays eval
    assert all(p.grad is None for p in model.parameters())


def test_batch_transform_restores_the_mode_when_the_attack_fails():
    model = _mlp().train()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        adversarial_batch_transform(model, broken)(torch.rand(2, 6), torch.tensor([0, 1]))
    assert model.training


def test_batch_transform_trains_in_fit_and_raises_robust_accuracy():
    # two Gaussian blobs 1.2 apart per coordinate; an attack of ε = 0.45 per coordinate
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    x = torch.randn(400, 6, generator=g) * 0.3 + y[:, None] * 1.2
    robust = {}
    for name in ("clean", "pgd"):
        model = _mlp()
        transform = None if name == "clean" else adversarial_batch_transform(model, epsilon=0.45, step_size=0.15,
                                                                              steps=5)
        history = fit(model, (x, y), epochs=15, lr=1e-2, batch_transform=transform, device="cpu")
        assert history.diverged_at is None
        x_adv = pgd(model.eval(), x, y, 0.45, 0.05, steps=20, generator=torch.Generator().manual_seed(1))
        robust[name] = (model(x_adv).argmax(1) == y).float().mean().item()
    assert robust["pgd"] > robust["clean"] + 0.03


def test_batch_transform_checks_its_arguments():
    with pytest.raises(TypeError, match="attack"):
        adversarial_batch_transform(_mlp(), attack="pgd")
    with pytest.raises(TypeError, match="model"):
        adversarial_batch_transform(lambda x: x)
