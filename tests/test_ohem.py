"""OHEM and top-k loss (chapters/part5_losses/ohem.ipynb) against plain-torch references."""
import math

import pytest
import torch

from tricklib import ohem_loss, topk_loss


def sorted_reference(loss: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest losses by a full sort, largest first."""
    return loss.sort(descending=True).values[:k]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_topk_loss_equals_topk_and_sort(seed, reduction):
    g = torch.Generator().manual_seed(seed)
    loss = torch.rand(50, generator=g) * 3
    k = 1 + seed * 7
    ref = sorted_reference(loss, k)
    expected = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    torch.testing.assert_close(topk_loss(loss, k, reduction=reduction), expected)
    torch.testing.assert_close(topk_loss(loss, k, reduction="none"), loss.topk(k).values)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_reaches_only_the_kept_examples(seed, reduction):
    g = torch.Generator().manual_seed(seed)
    loss = (torch.rand(40, generator=g) * 2).requires_grad_()
    keep = 0.25
    out = ohem_loss(loss, keep, reduction=reduction)
    (grad,) = torch.autograd.grad(out, loss)
    k = math.ceil(keep * 40)
    kept = loss.detach().topk(k).indices
    expected = torch.zeros(40)
    expected[kept] = 1 / k if reduction == "mean" else 1.0
    torch.testing.assert_close(grad, expected)
    # the same gradient as the popular one-liner's, as a loss over the kept examples
    one_liner = loss[loss.detach().argsort()[int(40 * (1 - keep)):]]
    (grad_ref,) = torch.autograd.grad(one_liner.mean() if reduction == "mean" else one_liner.sum(), loss)
    torch.testing.assert_close(grad, grad_ref)


@pytest.mark.parametrize("n", [1, 3, 7, 10, 64, 100, 257])
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_ohem_equals_the_argsort_one_liner_with_keep_fraction_one_minus_rate(n, rate):
    loss = torch.rand(n, generator=torch.Generator().manual_seed(n))
    one_liner = loss[loss.argsort()[int(n * rate):]]
    keep = 1 - rate
    # the one-liner keeps N - floor(rate N) examples, ohem_loss ceil(keep N), rounded first: 1 - 0.7 is
    # 0.30000000000000004, and an unrounded ceiling would keep 31 of 100
    assert ohem_loss(loss, keep, reduction="none").numel() == one_liner.numel()
    torch.testing.assert_close(ohem_loss(loss, keep), one_liner.mean())
    torch.testing.assert_close(ohem_loss(loss, keep, reduction="none"), one_liner.sort(descending=True).values)


def test_ohem_is_topk_with_k_the_ceiling_of_the_fraction():
    loss = torch.rand(37, generator=torch.Generator().manual_seed(0))
    for keep in (0.01, 0.1, 0.27, 0.5, 0.99, 1.0):
        k = max(1, math.ceil(keep * 37))
        torch.testing.assert_close(ohem_loss(loss, keep), topk_loss(loss, k))
    torch.testing.assert_close(ohem_loss(loss, 1.0), loss.mean())


def test_ties_keep_exactly_k_and_the_value_is_unique():
    loss = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.5], requires_grad=True)
    out = topk_loss(loss, 2)
    assert out.item() == 2.0  # whichever two of the tied 2.0s are kept, the loss is the same
    (grad,) = torch.autograd.grad(out, loss)
    assert grad.sum().item() == pytest.approx(1.0)
    assert (grad > 0).sum().item() == 2
    assert grad[[0, 4]].tolist() == [0.0, 0.0]
    assert ohem_loss(torch.full((8,), 3.0), 0.25).item() == 3.0


def test_empty_input_gives_a_differentiable_zero():
    empty = torch.zeros(0, requires_grad=True)
    for out in (topk_loss(empty, 3), ohem_loss(empty, 0.5), topk_loss(empty, 3, reduction="sum")):
        assert out.item() == 0.0
        (grad,) = torch.autograd.grad(out, empty)
        assert grad.shape == (0,)
    assert topk_loss(empty, 3, reduction="none").shape == (0,)


def test_k_larger_than_n_keeps_everything():
    loss = torch.rand(5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(topk_loss(loss, 99), loss.mean())
    torch.testing.assert_close(topk_loss(loss, 99, reduction="sum"), loss.sum())
    # one example always survives a tiny fraction
    assert ohem_loss(loss, 1e-9, reduction="none").numel() == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision(dtype):
    loss32 = torch.rand(64, generator=torch.Generator().manual_seed(2)) * 4
    loss = loss32.to(dtype).requires_grad_()
    out = ohem_loss(loss, 0.25)
    assert out.dtype == dtype
    ref = sorted_reference(loss.detach().float(), 16).mean()
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-6}[dtype]
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol)
    (grad,) = torch.autograd.grad(out, loss)
    assert grad.dtype == dtype and (grad > 0).sum().item() == 16


def test_loss_with_a_fixed_k_grows_with_the_batch_and_ohem_does_not():
    g = torch.Generator().manual_seed(3)
    small, large = torch.rand(64, generator=g), torch.rand(4096, generator=g)
    assert topk_loss(large, 16) > topk_loss(small, 16)
    assert abs(ohem_loss(large, 0.25) - ohem_loss(small, 0.25)) < 0.05


def test_bad_input_is_refused_naming_the_argument():
    loss = torch.rand(5)
    with pytest.raises(ValueError, match="k must be"):
        topk_loss(loss, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_loss(loss, 2.0)
    with pytest.raises(TypeError, match="k must be an int"):
        topk_loss(loss, True)
    with pytest.raises(TypeError, match="loss must be a torch.Tensor"):
        ohem_loss([0.1, 0.2], 0.5)
    with pytest.raises(TypeError, match="floating"):
        ohem_loss(torch.arange(5), 0.5)
    with pytest.raises(ValueError, match="dimension"):
        topk_loss(torch.rand(2, 3), 2)
    with pytest.raises(TypeError, match="keep_fraction"):
        ohem_loss(loss, "0.5")
    with pytest.raises(ValueError, match="reduction"):
        ohem_loss(loss, 0.5, reduction="max")
