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


# ---- the dropout family, mixing, R-Drop, L1's proximal step --------------------------------

import torchvision  # noqa: E402

from tricklib import (cutmix, cutout, drop_block, drop_path, fgm, fgsm, mixup, pgd, r_drop_loss,  # noqa: E402
                      soft_threshold)


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(8, 3, 4, 4), (16, 5), (4, 2, 3)])
def test_drop_path_equals_torchvision_stochastic_depth(p, shape):
    x = torch.randn(shape)
    torch.manual_seed(3)
    ours = drop_path(x, p)
    torch.manual_seed(3)
    ref = torchvision.ops.stochastic_depth(x, p, mode="row")
    assert torch.equal(ours, ref)
    assert torch.equal(drop_path(x, p, training=False), x)


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(20000, 3)
    y = drop_path(x, 0.3)
    per_row = y.unique(dim=1)
    assert per_row.shape[1] == 1  # one decision per example
    assert abs((y[:, 0] == 0).float().mean().item() - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.03


@pytest.mark.parametrize("p,block", [(0.1, 3), (0.3, 5), (0.5, 1), (0.2, 7), (0.3, 9)])
def test_drop_block_equals_torchvision_drop_block2d(p, block):
    x = torch.randn(4, 3, 12, 10)
    torch.manual_seed(5)
    ours = drop_block(x, p, block)
    torch.manual_seed(5)
    ref = torchvision.ops.drop_block2d(x, p, block)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert torch.equal(drop_block(x, p, block, training=False), x)


@pytest.mark.parametrize("block", [2, 4, 10])
def test_drop_block_even_sizes_drop_whole_blocks(block):
    torch.manual_seed(0)
    y = drop_block(torch.ones(2, 1, 12, 10), 0.3, block)
    assert y.shape == (2, 1, 12, 10)
    assert drop_block(torch.ones(2, 1, 12, 10), 0.3, 15).shape == (2, 1, 12, 10)  # capped at min(H, W)
    dropped = (y == 0).float()
    # every dropped unit is covered by a fully dropped block x block square
    full = torch.zeros_like(dropped)
    corners = torch.nn.functional.avg_pool2d(dropped, block, stride=1).eq(1).float()
    for di in range(block):
        for dj in range(block):
            full[..., di:di + corners.shape[-2], dj:dj + corners.shape[-1]] += corners
    assert torch.equal(dropped > 0, full > 0)


def test_drop_block_drops_about_p_in_blocks():
    torch.manual_seed(0)
    y = drop_block(torch.ones(64, 4, 32, 32), 0.2, 5)
    dropped = (y == 0).float().mean().item()
    assert 0.13 < dropped < 0.22  # overlapping blocks: a little under p
    assert abs(y.mean().item() - 1.0) < 1e-4  # rescaled by the kept share
    z = (y[0, 0] == 0).float()
    # a dropped unit's neighbours are mostly dropped too (blocks, not single units)
    assert (z[1:, :] * z[:-1, :]).sum() > 0.6 * z.sum()


def test_cutout_zeros_one_square_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(50, 2, 16, 16)
    y = cutout(x, 6, g)
    zeros = (y[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 36).all() and (zeros > 0).all() and (zeros == 36).any()
    assert torch.equal(y[:, 0] == 0, y[:, 1] == 0)  # the same square in every channel
    assert torch.equal(x, torch.ones_like(x))  # input untouched


def test_mixup_mixes_inputs_and_labels_alike():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5)
    y = torch.randint(0, 4, (32,))
    xm, ym, lam = mixup(x, y, 4, alpha=0.4, generator=g)
    assert 0 < lam < 1 and ym.shape == (32, 4)
    torch.testing.assert_close(ym.sum(1), torch.ones(32))
    # every mixed example is lam * itself + (1 - lam) * one partner, and so is its label
    partner = ((xm - lam * x) / (1 - lam))
    j = torch.cdist(partner, x).argmin(dim=1)
    torch.testing.assert_close(partner, x[j], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ym, lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[j], 4).float())


def test_mixup_lambda_follows_beta():
    g = torch.Generator().manual_seed(0)
    lams = torch.tensor([mixup(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 2, alpha=0.5, generator=g)[2]
                         for _ in range(4000)])
    # Beta(0.5, 0.5): mean 1/2, variance 1/8
    assert abs(lams.mean().item() - 0.5) < 0.02 and abs(lams.var().item() - 0.125) < 0.01


def test_cutmix_labels_match_pixels():
    g = torch.Generator().manual_seed(1)
    x = torch.arange(8.0).reshape(8, 1, 1, 1).expand(8, 1, 20, 16).contiguous()
    y = torch.arange(8)
    for _ in range(20):
        xm, ym, lam = cutmix(x, y, 8, generator=g)
        for n in range(8):
            own = (xm[n, 0] == n).float().mean().item()
            assert ym[n, n].item() == pytest.approx(own if own < 1 else 1.0, abs=1e-6) or \
                ym[n].max().item() == pytest.approx(1.0)  # paired with itself
        assert ym.sum(1).allclose(torch.ones(8))


def test_r_drop_loss_formula_and_zero_kl_for_equal_passes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    ce = (F.cross_entropy(a, y, reduction="none") + F.cross_entropy(b, y, reduction="none")) / 2
    kl = (F.kl_div(b.log_softmax(1), a.log_softmax(1), log_target=True, reduction="none").sum(1)
          + F.kl_div(a.log_softmax(1), b.log_softmax(1), log_target=True, reduction="none").sum(1))
    torch.testing.assert_close(r_drop_loss(a, b, y, alpha=0.7, reduction="none"), ce + 0.35 * kl)
    torch.testing.assert_close(r_drop_loss(a, a, y, alpha=5.0), F.cross_entropy(a, y))
    with pytest.raises(ValueError, match="same shape"):
        r_drop_loss(a, b[:, :4], y)


def test_soft_threshold_is_the_l1_prox():
    w = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    assert soft_threshold(w, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 1.0]
    # it minimises 1/2 (v - w)^2 + t |v| elementwise: check against a fine grid
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    best = grid[((grid[:, None] - w) ** 2 / 2 + 0.7 * grid[:, None].abs()).argmin(0)]
    torch.testing.assert_close(soft_threshold(w.double(), 0.7), best, rtol=0, atol=2e-4)


def test_mixing_and_dropping_refuse_bad_input():
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match="p must be"):
        drop_path(x, 1.5)
    with pytest.raises(ValueError, match="block_size"):
        drop_block(x, 0.1, 0)
    with pytest.raises(ValueError, match="same number of examples"):
        mixup(x, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="alpha"):
        cutmix(x, torch.zeros(4, dtype=torch.long), 2, alpha=0.0)
    with pytest.raises(ValueError, match="targets must be in"):
        mixup(x, torch.full((4,), 7), 2)


def _linear_classifier():
    torch.manual_seed(0)
    return torch.nn.Linear(6, 3)


def test_fgsm_is_one_signed_gradient_step_and_leaves_the_model_alone():
    model = _linear_classifier()
    x, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    xr = x.clone().requires_grad_()
    F.cross_entropy(model(xr), y).backward()
    model.zero_grad()
    adv = fgsm(model, x, y, 0.1)
    torch.testing.assert_close(adv, x + 0.1 * xr.grad.sign())
    assert all(p.grad is None for p in model.parameters())
    assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    clamped = fgsm(model, x, y, 0.5, clamp=(0.0, 1.0))
    assert clamped.min() >= 0 and clamped.max() <= 1


def test_pgd_stays_in_the_ball_and_beats_fgsm():
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    adv = pgd(model, x, y, 0.1, 0.025, steps=20, clamp=(0.0, 1.0), generator=g)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = lambda z: F.cross_entropy(model(z), y).item()
    assert loss(adv) >= loss(fgsm(model, x, y, 0.1, clamp=(0.0, 1.0))) - 1e-6 > loss(x)
    start = pgd(model, x, y, 0.1, 0.025, steps=1, random_start=False)
    torch.testing.assert_close(start, torch.max(torch.min(fgsm(model, x, y, 0.025), x + 0.1), x - 0.1))


def test_fgm_perturbs_along_the_gradient_and_restores_exactly():
    emb = torch.nn.Embedding(10, 4)
    tokens = torch.tensor([1, 2, 3])
    emb(tokens).pow(2).sum().backward()
    before = emb.weight.detach().clone()
    g = emb.weight.grad.clone()
    with fgm(emb, epsilon=0.5):
        torch.testing.assert_close(emb.weight - before, 0.5 * g / g.norm())
        emb(tokens).pow(2).sum().backward()  # the adversarial gradient accumulates
    assert torch.equal(emb.weight, before)
    with pytest.raises(ValueError, match="backward"):
        with fgm(torch.nn.Embedding(3, 2)):
            pass
