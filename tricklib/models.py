"""Small models the chapters train: kept here so every chapter builds them the same way."""
from __future__ import annotations

from torch import nn

from ._checks import check_int


def mlp(*sizes: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A multi-layer perceptron: ``Linear`` layers of the given widths with ``activation`` between them.

    Example: ``mlp(64, 128, 128, 10)`` is
    ``Linear(64, 128) → ReLU → Linear(128, 128) → ReLU → Linear(128, 10)``
    (no activation after the last layer: it outputs logits). Layers use PyTorch's
    default initialisation, created in order, so a seed fixes the weights.

    Args:
        *sizes: at least two positive widths: the input features, the hidden widths,
            the output size (number of logits).
        activation: the ``nn.Module`` class put between consecutive ``Linear`` layers
            (a new instance each time), default ``nn.ReLU``.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes must be at least two positive ints (input, ..., output), got {sizes}")
    sizes = tuple(check_int(f"sizes[{i}]", s, 1) for i, s in enumerate(sizes))
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)
