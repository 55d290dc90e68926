"""PointRend's point sampling: point_sample at pixel centres equals indexing; uncertain_points
chooses the boundary; uncertain_grid_points equals a sort; boundary IoU equals a SciPy reference;
thin_shapes is the same scene at every size; OHEM/top-k losses keep what they say."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from tricklib import (boundary_iou, mask_boundary, mask_iou, ohem_loss, point_sample, thin_shapes, topk_loss,
                      uncertain_grid_points, uncertain_points)


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
    # a confident background everywhere: the image edge must not look uncertain (zero padding would make it so)
    confident = torch.full((1, 1, 8, 8), -6.0)
    confident[..., 3:5, 3:5] = 6.0
    edge = uncertain_points(confident, 64, oversample_ratio=10, importance_ratio=1.0,
                            generator=torch.Generator().manual_seed(1))[0]
    assert ((edge - 0.5).abs().max(-1).values < 0.35).all()
    torch.testing.assert_close(point_sample(confident, torch.tensor([[[0.01, 0.01]]]), padding_mode="border"),
                               torch.tensor([[[-6.0]]]))
    with pytest.raises(ValueError, match="padding_mode"):
        point_sample(confident, torch.zeros(1, 1, 2), padding_mode="reflection")


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


# --- PointRend's inference points, mask IoU, boundary IoU, thin_shapes ---------------------------------------


def test_uncertain_grid_points_are_the_smallest_logits_at_pixel_centres():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 6, 9, generator=g)
    index, points = uncertain_grid_points(logits, 10)
    assert index.shape == (3, 10) and points.shape == (3, 10, 2)
    expected = logits.flatten(1).abs().sort(dim=1).indices[:, :10]
    assert torch.equal(index.sort(1).values, expected.sort(1).values)
    torch.testing.assert_close(point_sample(logits, points)[:, 0], logits.flatten(1).gather(1, index))
    # more points than pixels: every pixel once
    index, points = uncertain_grid_points(logits, 1000)
    assert index.shape == (3, 54) and torch.equal(index.sort(1).values, torch.arange(54).expand(3, -1))
    with pytest.raises(ValueError, match="one channel"):
        uncertain_grid_points(torch.zeros(1, 2, 4, 4), 3)
    with pytest.raises(ValueError, match="num_points"):
        uncertain_grid_points(torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(TypeError, match="floating"):
        uncertain_grid_points(torch.zeros(1, 1, 4, 4, dtype=torch.long), 3)


def _reference_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    # the Boundary IoU reference code's definition: mask minus its erosion, outside the image is background
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3)), iterations=d, border_value=0)


def _reference_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else (a & b).sum() / union


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_boundary_iou_equals_the_scipy_reference(seed, d):
    g = torch.Generator().manual_seed(seed)
    # blobby masks: thresholded smoothed noise, so boundaries are not just salt and pepper
    noise = F.avg_pool2d(torch.rand(4, 1, 30, 26, generator=g), 5, stride=1, padding=2)[:, 0]
    pred, target = noise > 0.5, (noise + 0.05 * torch.randn(noise.shape, generator=g)) > 0.5
    for n in range(4):
        ref_p, ref_t = _reference_boundary(pred[n].numpy(), d), _reference_boundary(target[n].numpy(), d)
        assert np.array_equal(mask_boundary(pred[n], d).numpy(), ref_p)
        assert boundary_iou(pred[n], target[n], d).item() == pytest.approx(_reference_iou(ref_p, ref_t), abs=1e-6)
        assert mask_iou(pred[n], target[n]).item() == pytest.approx(
            _reference_iou(pred[n].numpy(), target[n].numpy()), abs=1e-6)
    # batched with any leading shape = one by one
    batched = boundary_iou(pred.view(2, 2, 30, 26), target.view(2, 2, 30, 26), d)
    assert batched.shape == (2, 2)
    torch.testing.assert_close(batched.flatten(), torch.stack([boundary_iou(p, t, d) for p, t in zip(pred, target)]))


def test_boundary_iou_edge_cases():
    empty, full = torch.zeros(8, 8, dtype=torch.bool), torch.ones(8, 8, dtype=torch.bool)
    assert boundary_iou(empty, empty).item() == 1.0 and mask_iou(empty, empty).item() == 1.0
    assert boundary_iou(empty, full).item() == 0.0 and mask_iou(empty, full).item() == 0.0
    # a full mask's boundary is the band along the image border (outside counts as background)
    band = mask_boundary(full, 2)
    assert band.sum().item() == 64 - 16 and not band[2:6, 2:6].any()
    assert boundary_iou(full, full).item() == 1.0
    # a thin line is all boundary: boundary IoU = mask IoU
    line = torch.zeros(8, 8, dtype=torch.bool)
    line[3, 1:7] = True
    shifted = line.roll(1, dims=0)
    assert boundary_iou(line, shifted).item() == mask_iou(line, shifted).item() == 0.0
    assert mask_boundary(torch.zeros(0, 5, 5, dtype=torch.bool), 1).shape == (0, 5, 5)
    with pytest.raises(TypeError, match="bool"):
        boundary_iou(full.float(), full)
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(full, full[:4])
    with pytest.raises(ValueError, match="dilation"):
        boundary_iou(full, full, dilation=0)
    with pytest.raises(ValueError, match="at least 2"):
        mask_iou(full[0], full[0])


def test_boundary_iou_sees_what_mask_iou_hides():
    # a big square and the same square with its corners shaved: high mask IoU, lower boundary IoU
    target = torch.zeros(64, 64, dtype=torch.bool)
    target[8:56, 8:56] = True
    pred = target.clone()
    pred[8:56:2, 8] = False
    pred[8, 8:56:2] = False
    assert mask_iou(pred, target).item() > 0.97
    assert boundary_iou(pred, target).item() < mask_iou(pred, target).item() - 0.05


def test_thin_shapes_same_scene_at_every_size_and_deterministic():
    images, masks = thin_shapes(16, 64, seed=3)
    assert images.shape == (16, 1, 64, 64) and masks.shape == (16, 64, 64) and masks.dtype == torch.bool
    assert 0 <= images.min() and images.max() <= 1
    _, fine = thin_shapes(16, 256, seed=3)
    coverage = F.avg_pool2d(fine[:, None].float(), 4)[:, 0]
    # pixel centres agree up to the contour: every disagreement is a pixel the contour cuts
    disagree = (coverage > 0.5) != masks
    assert disagree.float().mean() < 0.005
    assert ((coverage[disagree] > 0) & (coverage[disagree] < 1)).all()
    again = thin_shapes(16, 64, seed=3)
    assert torch.equal(again[0], images) and torch.equal(again[1], masks)
    assert not torch.equal(thin_shapes(16, 64, seed=4)[1], masks)
    # thin parts: some pixel rows of the mask are only 1-4 pixels wide
    _, thick = thin_shapes(16, 64, seed=3, width=(0.2, 0.2))
    assert thick.sum() > masks.sum()
    assert thin_shapes(0, 8)[0].shape == (0, 1, 8, 8)


def test_thin_shapes_refuses_bad_input():
    with pytest.raises(ValueError, match="width"):
        thin_shapes(2, 16, width=(0.1, 0.05))
    with pytest.raises(ValueError, match="bars"):
        thin_shapes(2, 16, bars=(2, 5))
    with pytest.raises(ValueError, match="noise"):
        thin_shapes(2, 16, noise=-1.0)
    with pytest.raises(ValueError, match="size"):
        thin_shapes(2, 0)
    with pytest.raises(TypeError, match="n must be an int"):
        thin_shapes(2.5, 16)
