"""The L1 proximal step (tricklib.l1_prox_step) against scikit-learn's lasso, elastic net and L1 logistic regression.

Full-batch gradient descent on the data loss followed by ``l1_prox_step`` is ISTA; run to
convergence it must reach the minimiser scikit-learn's coordinate-descent and liblinear
solvers find, with the same support (the same weights exactly zero).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import ElasticNet, Lasso, LogisticRegression

from tricklib import l1_prox_step, soft_threshold


def regression(seed: int, n: int = 80, d: int = 20, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.zeros(d, dtype=torch.float64)
    w[:k] = torch.tensor([2.0, -1.5, 1.0, -0.5], dtype=torch.float64)[:k]
    return X, X @ w + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)


def ista(X: torch.Tensor, loss_fn, lam: float, l2: float = 0.0, steps: int = 3000) -> torch.Tensor:
    """Proximal gradient descent, written as a reader's loop: SGD on the data loss, then the prox step."""
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    lipschitz = float(torch.linalg.matrix_norm(X, 2) ** 2 / len(X))  # of the squared loss's gradient (1/(2n))
    lr = 1.0 / (lipschitz + l2)
    opt = torch.optim.SGD([w], lr=lr, weight_decay=l2)  # weight_decay: the L2 part of an elastic net
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(X @ w).backward()
        opt.step()
        l1_prox_step(w, lr, lam)
    return w.detach()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5])
def test_ista_reaches_sklearn_lasso(seed, alpha):
    X, y = regression(seed)
    # sklearn's Lasso minimises 1/(2n) ||y - Xw||^2 + alpha ||w||_1
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=100000).fit(X.numpy(), y.numpy()).coef_
    w = ista(X, lambda z: 0.5 * F.mse_loss(z, y), alpha).numpy()
    np.testing.assert_allclose(w, ref, atol=1e-7)
    assert ((w == 0) == (ref == 0)).all(), "not the same support"
    assert (w == 0).sum() > 0, "this lasso should have exact zeros"


@pytest.mark.parametrize("l1_ratio", [0.2, 0.5, 0.9])
def test_sgd_weight_decay_plus_prox_reaches_sklearn_elastic_net(l1_ratio):
    X, y = regression(3)
    alpha = 0.2
    # sklearn: 1/(2n) ||y - Xw||^2 + alpha l1_ratio ||w||_1 + alpha (1 - l1_ratio)/2 ||w||^2
    ref = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-12,
                     max_iter=100000).fit(X.numpy(), y.numpy()).coef_
    w = ista(X, lambda z: 0.5 * F.mse_loss(z, y), alpha * l1_ratio, l2=alpha * (1 - l1_ratio)).numpy()
    np.testing.assert_allclose(w, ref, atol=1e-7)
    assert ((w == 0) == (ref == 0)).all()


@pytest.mark.parametrize("C", [0.05, 0.2])
def test_ista_reaches_sklearn_l1_logistic_regression(C):
    g = torch.Generator().manual_seed(4)
    n, d = 200, 15
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(2 * X[:, 0] - X[:, 1])).double()
    # liblinear minimises C sum_i logloss_i + ||w||_1, i.e. mean logloss + ||w||_1 / (C n)
    ref = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", fit_intercept=False, tol=1e-12,
                             max_iter=100000).fit(X.numpy(), y.numpy()).coef_[0]
    w = ista(X, lambda z: F.binary_cross_entropy_with_logits(z, y), 1 / (C * n), steps=4000).numpy()
    np.testing.assert_allclose(w, ref, atol=1e-5)
    assert ((w == 0) == (ref == 0)).all()
    assert 0 < (w == 0).sum() < d


def test_prox_gives_exact_zeros_and_the_subgradient_does_not():
    X, y = regression(5)
    w_prox = ista(X, lambda z: 0.5 * F.mse_loss(z, y), 0.1, steps=2000)
    w = torch.zeros(X.shape[1], dtype=X.dtype, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(2000):  # the L1 term in the loss: its gradient is 0.1 sign(w)
        opt.zero_grad()
        (0.5 * F.mse_loss(X @ w, y) + 0.1 * w.abs().sum()).backward()
        opt.step()
    assert (w_prox == 0).sum() >= 10
    assert (w == 0).sum() == 0
    assert (w.detach().abs()[w_prox == 0] < 0.05).all()  # it hovers near 0 where the prox is exactly 0


def test_prox_step_in_place_on_parameters_and_lists():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 3)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    l1_prox_step(layer.weight, 0.5, 0.3)  # a Parameter that requires grad: changed in place, no autograd error
    assert torch.equal(layer.weight.detach(), soft_threshold(weight, 0.15))
    assert torch.equal(layer.bias.detach(), bias)
    assert layer.weight.requires_grad
    l1_prox_step(layer.parameters(), 1.0, 0.0)  # lam = 0 and lr = 0 change nothing
    l1_prox_step([layer.weight, layer.bias], 0.0, 5.0)
    assert torch.equal(layer.bias.detach(), bias)
    l1_prox_step(layer.parameters(), 1.0, 10.0)  # a threshold above every |w|: all exactly zero
    assert all((p == 0).all() for p in layer.parameters())
    l1_prox_step(torch.empty(0, 4), 0.1, 0.1)  # an empty tensor is fine


def test_per_row_strengths_broadcast():
    w = torch.tensor([[1.0, -0.3, 0.05], [1.0, -0.3, 0.05]])
    v = w.clone()
    l1_prox_step(v, 0.5, torch.tensor([[0.2], [1.0]]))  # thresholds 0.1 and 0.5, one per row
    torch.testing.assert_close(v, torch.tensor([[0.9, -0.2, 0.0], [0.5, 0.0, 0.0]]))
    torch.testing.assert_close(soft_threshold(w, torch.tensor([[0.1], [0.5]])), v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_prox_step_in_low_and_high_precision(dtype):
    torch.manual_seed(1)
    w = torch.randn(50)
    v = w.to(dtype)
    l1_prox_step(v, 0.1, 3.0)
    assert v.dtype == dtype
    ref = soft_threshold(w.double(), 0.3).to(dtype)  # the exact prox, rounded once
    eps = float(torch.finfo(dtype).eps)
    torch.testing.assert_close(v, ref, rtol=2 * eps, atol=2 * eps)
    assert torch.equal(v == 0, ref == 0)


def test_bad_input():
    w = torch.randn(3)
    with pytest.raises(ValueError, match="params is empty"):
        l1_prox_step([], 0.1, 0.1)
    gen = (p for p in [w])
    list(gen)
    with pytest.raises(ValueError, match="params is empty"):
        l1_prox_step(gen, 0.1, 0.1)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        l1_prox_step(torch.arange(3), 0.1, 0.1)
    with pytest.raises(TypeError, match=r"params\[1\]"):
        l1_prox_step([w, [1.0, 2.0]], 0.1, 0.1)
    with pytest.raises(ValueError, match="lr"):
        l1_prox_step(w, -0.1, 0.1)
    with pytest.raises(ValueError, match="lam"):
        l1_prox_step(w, 0.1, -1.0)
    with pytest.raises(ValueError, match="lam"):
        l1_prox_step(w, 0.1, torch.tensor([0.1, float("nan"), 0.1]))
    with pytest.raises(TypeError, match="lam"):
        l1_prox_step(w, 0.1, "0.1")
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold(w, torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="threshold"):
        soft_threshold(w, float("nan"))
    assert torch.equal(w, w)  # nothing was changed by a call that raised
