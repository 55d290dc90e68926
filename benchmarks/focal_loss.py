"""Focal loss speed: tricklib vs torchvision vs plain BCE-with-logits, forward + backward.

    python -m benchmarks.focal_loss [--threads 1] [--rows 65536] [--classes 80] [--positives 0.01]
                                    [--runs 5] [--rounds 3] [--repeats 5]

The workload of issue 14: ``rows x classes`` float32 logits (a dense detector's
anchors x classes), ``N(-4, 2^2)`` so that most negatives are easy, 0/1 targets with
``--positives`` of them 1; each call makes fresh leaf logits, computes the loss with
``reduction="sum"`` and calls ``backward()``. Rows: ``binary_cross_entropy_with_logits``
(the floor: the loss focal loss reweights), ``torchvision.ops.sigmoid_focal_loss``
(autograd through the formula), ``tricklib.focal_loss`` through its compiled kernel (CPU
with numba) and through its torch ops (CUDA, or no numba); alpha 0.25, gamma 2.

Times come from ``tricklib.measure.median_times_ms`` (warm medians; on one CPU thread the
clock is the thread's CPU time, so waiting for a core on a busy machine does not count),
taken ``--runs`` times; the table gives the median of the runs and their range.

The whole table is measured twice. ``torch.log1p`` (used by BCE-with-logits through
``logsigmoid``) runs about ten times faster in a process that has once evaluated
``log1p(-0.0)`` (measured on an AMD EPYC with torch 2.14: the state is process-wide and
permanent). A training loop never does that by itself, so the first table is what a fresh
process sees; the second is measured after forcing it, the fastest BCE this machine gives.
Measured figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
import torchvision

import tricklib.losses as losses_module
from benchmarks import parse, timing_parser
from benchmarks.soft_nms import device_name
from tricklib.losses import focal_loss
from tricklib.measure import median_times_ms


def without_numba(function):
    """``function`` with tricklib's compiled focal-loss kernel switched off."""
    def call():
        saved, losses_module.numba = losses_module.numba, None
        try:
            return function()
        finally:
            losses_module.numba = saved
    return call


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--positives", type=float, default=0.01, help="share of targets equal to 1")
    args = parse(parser)
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(args.rows, args.classes, generator=g) - 4
    targets = (torch.rand(args.rows, args.classes, generator=g) < args.positives).float()

    def forward_backward(loss):
        def call():
            z = logits.detach().requires_grad_()
            loss(z, targets).backward()
        return call

    rows = {
        "BCE-with-logits": forward_backward(lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="sum")),
        "torchvision sigmoid_focal_loss": forward_backward(
            lambda z, y: torchvision.ops.sigmoid_focal_loss(z, y, reduction="sum")),
        "tricklib focal_loss, compiled": forward_backward(lambda z, y: focal_loss(z, y, reduction="sum")),
        "tricklib focal_loss, torch ops": without_numba(
            forward_backward(lambda z, y: focal_loss(z, y, reduction="sum"))),
    }
    if losses_module.numba is None:
        del rows["tricklib focal_loss, compiled"]
    check_agreement(logits, targets)
    print(f"{device_name(torch.device('cpu'))}, {args.threads} thread(s), torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {args.rows} x {args.classes} logits, "
          f"{args.positives:.0%} positives; median of {args.runs} runs (range)\n")
    for state in ("a fresh process", "after log1p(-0.0)"):
        if state != "a fresh process":
            torch.log1p(torch.tensor([-0.0]))
        runs = [median_times_ms(list(rows.values()), rounds=args.rounds, repeats=args.repeats)
                for _ in range(args.runs)]
        print(f"**{state}**\n\n| | ms | x BCE | x torchvision |\n|---|---|---|---|")
        bce = [run[0] for run in runs]
        tv = [run[1] for run in runs]
        for k, name in enumerate(rows):
            ms = [run[k] for run in runs]
            print(f"| {name} | {statistics.median(ms):.1f} ({min(ms):.1f}–{max(ms):.1f}) | "
                  f"{ratio(ms, bce)} | {ratio(ms, tv)} |")
        print()


def ratio(times: list[float], reference: list[float]) -> str:
    """Median and range over runs of the per-run ratio ``times / reference``."""
    ratios = [a / b for a, b in zip(times, reference)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def check_agreement(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Fail loudly if tricklib and torchvision disagree on this workload (loss and gradient)."""
    sample = slice(0, 4096)
    z = logits[sample].detach().requires_grad_()
    ref = torchvision.ops.sigmoid_focal_loss(z, targets[sample], reduction="none")
    ref_grad = torch.autograd.grad(ref.sum(), z)[0]
    for call in (lambda: focal_loss(z, targets[sample]), without_numba(lambda: focal_loss(z, targets[sample]))):
        ours = call()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.autograd.grad(ours.sum(), z)[0], ref_grad, rtol=1e-5, atol=1e-7)


if __name__ == "__main__":
    main()
