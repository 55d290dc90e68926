r"""A COCO-style evaluator for one class: :func:`detection_metrics` (AP and recall at
several IoU thresholds) and its shorthand :func:`average_precision`.

Boxes are ``(x1, y1, x2, y2)`` as in :mod:`tricklib.boxes`; results equal pycocotools'
``COCOeval`` (``tests/test_detection_eval.py``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._checks import check_finite, check_int, check_range, check_tensor
from .boxes import _check_boxes, box_iou


def detection_metrics(pred_boxes: Sequence[torch.Tensor], pred_scores: Sequence[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], *, iou_thresholds: Sequence[float] = (0.5,),
                      max_detections: int = 100) -> dict[str, torch.Tensor]:
    r"""COCO-style average precision and recall of one class over a list of images.

    Per image, the ``max_detections`` highest-scoring predictions are matched greedily in
    score order: each takes the still unmatched ground-truth box of highest IoU, if that
    IoU is :math:`\ge t`; each ground truth is matched at most once. Over all images,
    predictions sorted by score give precision :math:`P` and recall :math:`R`; precision
    is made monotone and read at the 101 recall levels :math:`r \in \{0, 0.01, ..., 1\}`:

    .. math:: \mathrm{AP}_t = \frac{1}{101} \sum_{r} \max_{R_k \ge r} P_k

    (0 where recall :math:`r` is never reached). This is ``COCOeval`` (pycocotools) with one
    category, one area range ("all"), no crowd boxes and ``maxDets=[max_detections]``
    (Lin et al. 2014, "Microsoft COCO: Common Objects in Context").

    Args:
        pred_boxes: per image, ``Tensor[D_i, 4]`` float ``(x1, y1, x2, y2)``.
        pred_scores: per image, ``Tensor[D_i]`` float.
        gt_boxes: per image, ``Tensor[G_i, 4]`` float ``(x1, y1, x2, y2)``.
        iou_thresholds: the IoU thresholds :math:`t` in [0, 1], default ``(0.5,)``
            (COCO's mAP uses ``0.5, 0.55, ..., 0.95``).
        max_detections: predictions kept per image, default 100 (COCO's).

    Returns:
        ``{"ap": Tensor[T], "recall": Tensor[T]}`` float64, one value per threshold;
        ``nan`` when there is no ground truth at all (COCO reports -1). Equal to
        pycocotools' ``COCOeval`` to 1e-6 on random scenes (``tests/test_detection_eval.py``).
    """
    for name, value in (("pred_boxes", pred_boxes), ("pred_scores", pred_scores), ("gt_boxes", gt_boxes)):
        if not isinstance(value, Sequence):
            raise TypeError(f"{name} must be a list of tensors (one per image), got {type(value).__name__}")
    if not len(pred_boxes) == len(pred_scores) == len(gt_boxes):
        raise ValueError("pred_boxes, pred_scores and gt_boxes must have one entry per image, got "
                         f"{len(pred_boxes)}, {len(pred_scores)} and {len(gt_boxes)}")
    if not len(iou_thresholds):
        raise ValueError("iou_thresholds must hold at least one threshold")
    for t in iou_thresholds:
        check_range("iou_thresholds", t, 0.0, 1.0)
    max_detections = check_int("max_detections", max_detections, 1)
    # COCO's matching threshold is min(t, 1 - 1e-10)
    thresholds = torch.tensor([min(t, 1 - 1e-10) for t in iou_thresholds], dtype=torch.float64)

    all_scores, all_matched, num_gt = [], [], 0
    for image, (boxes, scores, gts) in enumerate(zip(pred_boxes, pred_scores, gt_boxes)):
        _check_boxes(f"pred_boxes[{image}]", boxes)
        _check_boxes(f"gt_boxes[{image}]", gts)
        check_tensor(f"pred_scores[{image}]", scores, ndim=1, floating=True)
        check_finite(f"pred_scores[{image}]", scores)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(f"pred_boxes[{image}] and pred_scores[{image}] must have the same length, "
                             f"got {boxes.shape[0]} and {scores.shape[0]}")
        scores = scores.detach().cpu().double()
        order = torch.sort(scores, descending=True, stable=True).indices[:max_detections]
        iou = box_iou(boxes.detach().cpu().double()[order], gts.detach().cpu().double())
        all_scores.append(scores[order])
        all_matched.append(_greedy_match(iou.nan_to_num(0.0), thresholds))
        num_gt += gts.shape[0]

    num_thresholds = len(thresholds)
    if num_gt == 0:
        nan = torch.full((num_thresholds,), math.nan, dtype=torch.float64)
        return {"ap": nan, "recall": nan.clone()}
    scores = torch.cat(all_scores)
    if scores.numel() == 0:
        zero = torch.zeros(num_thresholds, dtype=torch.float64)
        return {"ap": zero, "recall": zero.clone()}
    matched = torch.cat(all_matched, 1)[:, torch.sort(scores, descending=True, stable=True).indices]
    tp = matched.cumsum(1).double()
    fp = (~matched).cumsum(1).double()
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = precision.flip(1).cummax(1).values.flip(1)  # monotone: max over higher recall
    recall_levels = torch.from_numpy(np.linspace(0.0, 1.0, 101))  # bit for bit COCO's recThrs
    at = torch.searchsorted(recall, recall_levels.expand(num_thresholds, -1).contiguous())
    reached = at < recall.shape[1]
    interpolated = torch.where(reached, precision.gather(1, at.clamp(max=recall.shape[1] - 1)), 0.0)
    return {"ap": interpolated.mean(1), "recall": recall[:, -1]}


def _greedy_match(iou: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``Tensor[T, D]`` bool: is detection ``d`` (in score order) matched at threshold ``t``."""
    num_det, num_gt = iou.shape
    rows = torch.arange(len(thresholds))
    taken = torch.zeros(len(thresholds), num_gt, dtype=torch.bool)
    matched = torch.zeros(len(thresholds), num_det, dtype=torch.bool)
    if num_gt == 0:
        return matched
    for d in range(num_det):  # sequential: each match removes a ground truth for later ones
        allowed = (iou[d] >= thresholds[:, None]) & ~taken
        # the best IoU; among equal ones the last ground truth, as COCOeval's loop does
        best = num_gt - 1 - torch.where(allowed, iou[d], -1.0).flip(1).argmax(1)
        hit = allowed[rows, best]
        taken[rows[hit], best[hit]] = True
        matched[:, d] = hit
    return matched


def average_precision(pred_boxes: Sequence[torch.Tensor], pred_scores: Sequence[torch.Tensor],
                      gt_boxes: Sequence[torch.Tensor], iou_threshold: float = 0.5,
                      max_detections: int = 100) -> float:
    r"""COCO-style average precision of one class at one IoU threshold :math:`t`.

    .. math:: \mathrm{AP}_t = \frac{1}{101} \sum_{r \in \{0, 0.01, ..., 1\}} \max_{R_k \ge r} P_k

    Boxes are ``(x1, y1, x2, y2)``, per image ``Tensor[D_i, 4]`` predictions with
    ``Tensor[D_i]`` scores and ``Tensor[G_i, 4]`` ground truth. Shorthand for
    ``detection_metrics(..., iou_thresholds=(iou_threshold,))["ap"]`` (see there; checked
    against pycocotools in ``tests/test_detection_eval.py``).

    Args:
        pred_boxes: per image, ``Tensor[D_i, 4]`` float ``(x1, y1, x2, y2)``.
        pred_scores: per image, ``Tensor[D_i]`` float.
        gt_boxes: per image, ``Tensor[G_i, 4]`` float ``(x1, y1, x2, y2)``.
        iou_threshold: the IoU threshold :math:`t` in [0, 1] a prediction needs to match
            a ground-truth box, default 0.5 (PASCAL VOC's, COCO's ``AP50``).
        max_detections: highest-scoring predictions kept per image, default 100 (COCO's).

    Returns:
        The AP as a float; ``nan`` when there is no ground truth at all.
    """
    metrics = detection_metrics(pred_boxes, pred_scores, gt_boxes, iou_thresholds=(iou_threshold,),
                                max_detections=max_detections)
    return metrics["ap"].item()
