"""Tests for tricklib.boxes: IoU and generalized IoU against torchvision, and the GIoU/DIoU/CIoU
losses against torchvision's (values, gradients, half precision, degenerate boxes)."""
import pytest
import torch
import torchvision

import tricklib.boxes as boxes_module
from tricklib.boxes import box_iou


# ----------------------------------------------------------------------------- box_iou

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_equals_torchvision(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 2, generator=g, dtype=dtype) * 50
    b = torch.rand(20, 2, generator=g, dtype=dtype) * 50
    boxes1 = torch.cat([a, a + torch.rand(30, 2, generator=g, dtype=dtype) * 30], 1)
    boxes2 = torch.cat([b, b + torch.rand(20, 2, generator=g, dtype=dtype) * 30], 1)
    boxes2[0] = boxes2[1] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero area: 0 / 0 = nan, as torchvision
    torch.testing.assert_close(box_iou(boxes1, boxes2), torchvision.ops.box_iou(boxes1, boxes2),
                               rtol=0, atol=0)
    torch.testing.assert_close(box_iou(boxes2, boxes2), torchvision.ops.box_iou(boxes2, boxes2),
                               rtol=0, atol=0, equal_nan=True)
    assert box_iou(boxes1[:0], boxes2).shape == (0, 20)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [10.0, 300.0, 2000.0])
def test_box_iou_half_precision_is_computed_in_float32(dtype, size):
    """Half areas overflow (float16: 300 x 300 > 65504) or round to 3 digits (bfloat16): upcast, as torchvision."""
    g = torch.Generator().manual_seed(1)
    corner = torch.rand(40, 2, generator=g) * size
    boxes = torch.cat([corner, corner + (0.2 + torch.rand(40, 2, generator=g)) * size], 1).to(dtype)
    ours = box_iou(boxes, boxes)
    reference = box_iou(boxes.double(), boxes.double())  # the same (rounded) boxes in float64
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours.diagonal(), torch.ones(40))
    torch.testing.assert_close(ours, reference.float(), rtol=1e-6, atol=1e-6)
    # torchvision subtracts the corners in half precision before converting: equal to that rounding
    torch.testing.assert_close(ours, torchvision.ops.box_iou(boxes, boxes), rtol=2e-2, atol=2e-2)
    mixed = box_iou(boxes, boxes.float())
    assert mixed.dtype == torch.float32 and torch.equal(mixed, ours)
    assert box_iou(boxes, boxes.double()).dtype == torch.float64


@pytest.mark.parametrize("call", [
    lambda b: box_iou(b[:, :2], b),
    lambda b: box_iou(b, b[:, [2, 1, 0, 3]]),  # x2 < x1
])
def test_box_iou_invalid_arguments_raise(call):
    b = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 30.0, 12.0], [1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError):
        call(b)


# ---- the IoU family of box-regression losses, against torchvision -------------------------

IOU_LOSSES = {"giou": (boxes_module.giou_loss, torchvision.ops.generalized_box_iou_loss),
              "diou": (boxes_module.diou_loss, torchvision.ops.distance_box_iou_loss),
              "ciou": (boxes_module.ciou_loss, torchvision.ops.complete_box_iou_loss)}
LOSS_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def regression_pairs(n: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and targets: overlapping, disjoint, touching, nested, identical, thin and zero-width."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    a = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.5], 1)
    b = a + torch.randn(n, 4, generator=g, dtype=torch.float64) * 20
    b = torch.cat([torch.min(b[:, :2], b[:, 2:]), torch.max(b[:, :2], b[:, 2:])], 1)
    special = torch.tensor([[0, 0, 10, 10, 10, 0, 20, 10],   # touching edges
                            [0, 0, 10, 10, 0, 0, 10, 10],    # identical
                            [0, 0, 10, 10, 2, 2, 4, 4],      # nested
                            [0, 0, 10, 10, 50, 50, 60, 70],  # far apart
                            [0, 0, 0, 10, 0, 0, 5, 10],      # zero width, tall
                            [0, 0, 10, 1e-3, 0, 0, 10, 10]], dtype=torch.float64)
    a = torch.cat([a, special[:, :4]])
    b = torch.cat([b, special[:, 4:]])
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("device", LOSS_DEVICES)
@pytest.mark.parametrize("name", list(IOU_LOSSES))
@pytest.mark.parametrize("seed", range(3))
def test_iou_losses_equal_torchvision_values_and_gradients(device, name, seed):
    ours, theirs = IOU_LOSSES[name]
    a, b = regression_pairs(200, seed)
    a, b = a.to(device), b.to(device)
    x1, x2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    t1, t2 = b.clone().requires_grad_(), b.clone().requires_grad_()
    ours_loss, ref_loss = ours(x1, t1), theirs(x2, t2)
    torch.testing.assert_close(ours_loss, ref_loss, rtol=1e-10, atol=1e-12)
    g = torch.rand_like(ours_loss)
    for mine, ref in zip(torch.autograd.grad(ours_loss, (x1, t1), g), torch.autograd.grad(ref_loss, (x2, t2), g)):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-10)
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(ours(a, b, reduction=reduction), theirs(a, b, reduction=reduction))


@pytest.mark.parametrize("name,expected", [("giou", [0.0, 0.75, 1.0, 1.5]), ("diou", [0.0, 0.8125, 1.2, 1.25]),
                                           ("ciou", [0.0, 0.8125, 1.2, 1.25])])
def test_iou_losses_known_values(name, expected):
    """torchvision's test boxes: [-1,-1,1,1] with itself and [0,0,1,1]; [0,0,1,1] with [0,1,1,2], [1,1,2,2]."""
    box1, box2, box3, box4 = (torch.tensor(b, dtype=torch.float32) for b in
                              ([-1, -1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 2], [1, 1, 2, 2]))
    loss = IOU_LOSSES[name][0]
    got = [loss(box1, box1), loss(box1, box2), loss(box2, box3), loss(box2, box4)]
    torch.testing.assert_close(torch.stack(got), torch.tensor(expected), rtol=0, atol=1e-4)
    pair = torch.stack([box2, box2]), torch.stack([box3, box4])
    torch.testing.assert_close(loss(*pair, reduction="sum"), torch.tensor(sum(expected[2:])), rtol=0, atol=1e-4)
    torch.testing.assert_close(loss(*pair, reduction="mean"), torch.tensor(sum(expected[2:]) / 2), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_pull_disjoint_boxes_where_iou_loss_is_flat(name):
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    target = torch.tensor([[30.0, 0.0, 40.0, 10.0]])
    IOU_LOSSES[name][0](pred, target).sum().backward()
    assert pred.grad[0, 2] < 0  # the right edge moves towards the target
    flat = pred.detach().clone().requires_grad_()
    (1 - boxes_module._iou_parts(flat, target, 1e-7)[0]).sum().backward()
    assert torch.equal(flat.grad, torch.zeros_like(flat))  # 1 - IoU: no signal at all


@pytest.mark.parametrize("name", list(IOU_LOSSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_iou_losses_half_precision_are_computed_in_float32(name, dtype):
    a, b = regression_pairs(100, 0, dtype=torch.float32)
    a, b = a * 5, b * 5  # areas up to ~1e5 px^2: float16 arithmetic would overflow
    ours = IOU_LOSSES[name][0](a.to(dtype), b.to(dtype))
    ref = IOU_LOSSES[name][1](a.to(dtype).float(), b.to(dtype).float())
    assert ours.dtype == dtype and torch.isfinite(ours).all()
    torch.testing.assert_close(ours.float(), ref, rtol=1e-2, atol=1e-2)
    x = a.to(dtype).requires_grad_()
    IOU_LOSSES[name][0](x, b.to(dtype)).sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_ciou_of_a_zero_size_box_is_finite():
    pred = torch.tensor([[5.0, 5.0, 5.0, 5.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    loss = boxes_module.ciou_loss(pred, target)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    assert torch.isnan(torchvision.ops.complete_box_iou_loss(pred.detach(), target)).all()  # the reference's NaN


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_of_no_boxes(name):
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = IOU_LOSSES[name][0](empty, torch.zeros(0, 4), reduction="mean")
    assert loss.item() == 0.0
    loss.backward()
    assert empty.grad.shape == (0, 4)
    assert IOU_LOSSES[name][0](empty, torch.zeros(0, 4)).shape == (0,)


@pytest.mark.parametrize("name", list(IOU_LOSSES))
def test_iou_losses_refuse_bad_input(name):
    loss = IOU_LOSSES[name][0]
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="last dimension 4"):
        loss(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="finite"):
        loss(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="reduction"):
        loss(torch.zeros(1, 4), torch.zeros(1, 4), reduction="avg")
    with pytest.raises(TypeError, match="floating"):
        loss(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("seed", range(3))
def test_generalized_box_iou_equals_torchvision(seed):
    a, b = regression_pairs(40, seed)
    torch.testing.assert_close(boxes_module.generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(a, b))
    half = boxes_module.generalized_box_iou(a.half() * 10, b.half() * 10)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half <= 1).all() and (half > -1).all()
