"""Argument checks shared by tricklib's public functions.

Every check raises ``ValueError``/``TypeError`` naming the argument, what was
expected and what was received, so bad input fails loudly instead of producing
a silent wrong answer or a NaN (``assert`` would vanish under ``python -O``).
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def check_tensor(name: str, x: object, *, ndim: int | None = None,
                 last_dim: int | None = None, floating: bool = False) -> torch.Tensor:
    """Check that ``x`` is a tensor with the given rank / last dimension / dtype kind."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if last_dim is not None and (x.dim() == 0 or x.shape[-1] != last_dim):
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_same_device(**tensors: torch.Tensor) -> None:
    """Check that all given tensors live on one device."""
    first = None
    for tensor in tensors.values():
        if first is None:
            first = tensor.device
        elif tensor.device != first:
            listed = ", ".join(f"{n} on {t.device}" for n, t in tensors.items())
            raise ValueError(f"tensors must be on the same device, got {listed}")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Check that a tensor holds no NaN or infinity."""
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")


def check_int(name: str, value: object, low: int | None = None) -> int:
    """Check that ``value`` is a whole number ``>= low`` (Python or NumPy int, not a bool); return it as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, high_open: bool = False) -> float:
    """Check ``low <= value <= high`` (``<`` where the bound is open) for a Python or NumPy real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high or value != value:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return value


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
