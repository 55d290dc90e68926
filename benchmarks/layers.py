"""Part 3's layers written out in torch against torch's own: GroupNorm, channel shuffle, attention.

    python -m benchmarks.layers [--threads 1] [--runs 5] [--rounds 3] [--repeats 5]

Forward + backward (sum of the output, ``backward()``) on float32 inputs of a small
CNN's or a small transformer's size:

- ``tricklib.GroupNorm(32, 256)`` vs ``nn.GroupNorm(32, 256)`` on ``[32, 256, 28, 28]``;
- ``tricklib.channel_shuffle(x, 8)`` vs ``nn.ChannelShuffle(8)`` on ``[32, 256, 28, 28]``;
- ``tricklib.attention`` vs ``F.scaled_dot_product_attention`` (CPU: its math or flash
  kernel, whichever torch picks) on ``[16, 8, 256, 64]`` queries, keys and values, without
  and with ``is_causal``.

Times from ``tricklib.measure.median_times_ms`` (warm medians; on one CPU thread the clock
is the thread's CPU time), ``--runs`` times; the table gives the median and range, the
ratio run by run. Measured figures are in ``benchmarks/README.md``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import parse, print_ratio_table, timing_parser
from benchmarks.soft_nms import device_name
from tricklib.layers import GroupNorm, attention, channel_shuffle


def forward_backward(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        leaves = [t.detach().requires_grad_() for t in inputs]
        fn(*leaves).sum().backward()
    return call


def main() -> None:
    args = parse(timing_parser(__doc__))
    g = torch.Generator().manual_seed(0)
    image = torch.randn(32, 256, 28, 28, generator=g)
    q, k, v = (torch.randn(16, 8, 256, 64, generator=g) for _ in range(3))
    ours_gn, torch_gn = GroupNorm(32, 256), nn.GroupNorm(32, 256)
    cases = {
        "GroupNorm(32, 256)": (forward_backward(ours_gn, image), forward_backward(torch_gn, image)),
        "channel_shuffle, 8 groups": (forward_backward(lambda x: channel_shuffle(x, 8), image),
                                      forward_backward(nn.ChannelShuffle(8), image)),
        "attention": (forward_backward(attention, q, k, v),
                      forward_backward(F.scaled_dot_product_attention, q, k, v)),
        "attention, causal": (forward_backward(lambda *t: attention(*t, is_causal=True), q, k, v),
                              forward_backward(lambda *t: F.scaled_dot_product_attention(*t, is_causal=True),
                                               q, k, v)),
    }
    print(f"{device_name(torch.device('cpu'))}, {args.threads} thread(s), torch {torch.__version__}; "
          f"median of {args.runs} runs (range)\n")
    print_ratio_table(cases, args, "| layer | tricklib ms | torch ms | ratio |\n|---|---|---|---|")


if __name__ == "__main__":
    main()
