"""Soft-NMS speed: tricklib vs torchvision's hard NMS vs the plain sequential loop.

    python -m benchmarks.soft_nms [--threads 1] [--device cpu|cuda] [--repeats 7] [--per-object 20]

Scenes: ``crowded_scene`` + ``simulate_detections`` (``--per-object`` proposals per object,
0.2 false positives per object) at constant crowd density (25 objects per 512 x 512
pixels: the image grows with the number of boxes). Times are medians of ``--repeats``
runs after two warm-up runs, of the calling thread's CPU time on one CPU thread (so that
other work on a shared machine does not count), of wall-clock time otherwise. "keep = ref"
says whether tricklib kept the same boxes, in the same order, as the sequential loop of
``tests/test_boxes.py`` (scores to rtol 1e-5); "pure torch" is tricklib without numba.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torchvision

import tricklib.boxes as boxes_module
from tests.test_boxes import soft_nms_reference
from tricklib.boxes import crowded_scene, simulate_detections, soft_nms

METHODS = ("linear", "gaussian")


def benchmark_scene(n_boxes: int, per_object: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """About ``n_boxes`` proposals around ``n_boxes / per_object`` objects, 25 per 512 x 512 pixels."""
    objects = max(1, n_boxes // per_object)
    grow = math.sqrt(objects / 25)
    generator = torch.Generator().manual_seed(seed)
    gt = crowded_scene(objects, round(512 * grow), object_size=(0.04 / grow, 0.12 / grow),
                       generator=generator)
    return simulate_detections(gt, per_object=per_object, generator=generator)


def median_ms(functions, repeats: int, device: torch.device, clock=time.perf_counter) -> list[float]:
    """Median time of each function, in ms, read on ``clock``; the functions take turns,
    so that a machine busy with other work slows them alike."""
    def timed(function):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return 1e3 * (clock() - start)

    for function in functions:  # warm-up (and numba's compilation)
        timed(function), timed(function)
    times = [[timed(function) for function in functions] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*times)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--per-object", type=int, default=20, help="proposals per object (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compiled = boxes_module.numba is not None and device.type == "cpu"
    # On one CPU thread, time that thread's CPU time: on a shared machine, wall-clock time
    # also counts the moments the process waits for a core.
    clock = time.thread_time if device.type == "cpu" and args.threads == 1 else time.perf_counter
    print(f"device {device}, {args.threads} thread(s), numba kernel: {'yes' if compiled else 'no'}, "
          f"clock: {clock.__name__}")
    columns = ("N", "method", "tricklib ms", "torchvision nms ms", "ratio", "sequential ms",
               "keep = ref", "pure torch ms")
    print(" | ".join(columns))
    print(" | ".join("-" * len(c) for c in columns))
    for size in args.sizes:
        boxes, scores = benchmark_scene(size, args.per_object)
        boxes, scores = boxes.to(device), scores.to(device)
        nms_ms, *ours_ms = median_ms([lambda: torchvision.ops.nms(boxes, scores, 0.3)]
                                     + [lambda m=m: soft_nms(boxes, scores, method=m) for m in METHODS],
                                     args.repeats, device, clock)
        for method, method_ms in zip(METHODS, ours_ms):
            keep, kept = soft_nms(boxes, scores, method=method)
            start = clock()  # the plain loop is slow: once is enough
            ref_keep, ref_kept = soft_nms_reference(boxes.cpu(), scores.cpu(), method=method)
            reference_ms = 1e3 * (clock() - start)
            same = (torch.equal(keep.cpu(), ref_keep)
                    and torch.allclose(kept.cpu(), ref_kept, rtol=1e-5, atol=0))
            torch_ms = method_ms
            if compiled:  # the same call without the numba kernel
                saved, boxes_module.numba = boxes_module.numba, None
                try:
                    torch_ms, = median_ms([lambda: soft_nms(boxes, scores, method=method)], 1, device, clock)
                finally:
                    boxes_module.numba = saved
            print(f"{len(scores)} | {method} | {method_ms:.2f} | {nms_ms:.2f} | {method_ms / nms_ms:.1f}x | "
                  f"{reference_ms:.0f} | {'yes' if same else 'NO'} | {torch_ms:.1f}")


if __name__ == "__main__":
    main()
