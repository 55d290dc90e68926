r"""Regularisation tricks (the regularisation chapters of the book)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_int, check_range, check_same_device, check_tensor
from .losses import REDUCTIONS, reduce_loss


def _class_indices(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``targets`` as int64 class indices, checked: 1-D, an integer dtype, values in ``[0, num_classes)``."""
    check_tensor("targets", targets, ndim=1)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got dtype {targets.dtype}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must be in [0, {num_classes - 1}]")
    return targets.long()


def smooth_labels(targets: torch.Tensor, num_classes: int, epsilon: float = 0.1) -> torch.Tensor:
    r"""Label-smoothed target distributions (Szegedy et al. 2016, "Rethinking the Inception Architecture").

    .. math:: y'_k = (1-\varepsilon)\,[k = y] + \varepsilon / C

    Args:
        targets: ``Tensor[N]`` class indices (any integer dtype).
        num_classes: ``C >= 2``.
        epsilon: smoothing in [0, 1].

    Returns:
        ``Tensor[N, C]`` float32 rows that sum to 1.
    """
    num_classes = check_int("num_classes", num_classes, 2)
    check_range("epsilon", epsilon, 0.0, 1.0)
    one_hot = F.one_hot(_class_indices(targets, num_classes), num_classes).float()
    return (1 - epsilon) * one_hot + epsilon / num_classes


def label_smoothing_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1,
                                  reduction: str = "mean") -> torch.Tensor:
    r"""Cross-entropy against label-smoothed targets.

    .. math:: \mathcal{L} = -\sum_k y'_k \log \mathrm{softmax}(z)_k
              = (1-\varepsilon)\,\mathrm{CE}(z, y) + \varepsilon\,\frac{1}{C}\sum_k -\log \mathrm{softmax}(z)_k

    The second term pulls every logit towards the others, so the optimal
    logit gap between the true class and the rest is finite,
    :math:`\log\frac{(1-\varepsilon)C + \varepsilon}{\varepsilon}`, instead of infinite.
    Computed as the right-hand side, term by term in the logits' dtype and each term
    reduced before they are combined, as ``F.cross_entropy(logits, targets,
    label_smoothing=epsilon)`` does (checked in ``tests/test_regularize.py``, float64
    included); with :math:`\varepsilon = 0` the second term is left out, so a class masked
    with a ``-inf`` logit gives the plain cross-entropy, not :math:`0 \cdot \infty`.

    Args:
        logits: ``Tensor[N, C]`` float.
        targets: ``Tensor[N]`` class indices (any integer dtype, e.g. uint8).
        epsilon: smoothing in [0, 1].
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
    """
    check_tensor("logits", logits, ndim=2, floating=True)
    check_tensor("targets", targets)
    check_same_device(logits=logits, targets=targets)
    if len(logits) != len(targets):
        raise ValueError(f"logits and targets must have the same length, got {len(logits)} and {len(targets)}")
    num_classes = logits.shape[1]
    check_range("epsilon", epsilon, 0.0, 1.0)
    check_choice("reduction", reduction, REDUCTIONS)
    targets = _class_indices(targets, num_classes)
    log_probs = F.log_softmax(logits, dim=-1)
    nll = reduce_loss(-log_probs.gather(1, targets[:, None]).squeeze(1), reduction)
    if epsilon == 0:
        return nll
    smooth = reduce_loss(-log_probs.sum(dim=-1), reduction)
    return (1 - epsilon) * nll + smooth * (epsilon / num_classes)


def optimal_logit_gap(num_classes: int, epsilon: float) -> float:
    r"""The logit gap true − other that minimises the label-smoothed loss: :math:`\log\frac{(1-\varepsilon)C+\varepsilon}{\varepsilon}`.

    Infinite for ``epsilon = 0`` (plain cross-entropy keeps pushing logits apart).

    Args:
        num_classes: ``C >= 2``.
        epsilon: smoothing in [0, 1].
    """
    check_int("num_classes", num_classes, 2)
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
        targets: optional ``Tensor[N]`` class indices (any integer dtype).

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
        check_tensor("targets", targets)
        check_same_device(logits=logits, targets=targets)
        if len(targets) != len(logits):
            raise ValueError(f"logits and targets must have the same length, got {len(logits)} and {len(targets)}")
        chosen = logits.gather(1, _class_indices(targets, C)[:, None]).squeeze(1)
    # mean of the other C-1 logits = (row sum - chosen) / (C-1)
    return chosen - (logits.sum(dim=1) - chosen) / (C - 1)
