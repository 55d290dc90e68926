"""PointRend's point sampling: point_sample at pixel centres equals indexing; uncertain_points
chooses the boundary; OHEM/top-k losses keep what they say."""
from __future__ import annotations

import math

import pytest
import torch

from tricklib import ohem_loss, point_sample, topk_loss, uncertain_points


def test_point_sample_at_pixel_centres_is_indexing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    i = torch.randint(0, 5, (2, 11), generator=g)
    j = torch.randint(0, 7, (2, 11), generator=g)
    points = torch.stack([(j + 0.5) / 7, (i + 0.5) / 5], dim=-1)
    out = point_sample(x, points)
    expected = torch.stack([x[n][:, i[n], j[n]] for n in range(2)])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_point_sample_interpolates_and_has_gradients():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], requires_grad=True)
    centre = torch.tensor([[[0.5, 0.5]]], requires_grad=True)
    out = point_sample(x, centre)
    assert out.item() == pytest.approx(1.5)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))
    assert torch.isfinite(centre.grad).all()
    corner = point_sample(x.detach(), torch.tensor([[[0.0, 0.0]]]), align_corners=True)
    assert corner.item() == 0.0


def test_point_sample_refuses_bad_shapes():
    with pytest.raises(ValueError, match="one set per image"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="last dimension 2"):
        point_sample(torch.zeros(2, 1, 4, 4), torch.zeros(2, 5, 3))


def test_uncertain_points_hug_the_boundary():
    # a coarse mask of a disc: logit = distance to the circle (negative inside)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    logits = ((((xs - 0.5) ** 2 + (ys - 0.5) ** 2).sqrt() - 0.3) * 20)[None, None]
    g = torch.Generator().manual_seed(0)
    pts = uncertain_points(logits, 200, oversample_ratio=3, importance_ratio=0.75, generator=g)
    assert pts.shape == (1, 200, 2) and (pts >= 0).all() and (pts <= 1).all()
    radius = ((pts[0] - 0.5) ** 2).sum(-1).sqrt()
    near = (radius - 0.3).abs() < 0.1
    assert near[:150].float().mean() > 0.9          # the important ones sit on the boundary
    assert near[150:].float().mean() < 0.6          # the uniform rest does not
    again = uncertain_points(logits, 200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pts, again)


def test_uncertain_points_refuses_bad_input():
    with pytest.raises(ValueError, match="one channel"):
        uncertain_points(torch.zeros(1, 2, 4, 4), 10)
    with pytest.raises(ValueError, match="importance_ratio"):
        uncertain_points(torch.zeros(1, 1, 4, 4), 10, importance_ratio=1.5)
    with pytest.raises(ValueError, match="num_points"):
        uncertain_points(torch.zeros(1, 1, 4, 4), 0)


def test_topk_loss_keeps_the_largest_and_routes_the_gradient_there():
    loss = torch.tensor([0.1, 2.0, 0.5, 3.0], requires_grad=True)
    out = topk_loss(loss, 2)
    assert out.item() == pytest.approx(2.5)
    out.backward()
    assert loss.grad.tolist() == [0.0, 0.5, 0.0, 0.5]
    assert topk_loss(loss, 10).item() == pytest.approx(loss.mean().item())
    assert topk_loss(loss, 2, reduction="none").tolist() == [3.0, 2.0]
    assert topk_loss(torch.zeros(0), 3).item() == 0.0
    with pytest.raises(ValueError, match="k must be"):
        topk_loss(loss, 0)


@pytest.mark.parametrize("n,keep", [(10, 0.25), (7, 0.3), (1, 0.01), (100, 1.0)])
def test_ohem_keeps_the_fraction_it_names(n, keep):
    loss = torch.rand(n, generator=torch.Generator().manual_seed(n))
    k = max(1, math.ceil(keep * n))
    torch.testing.assert_close(ohem_loss(loss, keep), loss.sort(descending=True).values[:k].mean())
    # the popular one-liner: argsort(loss)[int(num * rate):] keeps 1 - rate
    rate = 1 - keep
    one_liner = loss[loss.argsort()[int(n * rate):]]
    assert abs(len(one_liner) - k) <= 1


def test_ohem_refuses_bad_fractions():
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_fraction"):
            ohem_loss(torch.rand(5), bad)
    with pytest.raises(ValueError, match="dimension"):
        ohem_loss(torch.rand(5, 2), 0.5)
