"""Mixup and CutMix (chapter part4_regularisation/mixup_cutmix) against plain-loop references.

The references replay the same generator draws (a copy of the generator's state) and
build every mixed example and label one at a time, as the papers' code does.
"""
import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from tricklib import cutmix, mixup


def _copy(g: torch.Generator) -> torch.Generator:
    twin = torch.Generator()
    twin.set_state(g.get_state())
    return twin


def _beta_draw(alpha: float, g: torch.Generator) -> float:
    a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=g)
    return float(a[0] / a.sum())


def _mixup_reference(x, targets, num_classes, alpha, g):
    lam = _beta_draw(alpha, g)
    perm = torch.randperm(len(x), generator=g).tolist()
    xs, ys = [], []
    for i, j in enumerate(perm):  # x̂_i = λ x_i + (1 − λ) x_j, ŷ_i = λ y_i + (1 − λ) y_j
        xs.append(lam * x[i] + (1 - lam) * x[j])
        y = torch.zeros(num_classes, dtype=x.dtype)
        y[targets[i]] += lam
        y[targets[j]] += 1 - lam
        ys.append(y)
    return torch.stack(xs), torch.stack(ys), lam


def _cutmix_reference(x, targets, num_classes, alpha, g):
    # Yun et al.'s rand_bbox: a box of side √(1 − λ0)·(H, W) around a uniform centre, clipped to the image
    lam0 = _beta_draw(alpha, g)
    h, w = x.shape[-2:]
    cy = int(torch.randint(0, h, (1,), generator=g))
    cx = int(torch.randint(0, w, (1,), generator=g))
    bh, bw = int(h * math.sqrt(1 - lam0)), int(w * math.sqrt(1 - lam0))
    rows = [r for r in range(h) if cy - bh // 2 <= r < cy + bh - bh // 2]
    cols = [c for c in range(w) if cx - bw // 2 <= c < cx + bw - bw // 2]
    perm = torch.randperm(len(x), generator=g).tolist()
    out = x.clone()
    for i, j in enumerate(perm):
        for r in rows:
            for c in cols:
                out[i, :, r, c] = x[j, :, r, c]
    lam = 1 - len(rows) * len(cols) / (h * w)  # the share of pixels that stay x_i's
    ys = []
    for i, j in enumerate(perm):
        y = torch.zeros(num_classes, dtype=x.dtype)
        y[targets[i]] += lam
        y[targets[j]] += 1 - lam
        ys.append(y)
    return out, torch.stack(ys), lam, lam0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("alpha", [0.1, 0.4, 1.0, 2.0])
def test_mixup_equals_a_plain_loop(seed, alpha):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 3, 4, 4, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (12,), generator=g)
    ref = _mixup_reference(x, targets, 5, alpha, _copy(g))
    ours = mixup(x, targets, 5, alpha, generator=g)
    torch.testing.assert_close(ours[0], ref[0])
    torch.testing.assert_close(ours[1], ref[1])
    assert ours[2] == ref[2]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [(8, 8), (7, 12), (32, 32)])
def test_cutmix_equals_a_plain_loop(seed, size):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 2, *size, generator=g)
    targets = torch.randint(0, 4, (6,), generator=g)
    out, y_ref, lam_ref, lam0 = _cutmix_reference(x, targets, 4, 1.0, _copy(g))
    ours = cutmix(x, targets, 4, 1.0, generator=g)
    assert torch.equal(ours[0], out)
    torch.testing.assert_close(ours[1], y_ref)
    assert ours[2] == pytest.approx(lam_ref, abs=1e-12)
    assert ours[2] >= lam0 - 1e-12  # clipping at the border only shrinks the box: λ ≥ λ0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam_alpha", [0.2, 1.0])
def test_mixed_loss_is_the_loss_on_the_mixed_label(seed, lam_alpha):
    """λ·CE(z, y_i) + (1 − λ)·CE(z, y_j) = CE(z, λ y_i + (1 − λ) y_j): cross-entropy is linear in its target."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 6, (16,), generator=g)
    x_mix, y_mix, lam = mixup(x, targets, 6, lam_alpha, generator=g)
    # the partner of each row: (x̂ − λ x) / (1 − λ) is one of the inputs
    partner = torch.cdist((x_mix - lam * x) / (1 - lam), x).argmin(1)
    logits = (3 * torch.randn(16, 6, generator=g, dtype=torch.float64)).requires_grad_()
    two_losses = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets[partner])
    one_loss = F.cross_entropy(logits, y_mix)
    torch.testing.assert_close(one_loss, two_losses, rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad(loss, logits)[0] for loss in (one_loss, two_losses)]
    torch.testing.assert_close(*grads, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_lambda_is_beta_distributed(alpha):
    g = torch.Generator().manual_seed(0)
    x, t = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    lams = [mixup(x, t, 2, alpha, generator=g)[2] for _ in range(3000)]
    assert scipy.stats.kstest(lams, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3


def test_cutmix_lambda_on_tiny_images_is_coarse_and_above_beta():
    # on 8×8 images λ is a multiple of 1/64 and, clipped at the border, larger than λ0 on average (mean > 1/2)
    g = torch.Generator().manual_seed(0)
    x, t = torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)
    lams = torch.tensor([cutmix(x, t, 2, 1.0, generator=g)[2] for _ in range(2000)], dtype=torch.float64)
    torch.testing.assert_close(lams * 64, (lams * 64).round())
    assert lams.mean() > 0.55


def test_gradient_flows_to_both_partners():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.arange(8) % 3
    x_mix, _, lam = mixup(x, targets, 3, 0.4, generator=g)
    weight = torch.randn(8, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((x_mix * weight).sum(), x)
    perm = torch.cdist((x_mix.detach() - lam * x.detach()) / (1 - lam), x.detach()).argmin(1)
    expected = lam * weight
    expected.index_add_(0, perm, (1 - lam) * weight)  # x_j receives (1 − λ) of every row it is mixed into
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_are_kept(dtype):
    x = torch.rand(4, 1, 6, 6).to(dtype)
    t = torch.tensor([0, 1, 2, 1])
    for fn in (mixup, cutmix):
        x_mix, y_mix, _ = fn(x, t, 3, generator=torch.Generator().manual_seed(0))
        assert x_mix.dtype == dtype and y_mix.dtype == dtype
        torch.testing.assert_close(y_mix.float().sum(1), torch.ones(4), rtol=0, atol=1e-2)


def test_edge_cases_empty_and_single_example():
    for fn in (mixup, cutmix):
        x_mix, y_mix, _ = fn(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), 3)
        assert x_mix.shape == (0, 1, 8, 8) and y_mix.shape == (0, 3)
        x = torch.rand(1, 1, 8, 8)
        x_mix, y_mix, _ = fn(x, torch.tensor([2]), 3)  # the only partner is itself
        torch.testing.assert_close(x_mix, x)
        torch.testing.assert_close(y_mix, torch.tensor([[0.0, 0.0, 1.0]]))


def test_same_generator_same_result():
    x, t = torch.rand(10, 1, 8, 8), torch.arange(10) % 4
    for fn in (mixup, cutmix):
        a = fn(x, t, 4, generator=torch.Generator().manual_seed(7))
        b = fn(x, t, 4, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_bad_input():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, torch.zeros(4, dtype=torch.long), 2, alpha=-1.0)
    with pytest.raises(ValueError, match="x must"):
        cutmix(torch.rand(4, 64), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="integer class indices"):
        mixup(x, torch.zeros(4), 2)
    with pytest.raises(TypeError):
        mixup(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)
