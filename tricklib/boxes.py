r"""Boxes for detection: the box convention, input checks, IoU and the GIoU/DIoU/CIoU losses.

Every box is ``(x1, y1, x2, y2)`` in pixels with ``x2 >= x1`` and ``y2 >= y1``; there is
no "+1 pixel" convention (a box from 0 to 10 is 10 wide, as in torchvision). This module
holds :func:`box_iou` and :func:`generalized_box_iou` (pairwise, ``N x M``) and the
box-regression losses :func:`iou_loss`, :func:`giou_loss`, :func:`diou_loss` and :func:`ciou_loss` (box i
against box i, torchvision's signatures). The rest of the detection code builds on it:
Soft-NMS in :mod:`tricklib.nms`, the COCO-style evaluator in :mod:`tricklib.detection_eval`,
synthetic crowded scenes in :mod:`tricklib.scenes`.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_finite, check_same_device, check_tensor


def _check_box_values(name: str, boxes: torch.Tensor) -> None:
    check_finite(name, boxes)
    if boxes.numel() and (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError(f"{name} must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1")


def _check_boxes(name: str, boxes: object) -> None:
    check_tensor(name, boxes, ndim=2, last_dim=4, floating=True)
    _check_box_values(name, boxes)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise intersection over union of two sets of boxes.

    .. math:: \mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A| + |B| - |A \cap B|}

    Args:
        boxes1: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` float, same convention and device.

    Returns:
        ``Tensor[N, M]``, the IoU of every pair, computed and returned in the inputs'
        (promoted) dtype, float32 for float16/bfloat16 boxes: like torchvision, half
        inputs are computed in float32 (float16 areas overflow above 256 x 256 pixels,
        bfloat16 ones keep 3 digits). Two zero-area boxes give ``0 / 0 = nan``, as in
        torchvision. Equal to ``torchvision.ops.box_iou`` (``tests/test_boxes.py``; for half
        inputs to float16's rounding, since torchvision subtracts the corners before converting).
    """
    check_tensor("boxes1", boxes1, ndim=2, last_dim=4, floating=True)
    check_tensor("boxes2", boxes2, ndim=2, last_dim=4, floating=True)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    _check_box_values("boxes1", boxes1)
    _check_box_values("boxes2", boxes2)
    dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    dtype = torch.float32 if dtype.itemsize < 4 else dtype  # (a no-op for float32 or float64 boxes)
    boxes1, boxes2 = boxes1.to(dtype), boxes2.to(dtype)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2 - inter)


def _pair_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``a[k]`` and ``b[k]``, with the operations of ``box_iou`` (bit for bit)."""
    w = (torch.min(a[:, 2], b[:, 2]) - torch.max(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.min(a[:, 3], b[:, 3]) - torch.max(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter)


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    r"""Pairwise generalized IoU (Rezatofighi et al. 2019) of two sets of boxes.

    .. math:: \mathrm{GIoU}(A, B) = \mathrm{IoU}(A, B) - \frac{|C \setminus (A \cup B)|}{|C|}

    with :math:`C` the smallest box enclosing both. In :math:`(-1, 1]`: unlike IoU, which is
    0 for every pair that does not overlap, it still says how far apart they are.

    Args:
        boxes1: ``Tensor[N, 4]`` float, ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[M, 4]`` float, same convention and device.

    Returns:
        ``Tensor[N, M]``, in the dtype :func:`box_iou` uses (float32 for half inputs). Two
        zero-area boxes give NaN, as in torchvision. Equal to
        ``torchvision.ops.generalized_box_iou`` (``tests/test_boxes.py``).
    """
    iou = box_iou(boxes1, boxes2)
    boxes1, boxes2 = boxes1.to(iou.dtype), boxes2.to(iou.dtype)
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    wh = (torch.min(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.max(boxes1[:, None, :2], boxes2[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    cwh = torch.max(boxes1[:, None, 2:], boxes2[:, 2:]) - torch.min(boxes1[:, None, :2], boxes2[:, :2])
    enclosing = cwh[..., 0] * cwh[..., 1]
    return iou - (enclosing - union) / enclosing


def _loss_inputs(boxes1: object, boxes2: object) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Check a box-regression loss's inputs: the boxes to compute with (half precision in
    float32) and the dtype to return the loss in."""
    check_tensor("boxes1", boxes1, last_dim=4, floating=True)
    check_tensor("boxes2", boxes2, last_dim=4, floating=True)
    check_same_device(boxes1=boxes1, boxes2=boxes2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape [..., 4] (box i against box i), "
                         f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    check_finite("boxes1", boxes1)
    check_finite("boxes2", boxes2)
    out = torch.promote_types(boxes1.dtype, boxes2.dtype)
    compute = torch.float32 if out.itemsize < 4 else out
    return boxes1.to(compute), boxes2.to(compute), out


def _iou_parts(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """IoU of box i with box i, and both boxes' corners (for the penalty terms)."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    iw = torch.min(x2, x2g) - torch.max(x1, x1g)
    ih = torch.min(y2, y2g) - torch.max(y1, y1g)
    # zero (and a zero gradient) unless both overlaps are positive, as torchvision's mask
    inter = torch.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    return inter / (union + eps), union, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g)


def _reduced(loss: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    from .losses import reduce_loss
    return reduce_loss(loss, reduction).to(dtype)


def iou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
             eps: float = 1e-7) -> torch.Tensor:
    r"""IoU loss between box i of ``boxes1`` and box i of ``boxes2``: the baseline of the GIoU family.

    .. math:: \mathcal L_{\mathrm{IoU}} = 1 - \frac{|A \cap B|}{|A \cup B| + \epsilon}

    The :math:`\mathcal L_{\mathrm{IoU}}` of Rezatofighi et al. 2019 (UnitBox, Yu et al. 2016,
    used :math:`-\ln \mathrm{IoU}`). It is 1 with a zero gradient whenever the boxes do not
    overlap: a prediction that misses its target gets no signal. ``1 - iou_loss(...)`` is the IoU
    of each pair without the ``N x M`` matrix of :func:`box_iou`.

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to the union (torchvision's default in its IoU losses).

    Returns:
        As :func:`giou_loss`. Equal to ``1 - torchvision.ops.box_iou(boxes1, boxes2).diagonal()``
        up to ``eps``, and its gradient to a float64 finite-difference check
        (``tests/test_giou.py``).
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    return _reduced(1 - _iou_parts(boxes1, boxes2, eps)[0], reduction, dtype)


def giou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Generalized-IoU loss (Rezatofighi et al. 2019) between box i of ``boxes1`` and box i of ``boxes2``.

    .. math:: \mathcal L_{\mathrm{GIoU}} = 1 - \mathrm{IoU} + \frac{|C| - |A \cup B|}{|C|}

    In :math:`[0, 2)`. The IoU loss :math:`1 - \mathrm{IoU}` is flat at 1 (zero gradient)
    whenever prediction and target do not overlap; the enclosing-box term :math:`C` still
    pulls them together. The paper reports a consistent improvement when GIoU replaces the
    box losses of state-of-the-art detectors, on PASCAL VOC and MS COCO.

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        The loss per box (``Tensor[...]``) or reduced, in the inputs' dtype (half inputs are
        computed in float32). Equal to ``torchvision.ops.generalized_box_iou_loss``, values
        and gradients (``tests/test_boxes.py``).
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    iou, union, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g) = _iou_parts(boxes1, boxes2, eps)
    enclosing = (torch.max(x2, x2g) - torch.min(x1, x1g)) * (torch.max(y2, y2g) - torch.min(y1, y1g))
    loss = 1 - iou + (enclosing - union) / (enclosing + eps)
    return _reduced(loss, reduction, dtype)


def _diou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    iou, _, (x1, y1, x2, y2), (x1g, y1g, x2g, y2g) = _iou_parts(boxes1, boxes2, eps)
    diagonal2 = (torch.max(x2, x2g) - torch.min(x1, x1g)) ** 2 + (torch.max(y2, y2g) - torch.min(y1, y1g)) ** 2 + eps
    centres2 = ((x1 + x2 - x1g - x2g) / 2) ** 2 + ((y1 + y2 - y1g - y2g) / 2) ** 2
    return 1 - iou + centres2 / diagonal2, iou


def diou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Distance-IoU loss (Zheng et al. 2020) between box i of ``boxes1`` and box i of ``boxes2``.

    .. math:: \mathcal L_{\mathrm{DIoU}} = 1 - \mathrm{IoU} + \frac{\rho^2(b, b^{gt})}{c^2}

    with :math:`\rho` the distance between the two centres and :math:`c` the diagonal of the
    enclosing box: it pulls the centres together directly, so it converges faster than
    GIoU, which first grows the predicted box until it overlaps.

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        As :func:`giou_loss`. Equal to ``torchvision.ops.distance_box_iou_loss``.
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    return _reduced(_diou(boxes1, boxes2, eps)[0], reduction, dtype)


def ciou_loss(boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none",
              eps: float = 1e-7) -> torch.Tensor:
    r"""Complete-IoU loss (Zheng et al. 2020): DIoU plus an aspect-ratio term.

    .. math:: \mathcal L_{\mathrm{CIoU}} = \mathcal L_{\mathrm{DIoU}} + \alpha v,\quad
        v = \frac{4}{\pi^2}\Bigl(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h}\Bigr)^2,\quad
        \alpha = \frac{v}{1 - \mathrm{IoU} + v}

    :math:`\alpha` is treated as a constant (no gradient), as in the paper's code and
    torchvision. The angle of a zero-size box (:math:`w = h = 0`) is taken as 0, so its
    loss and gradient stay finite (torchvision gives NaN there).

    Args:
        boxes1: ``Tensor[..., 4]`` float, predicted ``(x1, y1, x2, y2)``.
        boxes2: ``Tensor[..., 4]`` float, targets, same shape and device.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"`` (the mean of no boxes is 0).
        eps: :math:`\epsilon` added to denominators (torchvision's default).

    Returns:
        As :func:`giou_loss`. Equal to ``torchvision.ops.complete_box_iou_loss``.
    """
    boxes1, boxes2, dtype = _loss_inputs(boxes1, boxes2)
    diou, iou = _diou(boxes1, boxes2, eps)

    def angle(boxes: torch.Tensor) -> torch.Tensor:
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        point = (w == 0) & (h == 0)
        return torch.atan2(w, torch.where(point, 1.0, h))  # = atan(w / h) for h > 0

    v = (4 / math.pi ** 2) * (angle(boxes2) - angle(boxes1)) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduced(diou + alpha * v, reduction, dtype)
