"""Tests for tricklib.scenes: crowded scenes and simulated detections."""
import pytest
import torch

from tricklib.boxes import box_iou
from tricklib.scenes import crowded_detections, crowded_scene, simulate_detections


# ----------------------------------------------------------------------------- synthetic scenes

def test_crowded_scene_neighbours_overlap_as_asked():
    gt = crowded_scene(30, 400, (0.3, 0.7), generator=torch.Generator().manual_seed(0))
    assert gt.shape == (30, 4) and gt.dtype == torch.float32
    assert (gt >= 0).all() and (gt <= 400).all() and (gt[:, 2:] > gt[:, :2]).all()
    neighbours = torch.stack([box_iou(gt[i:i + 1], gt[i + 1:i + 2])[0, 0]
                              for i in range(30) if i % 3 != 2])
    assert ((neighbours > 0.3 - 1e-4) & (neighbours < 0.7 + 1e-4)).all()
    again = crowded_scene(30, 400, (0.3, 0.7), generator=torch.Generator().manual_seed(0))
    assert torch.equal(gt, again)
    assert crowded_scene(0, generator=torch.Generator()).shape == (0, 4)
    with pytest.raises(ValueError):
        crowded_scene(5, overlap=(0.7, 0.3))


def test_simulate_detections_shape_and_determinism():
    gt = crowded_scene(10, generator=torch.Generator().manual_seed(0))
    b, s = simulate_detections(gt, per_object=5, false_positives=0.3,
                               generator=torch.Generator().manual_seed(1))
    assert b.shape == (53, 4) and s.shape == (53,) and (s >= 0).all() and (s <= 1).all()
    assert (b[:, 2:] >= b[:, :2]).all()
    b2, s2 = simulate_detections(gt, per_object=5, false_positives=0.3,
                                 generator=torch.Generator().manual_seed(1))
    assert torch.equal(b, b2) and torch.equal(s, s2)
    with pytest.raises(ValueError):
        simulate_detections(gt, per_object=0)


def test_crowded_detections_size_density_and_errors():
    for n in (1, 60, 500, 2000):
        b, s = crowded_detections(n, generator=torch.Generator().manual_seed(0))
        objects = max(1, n // 20)
        assert len(b) == len(s) == objects * 20 + round(0.2 * objects)
    small, _ = crowded_detections(500, generator=torch.Generator().manual_seed(0))
    large, _ = crowded_detections(2000, generator=torch.Generator().manual_seed(0))
    area = lambda b: ((b[:, 2:].max(0).values - b[:, :2].min(0).values).prod() / len(b)).item()
    assert 0.5 < area(large) / area(small) < 2  # the image grows with the crowd: same density
    again, _ = crowded_detections(500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(small, again)
    for bad, error in (({"n_boxes": 0}, ValueError), ({"n_boxes": 10, "per_object": 0}, ValueError),
                       ({"n_boxes": 2.5}, TypeError)):
        with pytest.raises(error, match="n_boxes|per_object"):
            crowded_detections(**bad)
