"""Ensembles of weights (snapshot ensembles, an optimisation chapter of the book); weight averaging will join them here."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .harness import predict


@torch.no_grad()
def ensemble_probs(model: nn.Module, states: Sequence[dict[str, torch.Tensor]], X: torch.Tensor) -> torch.Tensor:
    r"""Average the softmax outputs of several weight snapshots of one architecture.

    .. math:: p(y \mid x) = \frac1M \sum_{m=1}^{M} \mathrm{softmax}\bigl(f(x; \theta_m)\bigr)

    This is the prediction of a snapshot ensemble (Huang et al. 2017, "Snapshot
    Ensembles: Train 1, get M for free"), with ``states`` the ``state_dict``\ s
    saved at the end of each SGDR cycle.

    Args:
        model: the architecture, a classifier that outputs logits ``[N, C]``; it is
            deep-copied, so its own weights and mode are left as they are.
        states: at least one ``state_dict`` of ``model`` (the snapshots :math:`\theta_m`),
            e.g. :class:`~tricklib.harness.Snapshots`' ``states``.
        X: ``Tensor[N, ...]`` inputs, predicted in eval mode and in batches by
            :func:`~tricklib.harness.predict` (on the model's device).

    Returns:
        ``Tensor[N, C]`` averaged probabilities on the CPU.
    """
    if not states:
        raise ValueError("states must hold at least one state_dict")
    member = copy.deepcopy(model)
    total = None
    for state in states:
        member.load_state_dict(state)
        probs = predict(member, X).softmax(dim=-1)
        total = probs if total is None else total + probs
    return total / len(states)
