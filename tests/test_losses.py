"""focal_loss against torchvision.ops.sigmoid_focal_loss."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from tricklib import focal_loss


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.75, 1.0), (0.25, 5.0)])
def test_matches_torchvision_values_and_gradients(seed, reduction, alpha, gamma):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(64, 5, generator=g, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(64, 5, generator=g) < 0.2).double()
    ours = focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    (grad_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    (grad_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_alpha_none_is_torchvision_alpha_minus_one():
    logits, targets = torch.randn(20), (torch.rand(20) < 0.5).float()
    torch.testing.assert_close(focal_loss(logits, targets, alpha=None), sigmoid_focal_loss(logits, targets, alpha=-1))


def test_gamma_zero_no_alpha_is_bce():
    logits, targets = torch.randn(30), (torch.rand(30) < 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(focal_loss(logits, targets, alpha=None, gamma=0.0), bce)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_half_precision_close_to_torchvision_fp32(dtype):
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
def test_extreme_logits_stay_finite(gamma):
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    loss = focal_loss(logits, targets, gamma=gamma)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert loss[0] == 0 and loss[1] == 0          # confident and right: no loss
    assert loss[2] > 1e3 and loss[3] > 1e3        # confident and wrong: huge loss, not inf


def test_easy_examples_are_down_weighted():
    logits = torch.tensor([4.0, 0.0])  # an easy positive (p≈0.98) and a hard one (p=0.5)
    targets = torch.ones(2)
    ratio_fl = focal_loss(logits, targets, alpha=None, gamma=2.0)
    ratio_ce = focal_loss(logits, targets, alpha=None, gamma=0.0)
    assert (ratio_fl[0] / ratio_fl[1]) < (ratio_ce[0] / ratio_ce[1]) / 100


def test_empty_input():
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
