r"""Synthetic crowded scenes for detection: ground truth (:func:`crowded_scene`), scored
proposals around it (:func:`simulate_detections`), and both at a fixed crowd density for
timing NMS at any size (:func:`crowded_detections`).

Boxes are ``(x1, y1, x2, y2)`` as in :mod:`tricklib.boxes`.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_int, check_range
from .boxes import _check_boxes, _pair_iou


def crowded_scene(n_objects: int, image_size: int = 512, overlap: tuple[float, float] = (0.3, 0.7), *,
                  group_size: int = 3, object_size: tuple[float, float] = (0.04, 0.12),
                  generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Ground-truth boxes of a crowd: groups of objects standing side by side.

    Objects come in groups of ``group_size`` (people in a queue): one width
    :math:`w` (a fraction ``object_size`` of ``image_size``), height :math:`1.5w` to
    :math:`2.5w`, and each neighbour shifted sideways by
    :math:`d = w\,\frac{1 - u}{1 + u}`, so that neighbours overlap with exactly
    :math:`\mathrm{IoU} = u`, drawn uniformly from ``overlap``. Groups are placed
    uniformly in the image (and may overlap each other).

    Args:
        n_objects: number of boxes :math:`K \ge 0`.
        image_size: side of the square image in pixels.
        overlap: ``(low, high)`` range of the IoU between neighbours, in (0, 1).
        group_size: objects per group (the last group may be smaller), ``>= 1``.
        object_size: ``(low, high)`` range of box widths as fractions of ``image_size``.
        generator: ``torch.Generator`` for a reproducible scene.

    Returns:
        ``Tensor[K, 4]`` float32 ``(x1, y1, x2, y2)``, inside the image.
    """
    n_objects = check_int("n_objects", n_objects, 0)
    group_size = check_int("group_size", group_size, 1)
    check_range("image_size", image_size, 0.0, low_open=True)
    _check_interval("overlap", overlap, 0.0, 1.0)
    _check_interval("object_size", object_size, 0.0, 1.0 / 2.5)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    groups = -(-n_objects // group_size)
    width = image_size * uniform(*object_size, groups)
    height = width * uniform(1.5, 2.5, groups)
    iou = uniform(*overlap, groups, group_size - 1)
    shift = width[:, None] * (1 - iou) / (1 + iou)
    left = torch.cat([torch.zeros(groups, 1, dtype=torch.float64), shift.cumsum(1)], 1)
    x0 = uniform(0.0, 1.0, groups) * (image_size - width - left[:, -1]).clamp(min=0)
    y0 = uniform(0.0, 1.0, groups) * (image_size - height)
    x1 = x0[:, None] + left
    y1 = y0[:, None].expand_as(x1)
    boxes = torch.stack([x1, y1, x1 + width[:, None], y1 + height[:, None]], -1)
    return boxes.reshape(-1, 4)[:n_objects].clamp(max=image_size).float()


def simulate_detections(gt_boxes: torch.Tensor, *, per_object: int = 20, jitter: float = 0.1,
                        false_positives: float = 0.2,
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Scored proposals around ground-truth boxes, as a detector outputs them before NMS.

    Each ground-truth box of size :math:`(w, h)` gets ``per_object`` proposals with centre
    moved by :math:`\mathrm{jitter}\cdot(w, h)\cdot\mathcal{N}(0, 1)` and size scaled by
    :math:`e^{\mathrm{jitter}\cdot\mathcal{N}(0, 1)}`; its score is its IoU with the
    ground truth times :math:`U(0.5, 1)` (better boxes score higher, noisily).
    ``false_positives`` per object (rounded) are added: boxes of ground-truth sizes placed
    uniformly over the scene, scored :math:`U(0, 0.5)`. All are shuffled.

    Args:
        gt_boxes: ``Tensor[K, 4]`` float ``(x1, y1, x2, y2)``, e.g. from :func:`crowded_scene`.
        per_object: proposals per ground-truth box, ``>= 1``.
        jitter: relative noise of position and size, ``>= 0``.
        false_positives: expected false positives per ground-truth box, ``>= 0``.
        generator: ``torch.Generator`` for reproducible detections.

    Returns:
        ``(boxes, scores)``: ``Tensor[M, 4]`` and ``Tensor[M]`` float32, on CPU, with
        ``M = K * per_object + round(false_positives * K)``.
    """
    _check_boxes("gt_boxes", gt_boxes)
    per_object = check_int("per_object", per_object, 1)
    check_range("jitter", jitter, 0.0)
    check_range("false_positives", false_positives, 0.0)
    gt = gt_boxes.detach().cpu().double()
    num_gt = gt.shape[0]
    size = (gt[:, 2:] - gt[:, :2]).repeat_interleave(per_object, 0)
    centre = ((gt[:, 2:] + gt[:, :2]) / 2).repeat_interleave(per_object, 0)
    centre = centre + jitter * size * torch.randn(size.shape, generator=generator, dtype=torch.float64)
    size = size * torch.exp(jitter * torch.randn(size.shape, generator=generator, dtype=torch.float64))
    proposals = torch.cat([centre - size / 2, centre + size / 2], 1)
    quality = _pair_iou(proposals, gt.repeat_interleave(per_object, 0)).nan_to_num(0.0)
    scores = quality * (0.5 + 0.5 * torch.rand(len(quality), generator=generator, dtype=torch.float64))

    num_false = round(false_positives * num_gt)
    if num_false:
        low, high = gt[:, :2].min(0).values, gt[:, 2:].max(0).values
        size = (gt[:, 2:] - gt[:, :2])[torch.randint(num_gt, (num_false,), generator=generator)]
        corner = low + (high - low - size).clamp(min=0) * torch.rand(num_false, 2, generator=generator,
                                                                      dtype=torch.float64)
        proposals = torch.cat([proposals, torch.cat([corner, corner + size], 1)])
        scores = torch.cat([scores, 0.5 * torch.rand(num_false, generator=generator, dtype=torch.float64)])
    shuffle = torch.randperm(len(scores), generator=generator)
    return proposals[shuffle].float(), scores[shuffle].float()


def crowded_detections(n_boxes: int, *, per_object: int = 20,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """About ``n_boxes`` proposals at a fixed crowd density, for timing NMS at any size.

    :func:`crowded_scene` with ``n_boxes // per_object`` objects (at least one) at 25
    objects per 512 x 512 pixels (the image grows with the number of objects, from 512 x
    512 for 25 or fewer; object sizes 4-12% of a 512-pixel side), then :func:`simulate_detections` with ``per_object``
    proposals each. Used by ``benchmarks/soft_nms.py`` and the Soft-NMS chapter.

    Args:
        n_boxes: about how many proposals to make, ``>= 1``: ``max(1, n_boxes // per_object)``
            objects get ``per_object`` proposals each, plus 0.2 false positives per object.
        per_object: proposals per ground-truth object, ``>= 1``.
        generator: ``torch.Generator`` for a reproducible scene and detections.

    Returns:
        ``(boxes, scores)`` as :func:`simulate_detections` returns them.
    """
    n_boxes, per_object = check_int("n_boxes", n_boxes, 1), check_int("per_object", per_object, 1)
    objects = max(1, n_boxes // per_object)
    grow = math.sqrt(max(objects, 25) / 25)
    gt = crowded_scene(objects, round(512 * grow), object_size=(0.04 / grow, 0.12 / grow), generator=generator)
    return simulate_detections(gt, per_object=per_object, generator=generator)


def _check_interval(name: str, value: object, low: float, high: float) -> None:
    """Check a ``(low, high)`` pair inside the open interval ``(low, high)``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair, got {value!r}")
    check_range(f"{name}[0]", value[0], low, high, low_open=True, high_open=True)
    check_range(f"{name}[1]", value[1], value[0], high, high_open=True)
