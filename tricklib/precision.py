r"""Mixed-precision training: the autocast dtype, loss scaling, and what half precision loses (the optimisation chapters).

Micikevicius et al. 2018, "Mixed Precision Training": run the forward and
backward passes in 16-bit floats, keep an fp32 *master copy* of the weights,
and multiply the loss by a scale :math:`S` so that small gradients survive the
fp16 range. In PyTorch that is ``torch.autocast`` plus ``torch.amp.GradScaler``;
:func:`amp_step` is one training step with both. :func:`underflow_fraction`,
:func:`overflow_fraction` and :func:`lost_update_fraction` measure the two
failures the paper's tricks prevent. Checked in ``tests/test_precision.py``
against ``torch.finfo`` facts and ``GradScaler``'s documented behaviour.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from ._checks import check_range, check_tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The 16-bit dtype to give ``torch.autocast`` on ``device``.

    ``bfloat16`` on the CPU (the dtype CPU autocast is built for) and on CUDA
    GPUs that support it (Ampere and newer: fp32's exponent range, so no loss
    scaling is needed); ``float16`` on older CUDA GPUs and on Apple's MPS, where
    it needs a ``GradScaler``.

    Args:
        device: a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``, ``"cuda:1"``
            or ``"mps"`` (other device types raise ``ValueError``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16
    raise ValueError(f"device must be 'cpu', 'cuda' or 'mps', got {device.type!r}")


def _flat(tensors: torch.Tensor | Iterable[torch.Tensor]) -> torch.Tensor:
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    tensors = [check_tensor("tensors", t, floating=True).detach() for t in tensors]
    if not tensors:
        raise ValueError("tensors must hold at least one tensor")
    return torch.cat([t.reshape(-1).to(device="cpu", dtype=torch.float32) for t in tensors])


def _check_half(dtype: torch.dtype) -> None:
    if dtype not in HALF_DTYPES:
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")


def underflow_fraction(tensors: torch.Tensor | Iterable[torch.Tensor], dtype: torch.dtype = torch.float16,
                       scale: float = 1.0) -> float:
    r"""Share of the non-zero entries that become 0 when ``scale * x`` is cast to ``dtype``.

    .. math:: \frac{|\{i : x_i \ne 0,\ \mathrm{fl}(S x_i) = 0\}|}{|\{i : x_i \ne 0\}|}

    In fp16 the smallest positive (subnormal) number is :math:`2^{-24}`; with
    round-to-nearest every :math:`|S x| \le 2^{-25}` flushes to zero. Loss
    scaling multiplies the loss, hence every gradient, by :math:`S` so they
    land above it (Micikevicius et al. 2018). The test checks the boundary at
    :math:`2^{-25}` from ``torch.finfo(torch.float16)`` and bf16's at
    :math:`2^{-134}`.

    Args:
        tensors: a tensor or an iterable of tensors (e.g. the ``.grad`` of each parameter).
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        scale: the loss scale :math:`S > 0`.

    Returns:
        The fraction in [0, 1] (0.0 when every entry is zero).
    """
    _check_half(dtype)
    check_range("scale", scale, 0.0, low_open=True)
    x = _flat(tensors)
    nonzero = x != 0
    if not nonzero.any():
        return 0.0
    flushed = nonzero & ((x * scale).to(dtype) == 0)
    return (flushed.sum() / nonzero.sum()).item()


def overflow_fraction(tensors: torch.Tensor | Iterable[torch.Tensor], dtype: torch.dtype = torch.float16,
                      scale: float = 1.0) -> float:
    r"""Share of the finite entries that become :math:`\pm\infty` when ``scale * x`` is cast to ``dtype``.

    .. math:: \frac{|\{i : |\mathrm{fl}(S x_i)| = \infty\}|}{N}

    The other side of loss scaling: fp16's largest finite value is 65504, so too
    large an :math:`S` overflows. ``GradScaler`` then skips the step and halves
    :math:`S`.

    Args:
        tensors: a tensor or an iterable of tensors (e.g. the ``.grad`` of each parameter).
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        scale: the loss scale :math:`S > 0`.

    Returns:
        The fraction in [0, 1] (0.0 when no entry is finite).
    """
    _check_half(dtype)
    check_range("scale", scale, 0.0, low_open=True)
    x = _flat(tensors)
    x = x[torch.isfinite(x)]
    if x.numel() == 0:
        return 0.0
    return torch.isinf((x.double() * scale).to(dtype)).float().mean().item()


def lost_update_fraction(params: torch.Tensor | Iterable[torch.Tensor],
                         updates: torch.Tensor | Iterable[torch.Tensor],
                         dtype: torch.dtype = torch.float16) -> float:
    r"""Share of the non-zero updates :math:`\Delta` that leave a ``dtype`` weight unchanged.

    .. math:: \frac{|\{i : \Delta_i \ne 0,\ \mathrm{fl}(\mathrm{fl}(\theta_i) + \mathrm{fl}(\Delta_i))
              = \mathrm{fl}(\theta_i)\}|}{|\{i : \Delta_i \ne 0\}|}

    A 16-bit weight :math:`\theta` cannot move by less than half the spacing of
    the numbers around it: in fp16 (10 mantissa bits) an upward update smaller
    than :math:`2^{\lfloor\log_2|\theta|\rfloor - 11}`, roughly
    :math:`2^{-11}|\theta| \approx 0.05\%` of the weight, is rounded away (bf16,
    7 bits: :math:`2^{-8}|\theta|`). This is why mixed precision keeps fp32
    *master weights* (Micikevicius et al. 2018). The test checks the threshold
    at :math:`\theta = 1` against ``torch.finfo(dtype).eps``.

    Args:
        params: the weights :math:`\theta` (tensors, e.g. ``model.parameters()``).
        updates: the steps :math:`\Delta` of the same shapes (e.g. ``-lr * grad``).
        dtype: ``torch.float16`` or ``torch.bfloat16``.
    """
    _check_half(dtype)
    theta, delta = _flat(params), _flat(updates)
    if theta.shape != delta.shape:
        raise ValueError(f"params and updates must have the same number of entries, got {theta.numel()} "
                         f"and {delta.numel()}")
    moving = delta != 0
    if not moving.any():
        return 0.0
    theta_h = theta.to(dtype)
    lost = moving & (theta_h + delta.to(dtype) == theta_h)
    return (lost.sum() / moving.sum()).item()


def amp_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
             dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None) -> float:
    r"""One mixed-precision training step: autocast forward, scaled backward, unscaled update.

    The loop of Micikevicius et al. 2018 in PyTorch's terms:

    1. forward and loss under ``torch.autocast(dtype)`` (matrix products in 16 bits, the weights stay fp32);
    2. backward of :math:`S\cdot L` (``scaler.scale(loss)``), so small gradients stay representable;
    3. ``scaler.step`` divides the fp32 gradients by :math:`S` and skips the step if any is inf/NaN;
       ``scaler.update`` halves :math:`S` after such a step and doubles it after
       ``growth_interval`` good ones.

    With ``dtype=None`` and ``scaler=None`` it is a plain fp32 step. The test
    checks it against a hand-written step (fp32 equality, a skipped step on inf,
    the scale halving) and that bf16 autocast leaves fp32 weights and gradients.

    Args:
        model, optimizer, loss_fn: as in any training loop; ``loss_fn(model(x), y)`` is the loss.
        x, y: one batch, already on the model's device.
        dtype: ``torch.float16`` / ``torch.bfloat16`` for autocast (see :func:`autocast_dtype`), or None.
        scaler: a ``torch.amp.GradScaler`` for fp16, or None.

    Returns:
        The (unscaled) loss of the batch, as a float.
    """
    if dtype is not None:
        _check_half(dtype)
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.item()
