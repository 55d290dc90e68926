"""Label smoothing against F.cross_entropy(label_smoothing=...)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tricklib import label_smoothing_cross_entropy, logit_gap, optimal_logit_gap, smooth_labels


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torch_cross_entropy(seed, epsilon, reduction):
    g = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(32, 7, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(7, (32,), generator=g)
    ours = label_smoothing_cross_entropy(logits, targets, epsilon, reduction)
    ref = F.cross_entropy(logits, targets, label_smoothing=epsilon, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0])


def test_bf16_close_to_reference():
    logits = torch.randn(16, 5)
    targets = torch.randint(5, (16,))
    ours = label_smoothing_cross_entropy(logits.bfloat16(), targets, 0.1)
    torch.testing.assert_close(ours.float(), F.cross_entropy(logits, targets, label_smoothing=0.1), rtol=2e-2, atol=2e-2)


def test_smooth_labels_rows():
    y = smooth_labels(torch.tensor([0, 2]), 4, 0.2)
    torch.testing.assert_close(y.sum(1), torch.ones(2))
    assert y[0, 0] == pytest.approx(0.85) and y[0, 1] == pytest.approx(0.05)


@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.3])
def test_optimal_gap_minimises_loss(epsilon):
    C = 10
    gap = optimal_logit_gap(C, epsilon)
    gaps = torch.linspace(0, 3 * gap, 3001, dtype=torch.float64)
    logits = torch.zeros(len(gaps), C, dtype=torch.float64)
    logits[:, 0] = gaps
    loss = label_smoothing_cross_entropy(logits, torch.zeros(len(gaps), dtype=torch.long), epsilon, "none")
    assert gaps[loss.argmin()].item() == pytest.approx(gap, abs=3 * gap / 3000)
    assert math.isinf(optimal_logit_gap(C, 0.0))


def test_errors():
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]), epsilon=1.5)
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        smooth_labels(torch.tensor([0.0, 1.0]), 3)
    with pytest.raises(ValueError):
        label_smoothing_cross_entropy(torch.randn(3), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("seed", range(3))
def test_logit_gap_matches_direct(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(20, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(6, (20,), generator=g)
    for t, cls in ((targets, targets), (None, logits.argmax(1))):
        expected = torch.stack([row[c] - torch.cat([row[:c], row[c + 1:]]).mean() for row, c in zip(logits, cls)])
        torch.testing.assert_close(logit_gap(logits, t), expected)


@pytest.mark.parametrize("epsilon", [0.05, 0.1, 0.3])
def test_logit_gap_zero_gradient_at_optimum(epsilon):
    # logits whose gap is the optimal one (any shift, any true class) are a stationary point of the smoothed loss
    C = 5
    targets = torch.tensor([0, 1, 2, 4])
    shift = torch.randn(4, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = (shift + optimal_logit_gap(C, epsilon) * F.one_hot(targets, C)).requires_grad_()
    grad, = torch.autograd.grad(label_smoothing_cross_entropy(logits, targets, epsilon, "sum"), logits)
    # smooth_labels builds float32 targets, so "zero" is zero to ~1e-9; a wrong gap gives gradients ~1e-2
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-6, rtol=0)
    torch.testing.assert_close(logit_gap(logits.detach(), targets), torch.full((4,), optimal_logit_gap(C, epsilon),
                                                                              dtype=torch.float64))


def test_logit_gap_errors():
    with pytest.raises(ValueError):
        logit_gap(torch.randn(3, 1))
    with pytest.raises(ValueError):
        logit_gap(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        logit_gap(torch.randn(3, 4), torch.tensor([0, 1, 4]))
    with pytest.raises(TypeError):
        logit_gap(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError):
        logit_gap(torch.tensor([[1, 2], [3, 4]]))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.7])
def test_float64_agrees_with_torch_to_rounding(reduction, epsilon):
    """The smoothed targets were built in float32: float64 results were 1e-8 off."""
    g = torch.Generator().manual_seed(5)
    logits = (6 * torch.randn(64, 11, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(11, (64,), generator=g)
    ours = label_smoothing_cross_entropy(logits, targets, epsilon, reduction)
    ref = F.cross_entropy(logits, targets, label_smoothing=epsilon, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.autograd.grad(ours.sum(), logits)[0], torch.autograd.grad(ref.sum(), logits)[0],
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_classes_with_minus_inf_logits(dtype):
    logits = torch.randn(6, 5, dtype=dtype, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = -math.inf                                     # class 3 masked out everywhere
    targets = torch.tensor([0, 1, 2, 4, 0, 1])
    for epsilon in (0.0, 0.2):
        z = logits.clone().requires_grad_()
        ours = label_smoothing_cross_entropy(z, targets, epsilon, "none")
        ref = F.cross_entropy(logits, targets, label_smoothing=epsilon, reduction="none")
        torch.testing.assert_close(ours, ref)           # finite at epsilon 0; inf (as torch) with smoothing
        if epsilon == 0:
            assert torch.isfinite(ours).all()
            (grad,) = torch.autograd.grad(ours.sum(), z)
            assert torch.isfinite(grad).all() and (grad[:, 3] == 0).all()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_any_integer_class_ids(dtype):
    logits = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    targets = torch.arange(10) % 4
    expected = F.cross_entropy(logits, targets, label_smoothing=0.1)
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, targets.to(dtype), 0.1), expected)
    torch.testing.assert_close(smooth_labels(targets.to(dtype), 4, 0.1), smooth_labels(targets, 4, 0.1))
    torch.testing.assert_close(logit_gap(logits, targets.to(dtype)), logit_gap(logits, targets))
    with pytest.raises(TypeError, match="integer class indices"):
        label_smoothing_cross_entropy(logits, targets.bool())


@pytest.mark.parametrize("num_classes", [0, 1, -3])
def test_optimal_logit_gap_needs_two_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        optimal_logit_gap(num_classes, 0.1)
    with pytest.raises(TypeError, match="num_classes"):
        optimal_logit_gap(2.5, 0.1)
    assert optimal_logit_gap(np.int64(10), 0.1) == pytest.approx(math.log((0.9 * 10 + 0.1) / 0.1))
