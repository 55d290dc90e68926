"""focal_loss against torchvision.ops.sigmoid_focal_loss, through the compiled kernel and the torch ops."""
import math

import numpy as np
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import tricklib.losses as losses_module
from tricklib import focal_loss


@pytest.fixture(params=["compiled", "torch"])
def path(request, monkeypatch):
    """Run a test through the numba kernel (CPU) and through the torch ops (CUDA, or no numba)."""
    if request.param == "compiled" and losses_module.numba is None:
        pytest.skip("numba is not installed")
    if request.param == "torch":
        monkeypatch.setattr(losses_module, "numba", None)
    return request.param


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 5.0)])
def test_matches_torchvision_values_and_gradients(path, seed, reduction, alpha, gamma):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(64, 5, generator=g, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(64, 5, generator=g) < 0.2).double()
    ours = focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    (grad_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_alpha_none_is_torchvision_alpha_minus_one(path):
    logits, targets = torch.randn(20), (torch.rand(20) < 0.5).float()
    torch.testing.assert_close(focal_loss(logits, targets, alpha=None), sigmoid_focal_loss(logits, targets, alpha=-1))


def test_gamma_zero_no_alpha_is_bce(path):
    logits, targets = torch.randn(30), (torch.rand(30) < 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(focal_loss(logits, targets, alpha=None, gamma=0.0), bce)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_half_precision_close_to_torchvision_fp32(path, dtype):
    g = torch.Generator().manual_seed(0)
    logits32 = 2 * torch.randn(200, generator=g)
    targets = (torch.rand(200, generator=g) < 0.3).float()
    ours = focal_loss(logits32.to(dtype), targets.to(dtype))
    assert ours.dtype == dtype
    ref = sigmoid_focal_loss(logits32, targets)
    tol = {torch.float32: 1e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(ours.float(), ref, rtol=tol, atol=tol)
    if dtype == torch.bfloat16:
        torch.testing.assert_close(ours, sigmoid_focal_loss(logits32.to(dtype), targets.to(dtype)), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_extreme_logits_stay_finite(path, gamma):
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = focal_loss(logits, targets, gamma=gamma)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert loss[0] == 0 and loss[1] == 0          # confident and right: no loss
    assert loss[2] > 1e3 and loss[3] > 1e3        # confident and wrong: huge loss, not inf


def test_easy_examples_are_down_weighted(path):
    logits = torch.tensor([4.0, 0.0])  # an easy positive (p≈0.98) and a hard one (p=0.5)
    targets = torch.ones(2)
    ratio_fl = focal_loss(logits, targets, alpha=None, gamma=2.0)
    ratio_ce = focal_loss(logits, targets, alpha=None, gamma=0.0)
    assert (ratio_fl[0] / ratio_fl[1]) < (ratio_ce[0] / ratio_ce[1]) / 100


def test_empty_input(path):
    logits = torch.zeros(0, requires_grad=True)
    for reduction in ("none", "mean", "sum"):
        out = focal_loss(logits, torch.zeros(0), reduction=reduction)
        assert torch.isfinite(out).all()
    focal_loss(logits, torch.zeros(0), reduction="mean").backward()


@pytest.mark.parametrize("kwargs,exc", [
    ({"reduction": "avg"}, ValueError), ({"gamma": -1.0}, ValueError), ({"alpha": 1.5}, ValueError),
    ({"alpha": -1.0}, ValueError),
])
def test_invalid_arguments(kwargs, exc):
    with pytest.raises(exc):
        focal_loss(torch.randn(4), torch.ones(4), **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        focal_loss(torch.randn(4), torch.ones(5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        focal_loss(torch.randn(4), torch.full((4,), 2.0))
    with pytest.raises(TypeError):
        focal_loss(torch.ones(4, dtype=torch.long), torch.ones(4))


# --- the hand-written gradient ----------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [None, 0.25, 0.9])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 3.7])
def test_gradcheck_logits_and_targets_float64(path, alpha, gamma):
    g = torch.Generator().manual_seed(int(10 * gamma) + (0 if alpha is None else int(100 * alpha)))
    logits = (3 * torch.randn(40, generator=g, dtype=torch.float64)).requires_grad_()
    targets = (0.05 + 0.9 * torch.rand(40, generator=g, dtype=torch.float64)).requires_grad_()  # soft, inside (0, 1)
    assert torch.autograd.gradcheck(lambda z, y: focal_loss(z, y, alpha=alpha, gamma=gamma), (logits, targets))
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, targets.detach().round(), alpha=alpha, gamma=gamma,
                                                         reduction="sum"), (logits,))


@pytest.mark.parametrize("gamma", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_target_gradient_at_exactly_zero_and_one_is_finite_and_equals_torchvision(gamma, alpha):
    """Distillation from a saturated teacher: targets of exactly 0 or 1 that require grad."""
    g = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(200, generator=g, dtype=torch.float64)
    targets = (torch.rand(200, generator=g, dtype=torch.float64) < 0.3).double().requires_grad_()
    (ours,) = torch.autograd.grad(focal_loss(logits, targets, alpha=alpha, gamma=gamma).sum(), targets)
    ref_targets = targets.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(sigmoid_focal_loss(logits, ref_targets, alpha=-1 if alpha is None else alpha,
                                                    gamma=gamma).sum(), ref_targets)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 1.0, 2.0, 5.0])
def test_extreme_logits_and_hard_targets_keep_every_gradient_finite(path, dtype, gamma):
    z = torch.tensor([1e4, -1e4, 1e4, -1e4, 80.0, -80.0, 0.0, 20.0, -20.0]).repeat(3)
    y = torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.3, 0.7]).repeat_interleave(1).repeat(3)
    y[9:18], y[18:] = 1 - y[:9], y[:9].round()
    z, y = z.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
    loss = focal_loss(z, y, gamma=gamma)
    grad_z, grad_y = torch.autograd.grad(loss.sum(), (z, y))
    assert loss.dtype == dtype and grad_z.dtype == dtype and grad_y.dtype == dtype
    for t in (loss, grad_z, grad_y):
        assert torch.isfinite(t).all()
    if dtype == torch.float64:   # float64 keeps 1e4 exactly: the confidently wrong cost CE = 1e4
        assert loss[2 * 9 + 0].item() == pytest.approx(0.75 * 1e4, rel=1e-12)


def test_nan_targets_are_refused():
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        targets = torch.tensor([0.0, float("nan"), 1.0], dtype=dtype)
        with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\].*NaN"):
            focal_loss(torch.zeros(3, dtype=dtype), targets)
    with pytest.raises(ValueError, match="targets"):
        focal_loss(torch.zeros(2), torch.tensor([0.5, float("inf")]))


def test_bool_and_integer_targets_are_converted(path):
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    hard = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)) < 0.3
    expected = focal_loss(logits, hard.float())
    for targets in (hard, hard.to(torch.uint8), hard.long()):
        torch.testing.assert_close(focal_loss(logits, targets), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 0.5), (0.5, 1.0), (0.75, 3.0)])
def test_float32_matches_torchvision_values_and_gradients(path, shape, alpha, gamma):
    g = torch.Generator().manual_seed(len(shape))
    logits = (5 * torch.randn(shape, generator=g)).requires_grad_()
    targets = (torch.rand(shape, generator=g) < 0.2).float()
    targets.view(-1)[:2] = torch.tensor([0.3, 0.8])   # and a few soft targets
    ours = focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    ref = sigmoid_focal_loss(logits, targets, alpha=-1 if alpha is None else alpha, gamma=gamma)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0],
                               rtol=1e-5, atol=1e-6)


def test_double_backward_refuses_instead_of_a_wrong_answer():
    """A gradient penalty through focal_loss raises; it never differentiates a constant gradient silently."""
    logits = torch.randn(5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(5, dtype=torch.float64, requires_grad=True)
    loss = (focal_loss(logits, torch.ones(5, dtype=torch.float64)) * weights).sum()
    (grad,) = torch.autograd.grad(loss, logits, create_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        grad.pow(2).sum().backward()


def test_backward_twice_with_retained_graph_gives_the_same_gradient(path):
    logits = torch.randn(8, requires_grad=True)
    loss = focal_loss(logits, (torch.rand(8) < 0.5).float(), reduction="mean")
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], first, rtol=0, atol=0)


def test_non_contiguous_inputs(path):
    g = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(6, 9, generator=g)).t().requires_grad_()      # transposed: strides (1, 9)
    targets = (torch.rand(12, 9, generator=g)[::2] < 0.3).float().t()       # every other row, transposed
    ours = focal_loss(logits, targets)
    ref = sigmoid_focal_loss(logits, targets)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0],
                               rtol=1e-5, atol=1e-7)


def test_the_two_paths_agree_to_rounding(monkeypatch):
    """The kernel computes in float64 without cancellation, the torch ops as torchvision does."""
    if losses_module.numba is None:
        pytest.skip("numba is not installed")
    g = torch.Generator().manual_seed(7)
    logits = (6 * torch.randn(3000, generator=g, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(3000, generator=g, dtype=torch.float64) < 0.1).double()
    targets[:300] = torch.rand(300, generator=g, dtype=torch.float64)
    results = []
    for numba in (losses_module.numba, None):
        monkeypatch.setattr(losses_module, "numba", numba)
        for alpha, gamma in ((0.25, 2.0), (None, 0.0), (0.6, 1.0), (0.25, 0.7), (0.9, 4.5)):
            loss = focal_loss(logits, targets, alpha=alpha, gamma=gamma)
            results.append((loss, torch.autograd.grad(loss.sum(), logits)[0]))
    for (loss_a, grad_a), (loss_b, grad_b) in zip(results[:5], results[5:]):
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-10, atol=1e-14)


def test_compiled_log1p_is_within_3_ulp_of_libm():
    if losses_module.numba is None:
        pytest.skip("numba is not installed")
    numba = losses_module.numba

    @numba.njit
    def compiled(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = losses_module._log1p_unit(x[i])
        return out

    g = np.random.default_rng(0)
    x = np.concatenate([g.random(10**6), np.exp(-700 * g.random(10**6)), [0.0, 5e-324, 1e-300, 1e-17, 0.5, 1.0]])
    ours, libm = compiled(x), np.log1p(x)
    assert (ours[x == 0] == 0).all() and (np.abs(ours - libm) <= 3 * np.spacing(libm)).all()


def test_the_kernel_is_not_differentiated_twice_by_accident(path):
    """Inference (no grad) and training (grad) give the same loss."""
    logits, targets = torch.randn(50), (torch.rand(50) < 0.2).float()
    with torch.no_grad():
        plain = focal_loss(logits, targets)
    trained = focal_loss(logits.clone().requires_grad_(), targets)
    torch.testing.assert_close(plain, trained.detach(), rtol=0, atol=0)
