"""Where code runs and how big the experiments are: device, seeds, scale.

Every chapter's first cell calls :func:`seed_everything` and :func:`get_device`,
sizes its experiments with :func:`by_scale` and takes its seeds from
:func:`seeds`, so the same notebook runs in about 20 s on a 2-core CPU (the
``"small"`` scale CI and nbval use), at a real size on a GPU (``"full"``), and
on any seeds a reader chooses (``TRICKLIB_SEEDS``).
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import torch

from ._checks import check_choice, check_int

T = TypeVar("T")

SCALES = ("small", "full")
SCALE_ENV = "TRICKLIB_SCALE"
DEVICE_ENV = "TRICKLIB_DEVICE"
PROGRESS_ENV = "TRICKLIB_PROGRESS"
SEEDS_ENV = "TRICKLIB_SEEDS"


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

    Args:
        seed: a non-negative integer (NumPy gets ``seed % 2**32``).
        deterministic: also ask for deterministic algorithms, as above; the setting
            stays on for the rest of the process.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.
    """
    seed = check_int("seed", seed, 0)
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

    Args:
        small: the value at the ``"small"`` scale (CPU, CI, the saved notebooks).
        full: the value at the ``"full"`` scale (the default with CUDA); see :func:`get_scale`.
    """
    return small if get_scale() == "small" else full


def seeds(small: int = 6, full: int = 10) -> list[int]:
    """The seeds a chapter's experiment runs on: how many is the chapter's choice, which is yours.

    The count is ``small`` or ``full`` by the scale (:func:`by_scale`). By default the
    seeds are ``0, 1, …, count − 1``. The environment variable ``TRICKLIB_SEEDS``
    (comma-separated non-negative integers, e.g. ``101,102,103,104,105``) replaces
    them in every chapter, so a claim can be checked on seeds it was never tuned
    on: its seeds are used first, and where the experiment needs more, the count
    continues from the largest one (``106, 107, …``); where it needs fewer, the
    first ones are used.

    Args:
        small, full: how many seeds at each scale (at least 1).

    Returns:
        A list of distinct seeds.
    """
    small, full = check_int("small", small, 1), check_int("full", full, 1)
    count = by_scale(small, full)
    text = os.environ.get(SEEDS_ENV, "").strip()
    if not text:
        return list(range(count))
    try:
        listed = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{SEEDS_ENV} must be comma-separated integers, got {text!r}") from None
    if not listed or min(listed) < 0 or len(set(listed)) != len(listed):
        raise ValueError(f"{SEEDS_ENV} must list distinct non-negative integers, got {text!r}")
    more = range(max(listed) + 1, max(listed) + 1 + max(0, count - len(listed)))
    return (listed + list(more))[:count]


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterable[T]:
    """Wrap a long loop in a ``tqdm.auto`` progress bar, unless progress bars are off.

    ``TRICKLIB_PROGRESS=0`` (or tqdm's own ``TQDM_DISABLE=1``) returns the
    iterable unchanged: the saved notebooks of the book are run that way, so
    they carry no ipywidgets progress bar (whose JavaScript would have to come
    from the network).

    Args:
        iterable: what the loop runs over.
        desc: the bar's label, e.g. what one item is (``"seeds"``).
        total: number of items, for an iterable without ``len()`` (a generator).
    """
    if os.environ.get(PROGRESS_ENV, "1") == "0" or os.environ.get("TQDM_DISABLE", "0") not in ("", "0"):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=1.0)
