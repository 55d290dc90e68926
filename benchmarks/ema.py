"""EMA-of-weights update speed: tricklib.ModelEMA vs the usual ways, on ResNet-50's weights.

    python -m benchmarks.ema [--threads 1] [--runs 5] [--rounds 3] [--repeats 5] [--device cpu]

The workload of issue 18: one EMA update of torchvision's ResNet-50 (25.6 M parameters,
161 float parameter/buffer tensors plus the BatchNorm counters), decay 0.999. Rows:

- the per-tensor loop over ``state_dict()`` that many training scripts copy
  (``ema_v.copy_(decay * ema_v + (1 - decay) * model_v)`` for each floating entry),
- one ``torch._foreach_lerp_`` over all floating tensors, the lists gathered once (the
  floor: one fused pass, nothing else),
- ``torch.optim.swa_utils.AveragedModel(..., multi_avg_fn=get_ema_multi_avg_fn(0.999),
  use_buffers=True)``'s ``update_parameters``,
- ``tricklib.ModelEMA.update`` (gathers the tensors on every call, so it follows a model
  whose parameters were replaced or moved).

Times from ``tricklib.measure.median_times_ms`` (warm medians; on one CPU thread the clock
is the thread's CPU time), taken ``--runs`` times; the table gives the median and range.
Measured figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

import statistics

import torch
import torchvision
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from benchmarks import parse, timing_parser
from benchmarks.soft_nms import device_name
from tricklib import ModelEMA
from tricklib.measure import median_times_ms

DECAY = 0.999


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--device", default="cpu")
    args = parse(parser)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device)

    ema_loop = {k: v.clone() for k, v in model.state_dict().items()}

    def per_tensor_loop():
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema_v = ema_loop[k]
                    ema_v.copy_(DECAY * ema_v + (1.0 - DECAY) * v)

    ema_lists = [v.clone() for v in model.state_dict().values() if v.dtype.is_floating_point]
    model_lists = [v for v in model.state_dict().values() if v.dtype.is_floating_point]

    def foreach_lerp():
        torch._foreach_lerp_(ema_lists, model_lists, 1.0 - DECAY)

    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY), use_buffers=True)
    averaged.update_parameters(model)
    ema = ModelEMA(model, decay=DECAY, warmup=False)

    rows = {
        "per-tensor loop over state_dict()": per_tensor_loop,
        "one torch._foreach_lerp_ (floor)": foreach_lerp,
        "AveragedModel.update_parameters": lambda: averaged.update_parameters(model),
        "tricklib ModelEMA.update": lambda: ema.update(model),
    }
    params = sum(v.numel() for v in model_lists)
    print(f"{device_name(device)}, {args.threads} thread(s), torch {torch.__version__}, ResNet-50: "
          f"{len(model_lists)} float tensors, {params / 1e6:.1f} M values; median of {args.runs} runs (range)\n")
    runs = [median_times_ms(list(rows.values()), rounds=args.rounds, repeats=args.repeats, device=device)
            for _ in range(args.runs)]
    floor = [run[1] for run in runs]
    print("| | ms | x foreach lerp |\n|---|---|---|")
    for k, name in enumerate(rows):
        ms = [run[k] for run in runs]
        ratios = [a / b for a, b in zip(ms, floor)]
        print(f"| {name} | {statistics.median(ms):.1f} ({min(ms):.1f}–{max(ms):.1f}) | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
