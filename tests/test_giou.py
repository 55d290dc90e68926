"""Tests for tricklib.iou_loss (the IoU-loss baseline of the GIoU chapter): values against
torchvision's box_iou, gradients against float64 finite differences, disjoint boxes, half
precision, reductions and bad input. The GIoU/DIoU/CIoU losses are tested in tests/test_boxes.py."""
import pytest
import torch
import torchvision

from tricklib import giou_loss, iou_loss


def pairs(n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    a = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.5], 1)
    b = a + torch.randn(n, 4, generator=g, dtype=torch.float64) * 20
    b = torch.cat([torch.min(b[:, :2], b[:, 2:]), torch.max(b[:, :2], b[:, 2:]) + 0.5], 1)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_loss_is_one_minus_torchvision_iou(dtype, seed):
    a, b = pairs(200, seed, dtype)
    expected = 1 - torchvision.ops.box_iou(a, b).diagonal()
    torch.testing.assert_close(iou_loss(a, b, eps=0.0), expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(iou_loss(a, b), expected, rtol=0, atol=1e-6)
    assert iou_loss(a, b).dtype == dtype
    # batched leading dimensions and the reductions
    torch.testing.assert_close(iou_loss(a.view(10, 20, 4), b.view(10, 20, 4)), iou_loss(a, b).view(10, 20))
    torch.testing.assert_close(iou_loss(a, b, reduction="mean"), iou_loss(a, b).mean())
    torch.testing.assert_close(iou_loss(a, b, reduction="sum"), iou_loss(a, b).sum())


def test_iou_loss_gradient_matches_finite_differences():
    a, b = pairs(30, 3)
    overlapping = iou_loss(a, b) < 0.95  # away from the kinks where an edge crosses another
    a, b = a[overlapping], b[overlapping]
    assert len(a) > 5
    assert torch.autograd.gradcheck(lambda x: iou_loss(x, b), (a.clone().requires_grad_(),))


def test_disjoint_boxes_have_loss_one_and_no_gradient():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]], requires_grad=True)
    b = torch.tensor([[20.0, 0.0, 30.0, 10.0], [10.0, 0.0, 20.0, 10.0], [5.0, 5.0, 9.0, 9.0]])  # apart, touching, diagonal
    loss = iou_loss(a, b)
    torch.testing.assert_close(loss, torch.ones(3))
    loss.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    # the GIoU loss of the same pairs does have a gradient
    a.grad = None
    giou_loss(a, b).sum().backward()
    assert (a.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    a, b = pairs(100, 4, torch.float32)
    a, b = a * 10, b * 10  # areas above float16's range
    ours = iou_loss(a.to(dtype), b.to(dtype))
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    reference = iou_loss(a.to(dtype).float(), b.to(dtype).float()).to(dtype)
    assert torch.equal(ours, reference)


def test_empty_and_identical():
    empty = torch.zeros(0, 4, requires_grad=True)
    assert iou_loss(empty, empty).shape == (0,)
    mean = iou_loss(empty, empty.detach(), reduction="mean")
    assert mean.item() == 0.0
    mean.backward()
    a, _ = pairs(5, 5)
    torch.testing.assert_close(iou_loss(a, a), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-9)


@pytest.mark.parametrize("call, error", [
    (lambda a, b: iou_loss(a, b[:3]), ValueError),
    (lambda a, b: iou_loss(a[:, :3], b[:, :3]), ValueError),
    (lambda a, b: iou_loss(a.long(), b), TypeError),
    (lambda a, b: iou_loss(a, b, reduction="max"), ValueError),
    (lambda a, b: iou_loss(a * float("nan"), b), ValueError),
])
def test_bad_input_raises(call, error):
    a, b = pairs(5, 6, torch.float32)
    with pytest.raises(error):
        call(a, b)
