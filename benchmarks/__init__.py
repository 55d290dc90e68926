"""Speed measurements run by hand; their figures are recorded in benchmarks/README.md."""
from __future__ import annotations

import argparse

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
