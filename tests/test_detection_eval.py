"""Tests for tricklib.detection_eval: the COCO-style evaluator against pycocotools."""
import contextlib
import io

import numpy as np
import pytest
import torch

from tricklib.detection_eval import average_precision, detection_metrics
from tricklib.nms import soft_nms
from tricklib.scenes import crowded_scene, simulate_detections

METHODS = ("linear", "gaussian", "hard")


# ----------------------------------------------------------------------------- evaluator vs pycocotools

def coco_metrics(pred_boxes, pred_scores, gt_boxes, iou_thresholds, max_detections):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        x1, y1, x2, y2 = box
        return [x1, y1, x2 - x1, y2 - y1]

    images = range(1, len(gt_boxes) + 1)
    annotations = [{"image_id": image, "category_id": 1, "bbox": xywh(box), "iscrowd": 0}
                   for image, gts in zip(images, gt_boxes) for box in gts.tolist()]
    for number, annotation in enumerate(annotations, 1):
        annotation.update(id=number, area=annotation["bbox"][2] * annotation["bbox"][3])
    detections = [{"image_id": image, "category_id": 1, "bbox": xywh(box), "score": score}
                  for image, b, s in zip(images, pred_boxes, pred_scores)
                  for box, score in zip(b.tolist(), s.tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {"images": [{"id": i} for i in images], "categories": [{"id": 1}],
                                "annotations": annotations}
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluator.params.iouThrs = np.array(iou_thresholds)
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, 0, 0, 0]  # [T, recall levels]
    return precision.mean(1), evaluator.eval["recall"][:, 0, 0, 0]


def test_detection_metrics_equal_pycocotools():
    thresholds = (0.5, 0.75) + tuple(np.linspace(0.5, 0.95, 10))
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        preds, scores, gts = [], [], []
        for image in range(4):
            gt = crowded_scene(int(torch.randint(1, 12, (1,), generator=g)), 300, generator=g)
            b, s = simulate_detections(gt, per_object=4, jitter=0.2, generator=g)
            keep, kept = soft_nms(b, s, method=METHODS[image % 3])
            if seed == 4:
                kept = (kept * 10).round() / 10  # score ties across and within images
            preds.append(b[keep])
            scores.append(kept)
            gts.append(gt)
        gts[1] = gts[1][:0]  # an image without ground truth: all its predictions are false
        preds[2], scores[2] = preds[2][:0], scores[2][:0]  # an image without predictions
        for max_detections in (100, 7):
            ours = detection_metrics(preds, scores, gts, iou_thresholds=thresholds,
                                     max_detections=max_detections)
            ap, recall = coco_metrics(preds, scores, gts, thresholds, max_detections)
            np.testing.assert_allclose(ours["ap"].numpy(), ap, rtol=0, atol=1e-6)
            np.testing.assert_allclose(ours["recall"].numpy(), recall, rtol=0, atol=1e-6)
            assert (average_precision(preds, scores, gts, 0.75, max_detections)
                    == pytest.approx(ap[1], abs=1e-6))


def test_detection_metrics_edge_cases():
    gt = [torch.tensor([[0.0, 0, 10, 10]])]
    metrics = detection_metrics([torch.zeros(0, 4)], [torch.zeros(0)], gt)
    assert metrics["ap"].tolist() == [0.0] and metrics["recall"].tolist() == [0.0]
    metrics = detection_metrics(gt, [torch.ones(1)], [torch.zeros(0, 4)])
    assert torch.isnan(metrics["ap"]).all() and torch.isnan(metrics["recall"]).all()
    assert average_precision(gt, [torch.ones(1)], gt) == pytest.approx(1.0)  # 1 / (1 + eps), as COCO
    with pytest.raises(ValueError):
        detection_metrics(gt, [torch.ones(1)], gt + gt)
    with pytest.raises(ValueError):
        detection_metrics(gt, [torch.ones(2)], gt)
    with pytest.raises(ValueError):
        detection_metrics(gt, [torch.ones(1)], gt, iou_thresholds=(1.5,))
    with pytest.raises(ValueError):
        detection_metrics(gt, [torch.ones(1)], gt, iou_thresholds=())
    with pytest.raises(ValueError):
        detection_metrics(gt, [torch.ones(1)], gt, max_detections=0)
    with pytest.raises(TypeError):
        detection_metrics(gt[0], [torch.ones(1)], gt)
