"""Box-regression losses: tricklib's GIoU/DIoU/CIoU vs torchvision's, forward + backward.

    python -m benchmarks.iou_losses [--threads 1] [--boxes 65536] [--runs 5] [--rounds 3] [--repeats 5]

``--boxes`` predicted boxes against as many targets (random, about half of the pairs
overlapping), float32; each call makes fresh leaf predictions, computes the loss with
``reduction="sum"`` and calls ``backward()``. Times from
``tricklib.measure.median_times_ms`` (warm medians; on one CPU thread the clock is the
thread's CPU time), ``--runs`` times; the table gives the median and range. Measured
figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations


import torch
import torchvision
import torchvision.ops as ops

from benchmarks import parse, print_ratio_table, timing_parser
from benchmarks.soft_nms import device_name
from tricklib.boxes import ciou_loss, diou_loss, giou_loss


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 100
    return torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 50 + 1], dim=1)


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--boxes", type=int, default=65536)
    args = parse(parser)
    g = torch.Generator().manual_seed(0)
    pred, target = random_boxes(args.boxes, g), random_boxes(args.boxes, g)

    def forward_backward(loss):
        def call():
            boxes = pred.detach().requires_grad_()
            loss(boxes, target, reduction="sum").backward()
        return call

    pairs = {"GIoU": (giou_loss, ops.generalized_box_iou_loss), "DIoU": (diou_loss, ops.distance_box_iou_loss),
             "CIoU": (ciou_loss, ops.complete_box_iou_loss)}
    print(f"{device_name(torch.device('cpu'))}, {args.threads} thread(s), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {args.boxes} boxes; median of {args.runs} runs (range)\n")
    print_ratio_table({name: (forward_backward(ours), forward_backward(theirs))
                       for name, (ours, theirs) in pairs.items()}, args, "| loss | tricklib ms | torchvision ms | ratio |\n|---|---|---|---|")


if __name__ == "__main__":
    main()
