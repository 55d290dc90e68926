"""DropConnect (tricklib.drop_connect) against F.dropout on the weight, its mask statistics and gradients."""
import pytest
import torch
import torch.nn.functional as F

from tricklib import drop_connect


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(16, 8), (8, 4, 3, 3), (5,)])
def test_equals_dropout_on_the_weight_draw_for_draw(p, shape):
    w = torch.randn(shape, dtype=torch.float64)
    torch.manual_seed(7)
    ours = drop_connect(w, p)
    torch.manual_seed(7)
    ref = F.dropout(w, p, training=True)
    assert torch.equal(ours, ref)


def test_channels_last_weight_equals_dropout():
    w = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    ours = drop_connect(w, 0.3)
    torch.manual_seed(1)
    assert torch.equal(ours, F.dropout(w, 0.3))


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_mask_statistics_and_expectation(p):
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    draws = torch.stack([drop_connect(w, p) for _ in range(2000)])
    dropped = (draws == 0).float().mean().item()
    assert abs(dropped - p) < 0.01                                   # a share p of the weights is zeroed
    ratio = draws / w                                                # every kept weight is w / (1 - p)
    torch.testing.assert_close(ratio[draws != 0], torch.full_like(ratio[draws != 0], 1 / (1 - p)))
    # the mean over draws is w: within 4 standard errors for (nearly) every weight
    se = w.abs() * (p / (1 - p) / len(draws)) ** 0.5
    assert ((draws.mean(0) - w).abs() <= 4 * se + 1e-6).float().mean() > 0.999
    # entries are dropped independently, not a whole row or column at once (as Dropout of a unit would)
    mask = (drop_connect(torch.ones(400, 400), p) != 0).float()
    for share in (mask.mean(dim=0), mask.mean(dim=1)):
        assert (share - (1 - p)).abs().max() < 0.1


def test_evaluation_and_zero_rate_are_the_identity():
    w = torch.randn(6, 5)
    assert drop_connect(w, 0.5, training=False) is w
    assert drop_connect(w, 0.0) is w
    assert torch.equal(drop_connect(w, 1.0), torch.zeros_like(w))


def test_gradient_flows_only_through_kept_weights():
    torch.manual_seed(3)
    w = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.manual_seed(11)
    out = F.linear(x, drop_connect(w, 0.4))
    out.sum().backward()
    torch.manual_seed(11)
    mask = torch.empty_like(w).bernoulli_(0.6)
    expected = mask / 0.6 * x.sum(0)[None, :]                       # d/dW of sum(x (M ⊙ W / keep)ᵀ)
    torch.testing.assert_close(w.grad, expected)
    assert (w.grad[mask == 0] == 0).all()
    assert torch.autograd.gradcheck(lambda v: F.linear(x, v * mask / 0.6), (w.detach().requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    w = torch.randn(32, 16).to(dtype)
    torch.manual_seed(2)
    out = drop_connect(w, 0.25)
    assert out.dtype == dtype
    torch.manual_seed(2)
    assert torch.equal(out, F.dropout(w, 0.25))


def test_empty_weight():
    assert drop_connect(torch.empty(0, 3), 0.5).shape == (0, 3)


def test_bad_input():
    with pytest.raises(TypeError, match="weight"):
        drop_connect([[1.0, 2.0]], 0.5)
    with pytest.raises(TypeError, match="weight"):
        drop_connect(torch.ones(3, 3, dtype=torch.long), 0.5)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p"):
            drop_connect(torch.ones(3), p)
    with pytest.raises(TypeError, match="p"):
        drop_connect(torch.ones(3), "0.5")
