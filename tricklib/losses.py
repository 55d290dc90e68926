r"""Losses for imbalance and hard examples (Part 5 of the book)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_range, check_same_device, check_tensor

REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``"none"``, ``"mean"`` or ``"sum"``; the mean of nothing is ``0`` (and keeps the graph)."""
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "none":
        return loss
    if reduction == "sum" or loss.numel() == 0:
        return loss.sum()
    return loss.mean()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = 0.25,
               gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
    r"""Sigmoid focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    .. math:: \mathrm{FL}(p_t) = -\alpha_t\,(1-p_t)^{\gamma}\,\log p_t,\qquad
              p_t = p\,y + (1-p)(1-y),\quad \alpha_t = \alpha\,y + (1-\alpha)(1-y)

    with :math:`p = \sigma(\text{logit})`. ``gamma=0, alpha=None`` is plain binary
    cross-entropy; ``gamma`` down-weights easy examples (large :math:`p_t`).
    The modulating factor is computed in log space,
    :math:`(1-p_t)^\gamma = \exp(\gamma \log(1-p_t))`, so logits of ±1e4 and
    ``gamma < 1`` give finite values and gradients.

    Args:
        logits: float tensor of any shape (one logit per binary decision).
        targets: same shape, values in [0, 1] (usually 0/1).
        alpha: weight of the positive class in [0, 1], or ``None`` for no weighting
            (torchvision's ``alpha=-1``).
        gamma: focusing parameter, ``>= 0``.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Returns:
        The loss, elementwise or reduced. Checked against
        ``torchvision.ops.sigmoid_focal_loss`` (values and gradients, fp32/bf16)
        in ``tests/test_losses.py``.
    """
    check_tensor("logits", logits, floating=True)
    check_tensor("targets", targets)
    if logits.shape != targets.shape:
        raise ValueError(f"logits and targets must have the same shape, got {tuple(logits.shape)} and {tuple(targets.shape)}")
    check_same_device(logits=logits, targets=targets)
    check_range("gamma", gamma, 0.0)
    if alpha is not None:
        check_range("alpha", alpha, 0.0, 1.0)
    check_choice("reduction", reduction, REDUCTIONS)
    targets = targets.to(logits.dtype)
    if targets.numel() and (targets.min() < 0 or targets.max() > 1):
        raise ValueError("targets must lie in [0, 1]")
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = ce
    if gamma > 0:
        # log(1 - p_t) = log(p (1 - y) + (1 - p) y), summed in log space
        log_one_minus_pt = torch.logaddexp(F.logsigmoid(logits) + torch.log1p(-targets),
                                           F.logsigmoid(-logits) + torch.log(targets))
        loss = ce * torch.exp(gamma * log_one_minus_pt)
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return reduce_loss(loss, reduction)
