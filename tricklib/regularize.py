r"""Regularisation tricks (Part 4 of the book)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_range, check_same_device, check_tensor
from .losses import reduce_loss


def smooth_labels(targets: torch.Tensor, num_classes: int, epsilon: float = 0.1) -> torch.Tensor:
    r"""Label-smoothed target distributions (Szegedy et al. 2016, "Rethinking the Inception Architecture").

    .. math:: y'_k = (1-\varepsilon)\,[k = y] + \varepsilon / C

    Args:
        targets: ``Tensor[N]`` int64 class indices.
        num_classes: ``C``.
        epsilon: smoothing in [0, 1].

    Returns:
        ``Tensor[N, C]`` float32 rows that sum to 1.
    """
    check_tensor("targets", targets, ndim=1)
    if targets.is_floating_point():
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    check_range("epsilon", epsilon, 0.0, 1.0)
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must be in [0, {num_classes - 1}]")
    one_hot = F.one_hot(targets, num_classes).float()
    return (1 - epsilon) * one_hot + epsilon / num_classes


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1,
                                  reduction: str = "mean") -> torch.Tensor:
    r"""Cross-entropy against label-smoothed targets.

    .. math:: \mathcal{L} = -\sum_k y'_k \log \mathrm{softmax}(z)_k
              = (1-\varepsilon)\,\mathrm{CE}(z, y) + \varepsilon\,\frac{1}{C}\sum_k -\log \mathrm{softmax}(z)_k

    The second term pulls every logit towards the others, so the optimal
    logit gap between the true class and the rest is finite,
    :math:`\log\frac{(1-\varepsilon)C + \varepsilon}{\varepsilon}`, instead of infinite.
    Equals ``F.cross_entropy(logits, targets, label_smoothing=epsilon)``
    (checked in ``tests/test_regularize.py``).

    Args:
        logits: ``Tensor[N, C]``.
        targets: ``Tensor[N]`` int64 class indices.
        epsilon: smoothing in [0, 1].
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    check_same_device(logits=logits, targets=targets)
    if len(logits) != len(targets):
        raise ValueError(f"logits and targets must have the same length, got {len(logits)} and {len(targets)}")
    soft = smooth_labels(targets, logits.shape[1], epsilon).to(logits.dtype)
    loss = -(soft * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return reduce_loss(loss, reduction)


def optimal_logit_gap(num_classes: int, epsilon: float) -> float:
    r"""The logit gap true − other that minimises the label-smoothed loss: :math:`\log\frac{(1-\varepsilon)C+\varepsilon}{\varepsilon}`.

    Infinite for ``epsilon = 0`` (plain cross-entropy keeps pushing logits apart).
    """
    check_range("epsilon", epsilon, 0.0, 1.0)
    if epsilon == 0:
        return float("inf")
    return math.log(((1 - epsilon) * num_classes + epsilon) / epsilon)


def logit_gap(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-row gap between one logit and the mean of the others — what label smoothing bounds.

    .. math:: g_i = z_{i,c} - \frac{1}{C-1}\sum_{k \ne c} z_{i,k}

    with :math:`c` the true class ``targets[i]`` (or the arg-max class when
    ``targets`` is None). At the minimum of the label-smoothed loss every row's gap
    equals :func:`optimal_logit_gap`; plain cross-entropy keeps growing it.
    Checked in ``tests/test_regularize.py`` against a direct per-row computation.

    Args:
        logits: ``Tensor[N, C]``, ``C >= 2``.
        targets: optional ``Tensor[N]`` int64 class indices.

    Returns:
        ``Tensor[N]`` of gaps, in the dtype of ``logits``.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    C = logits.shape[1]
    if C < 2:
        raise ValueError(f"logits must have at least 2 classes, got shape {tuple(logits.shape)}")
    if targets is None:
        chosen = logits.max(dim=1).values
    else:
        check_tensor("targets", targets, ndim=1)
        check_same_device(logits=logits, targets=targets)
        if targets.is_floating_point():
            raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if len(targets) != len(logits):
            raise ValueError(f"logits and targets must have the same length, got {len(logits)} and {len(targets)}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= C):
            raise ValueError(f"targets must be in [0, {C - 1}]")
        chosen = logits.gather(1, targets[:, None]).squeeze(1)
    # mean of the other C-1 logits = (row sum - chosen) / (C-1)
    return chosen - (logits.sum(dim=1) - chosen) / (C - 1)
