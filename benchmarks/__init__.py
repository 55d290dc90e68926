"""Speed measurements run by hand; their figures are recorded in benchmarks/README.md."""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Mapping

import torch


def timing_parser(doc: str) -> argparse.ArgumentParser:
    """The options every timing table shares: ``--threads``, ``--runs``, ``--rounds``, ``--repeats``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--runs", type=int, default=5, help="independent measurements (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and set torch's CPU threads."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def print_ratio_table(cases: Mapping[str, tuple[Callable[[], object], Callable[[], object]]],
                      args: argparse.Namespace, header: str) -> None:
    """Time each ``(ours, theirs)`` pair ``args.runs`` times and print a Markdown row per case:
    median and range of each, and of the ratio ours ÷ theirs taken run by run."""
    from tricklib.measure import median_times_ms

    print(header)
    for name, (ours, theirs) in cases.items():
        runs = [median_times_ms([ours, theirs], rounds=args.rounds, repeats=args.repeats) for _ in range(args.runs)]
        a, b = [r[0] for r in runs], [r[1] for r in runs]
        ratios = [x / y for x, y in zip(a, b)]
        print(f"| {name} | {statistics.median(a):.2f} ({min(a):.2f}–{max(a):.2f}) | "
              f"{statistics.median(b):.2f} ({min(b):.2f}–{max(b):.2f}) | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
