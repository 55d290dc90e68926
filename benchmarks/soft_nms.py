"""Soft-NMS speed: tricklib vs torchvision's hard NMS vs the plain sequential loop.

    python -m benchmarks.soft_nms [--threads 1] [--device cpu|cuda] [--rounds 5] [--repeats 20]
                                  [--sizes 500 2000 10000] [--per-object 20] [--classes 20]

Scenes: ``tricklib.scenes.crowded_detections`` (``--per-object`` proposals per object,
0.2 false positives per object) at constant crowd density (25 objects per 512 x 512
pixels: the image grows with the number of boxes). Rows ``linear`` and ``gaussian`` time
``soft_nms`` against ``torchvision.ops.nms`` (IoU threshold 0.3); row ``batched`` times
``batched_soft_nms`` (linear) against ``torchvision.ops.batched_nms`` with each box in one of
``--classes`` random classes.

Times are warm medians from ``tricklib.measure.median_times_ms``: after three warm-up calls
each function runs ``--repeats`` times back to back, in ``--rounds`` rounds that take turns
(so that a machine busy with other work slows all of them alike). On one CPU thread the
clock is the calling thread's CPU time (waiting for a core on a shared machine does not
count), otherwise wall-clock time, with CUDA synchronised. "keep = ref" says whether
tricklib kept the same boxes, in the same order, as the sequential loop of
``tests/test_nms.py`` (scores to rtol 1e-5) or, for ``batched``, as that loop class by
class; "pure torch" is tricklib without numba (one call).
Measured figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch
import torchvision

import tricklib.nms as nms_module
from tests.test_nms import soft_nms_reference
from tricklib.measure import median_times_ms
from tricklib.nms import batched_soft_nms, soft_nms
from tricklib.scenes import crowded_detections


def without_numba(function):
    """``function()`` with tricklib's compiled kernel switched off."""
    saved, nms_module.numba = nms_module.numba, None
    try:
        return function()
    finally:
        nms_module.numba = saved


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--per-object", type=int, default=20, help="proposals per object (default 20)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the batched row (default 20)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    compiled = nms_module.numba is not None and device.type == "cpu"
    clock = time.thread_time if device.type == "cpu" and args.threads == 1 else time.perf_counter
    print(f"{device_name(device)} ({device}), {args.threads} thread(s), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, numba kernel: {'yes' if compiled else 'no'}, "
          f"clock: {clock.__name__}\n")
    columns = ("N", "method", "tricklib ms", "torchvision ms", "ratio", "sequential ms",
               "keep = ref", "pure torch ms")
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for size in args.sizes:
        boxes, scores = crowded_detections(size, per_object=args.per_object,
                                           generator=torch.Generator().manual_seed(0))
        classes = torch.randint(args.classes, (len(scores),), generator=torch.Generator().manual_seed(size))
        boxes, scores, classes = boxes.to(device), scores.to(device), classes.to(device)
        calls = {"linear": lambda: soft_nms(boxes, scores, method="linear"),
                 "gaussian": lambda: soft_nms(boxes, scores, method="gaussian"),
                 "batched": lambda: batched_soft_nms(boxes, scores, classes)}
        nms_ms, batched_nms_ms, *ours_ms = median_times_ms(
            [lambda: torchvision.ops.nms(boxes, scores, 0.3),
             lambda: torchvision.ops.batched_nms(boxes, scores, classes, 0.3), *calls.values()],
            rounds=args.rounds, repeats=args.repeats, device=device)
        for (method, call), method_ms in zip(calls.items(), ours_ms):
            keep, kept = call()
            start = clock()  # the plain loop is slow: once is enough
            if method == "batched":
                ref_keep, ref_kept = per_class_reference(boxes.cpu(), scores.cpu(), classes.cpu())
            else:
                ref_keep, ref_kept = soft_nms_reference(boxes.cpu(), scores.cpu(), method=method)
            reference_ms = 1e3 * (clock() - start)
            same = (torch.equal(keep.cpu(), ref_keep)
                    and torch.allclose(kept.cpu(), ref_kept, rtol=1e-5, atol=0))
            torch_ms = method_ms
            if compiled:
                torch_ms, = without_numba(lambda: median_times_ms([call], rounds=1, repeats=1, warmup=1,
                                                                  device=device))
            reference = batched_nms_ms if method == "batched" else nms_ms
            print(f"| {len(scores)} | {method} | {method_ms:.3f} | {reference:.3f} | "
                  f"{method_ms / reference:.2f}x | {reference_ms:.0f} | {'yes' if same else 'NO'} | "
                  f"{torch_ms:.1f} |")


def per_class_reference(boxes, scores, classes):
    """Linear Soft-NMS by the sequential loop class by class, merged by score (ties: index)."""
    keep, kept = [], []
    for c in classes.unique():
        members = torch.nonzero(classes == c).flatten()
        class_keep, class_kept = soft_nms_reference(boxes[members], scores[members])
        keep.append(members[class_keep])
        kept.append(class_kept)
    keep, kept = torch.cat(keep), torch.cat(kept)
    keep, by_index = keep.sort()
    kept, by_score = kept[by_index].sort(descending=True, stable=True)
    return keep[by_score], kept


if __name__ == "__main__":
    main()
