"""Boundary IoU: tricklib's batched ``boundary_iou`` vs the per-mask SciPy definition the tests use.

    python -m benchmarks.segmentation [--threads 1] [--masks 256] [--size 64] [--dilation 2] [--runs 5]

``--masks`` pairs of ``--size`` × ``--size`` masks from ``tricklib.thin_shapes`` (the
PointRend chapter's data; the prediction is the truth with 3 % of its pixels flipped). The
reference computes each mask's boundary band with ``scipy.ndimage.binary_erosion`` (3 × 3
structure, ``dilation`` iterations, outside = background, as the Boundary IoU paper's
``cv2.erode`` code) and counts with NumPy, one mask at a time, as the paper's code does;
tricklib's does all masks in one ``max_pool2d``. Times from
``tricklib.measure.median_times_ms`` (warm medians), ``--runs`` times; the table gives the
median and range. Measured figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from benchmarks import parse, print_ratio_table, timing_parser
from benchmarks.soft_nms import device_name
from tricklib.data import thin_shapes
from tricklib.segmentation import boundary_iou


def reference_boundary_iou(pred: np.ndarray, target: np.ndarray, dilation: int) -> np.ndarray:
    structure = np.ones((3, 3), dtype=bool)
    out = np.empty(len(pred))
    for n, (p, t) in enumerate(zip(pred, target)):
        pb = p & ~ndimage.binary_erosion(p, structure=structure, iterations=dilation, border_value=0)
        tb = t & ~ndimage.binary_erosion(t, structure=structure, iterations=dilation, border_value=0)
        union = (pb | tb).sum()
        out[n] = 1.0 if union == 0 else (pb & tb).sum() / union
    return out


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--masks", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dilation", type=int, default=2)
    args = parse(parser)
    _, target = thin_shapes(args.masks, args.size, seed=0)
    flip = torch.rand(target.shape, generator=torch.Generator().manual_seed(1)) < 0.03
    pred = target ^ flip
    pred_np, target_np = pred.numpy(), target.numpy()
    ours = boundary_iou(pred, target, args.dilation).double().numpy()
    gap = np.abs(ours - reference_boundary_iou(pred_np, target_np, args.dilation)).max()
    print(f"{device_name(torch.device('cpu'))}, {args.threads} thread(s), torch {torch.__version__}, "
          f"{args.masks} masks of {args.size} x {args.size}, d = {args.dilation}; largest difference from the "
          f"reference {gap:.1e}; median of {args.runs} runs (range)\n")
    print_ratio_table({"boundary IoU": (lambda: boundary_iou(pred, target, args.dilation),
                                        lambda: reference_boundary_iou(pred_np, target_np, args.dilation))},
                      args, "| metric | tricklib ms | SciPy per mask ms | ratio |\n|---|---|---|---|")


if __name__ == "__main__":
    main()
