"""Where code runs and how big the experiments are: device, seeds, scale.

Every chapter's first cell calls :func:`seed_everything` and :func:`get_device`,
and sizes its experiments with :func:`by_scale`, so the same notebook runs in
about 15 s on a 2-core CPU (the ``"small"`` scale CI and nbval use) and at a
real size on a GPU (``"full"``).
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch

from ._checks import check_choice

T = TypeVar("T")

SCALES = ("small", "full")
SCALE_ENV = "TRICKLIB_SCALE"
DEVICE_ENV = "TRICKLIB_DEVICE"
PROGRESS_ENV = "TRICKLIB_PROGRESS"


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the fastest available device: CUDA, then Apple's MPS, then the CPU.

    Args:
        prefer: ``"cpu"``, ``"cuda"`` or ``"mps"`` to force one; defaults to the
            ``TRICKLIB_DEVICE`` environment variable, else automatic choice.

    Returns:
        The chosen ``torch.device``.
    """
    prefer = prefer or os.environ.get(DEVICE_ENV)
    if prefer:
        check_choice("prefer", prefer, ("cpu", "cuda", "mps"))
        if prefer == "cuda" and not torch.cuda.is_available():
            raise ValueError("prefer='cuda' but CUDA is not available on this machine")
        if prefer == "mps" and not torch.backends.mps.is_available():
            raise ValueError("prefer='mps' but MPS is not available on this machine")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python's ``random``, NumPy and torch (all devices).

    With ``deterministic=True`` torch is also asked for deterministic algorithms
    (``warn_only``, so ops without a deterministic version still run) and cuDNN's
    autotuner is switched off; on the CPU this makes two runs bit-identical.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def get_scale() -> str:
    """The experiment scale: ``TRICKLIB_SCALE`` if set, else ``"full"`` with CUDA, else ``"small"``."""
    scale = os.environ.get(SCALE_ENV)
    if scale:
        check_choice(SCALE_ENV, scale, SCALES)
        return scale
    return "full" if torch.cuda.is_available() else "small"


def by_scale(small: T, full: T) -> T:
    """Return ``small`` at the small (CI) scale and ``full`` at the full scale.

    Example: ``epochs = by_scale(small=20, full=200)``.
    """
    return small if get_scale() == "small" else full


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap a long loop in a ``tqdm.auto`` progress bar, unless progress bars are off.

    ``TRICKLIB_PROGRESS=0`` (or tqdm's own ``TQDM_DISABLE=1``) returns the
    iterable unchanged: the saved notebooks of the book are run that way, so
    they carry no ipywidgets progress bar (whose JavaScript would have to come
    from the network).
    """
    if os.environ.get(PROGRESS_ENV, "1") == "0" or os.environ.get("TQDM_DISABLE", "0") not in ("", "0"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0)
