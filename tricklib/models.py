"""Small models the chapters train: kept here so every chapter builds them the same way."""
from __future__ import annotations

from torch import nn

from ._checks import check_int
from .layers import Residual


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


def residual_mlp(in_features: int, width: int, depth: int, num_classes: int, *, residual: bool = True,
                 norm: bool = True) -> nn.Sequential:
    r"""A deep MLP of ``depth`` blocks, with a residual connection around each block or without (the plain net).

    ``Linear(in_features, width)`` (the stem) → ``depth`` blocks → BatchNorm → ReLU →
    ``Linear(width, num_classes)`` (logits). Each block is the pre-activation unit of He
    et al. 2016 ("Identity mappings in deep residual networks"),
    :math:`F(x) = W\,\operatorname{ReLU}(\operatorname{BN}(x)) + b`; with ``residual=True`` it
    is wrapped in :class:`~tricklib.layers.Residual`, :math:`x_{l+1} = x_l + F(x_l)`, and
    with ``residual=False`` the same layers are stacked, :math:`x_{l+1} = F(x_l)` — the
    "plain" (VGG-style) counterpart of the paper. Both build their layers in the same
    order with PyTorch's default initialisation, so under the same seed the two nets
    start from *identical* weights (the state-dict keys differ only by the wrapper's
    ``.block``): a paired comparison whose only difference is the ``+ x``. Checked
    against a hand-written forward pass in ``tests/test_layers.py``.

    Args:
        in_features: input features (64 for the 8×8 digits).
        width: features of every hidden layer (the residual stream).
        depth: number of blocks (one ``Linear`` each), at least 1.
        num_classes: number of logits.
        residual: add the identity shortcut around every block.
        norm: put a ``BatchNorm1d`` at the start of each block and before the head
            (``False``: ReLU → Linear blocks, no normalisation).

    Returns:
        ``nn.Sequential(stem, *blocks, head)``; ``model[1:-1]`` are the blocks.
    """
    in_features, width = check_int("in_features", in_features, 1), check_int("width", width, 1)
    depth, num_classes = check_int("depth", depth, 1), check_int("num_classes", num_classes, 1)

    def unit(n_out: int) -> nn.Sequential:
        return nn.Sequential(*([nn.BatchNorm1d(width)] if norm else []), nn.ReLU(), nn.Linear(width, n_out))

    blocks = [Residual(unit(width)) if residual else unit(width) for _ in range(depth)]
    return nn.Sequential(nn.Linear(in_features, width), *blocks, unit(num_classes))


def postact_residual_mlp(in_features: int, width: int, depth: int, num_classes: int) -> nn.Sequential:
    r"""A deep MLP of ``depth`` *post-activation* residual blocks: the original ResNet block with ``Linear`` layers.

    Stem ``Linear(in_features, width) → BN → ReLU``, then ``depth`` blocks

    .. math:: x_{l+1} = \operatorname{ReLU}\bigl(x_l + \operatorname{BN}_2(W_2\,
        \operatorname{ReLU}(\operatorname{BN}_1(W_1 x_l)))\bigr),

    then the head ``Linear(width, num_classes)`` (logits) — the layout of torchvision's
    ``BasicBlock`` (He et al. 2016, "Deep residual learning"): conv → BN → ReLU → conv → BN,
    add the input, ReLU, with each 3×3 convolution replaced by a ``Linear``. As there, the
    layers before a BatchNorm have no bias (BN's β takes its place), and the branch ends in
    BatchNorm, so :func:`~tricklib.layers.zero_init_residual` can start every block as the
    identity. PyTorch's default initialisation (γ = 1, β = 0), layers created in order, so a
    seed fixes the weights. Checked against a hand-written forward pass in
    ``tests/test_zero_gamma.py``.

    Args:
        in_features: input features (64 for the 8×8 digits).
        width: features of the residual stream and of every hidden layer.
        depth: number of residual blocks (two ``Linear`` layers each), at least 1.
        num_classes: number of logits.

    Returns:
        ``nn.Sequential(stem, *blocks, head)``; block ``i`` is ``model[1 + i] =
        nn.Sequential(Residual(branch), nn.ReLU())`` and its last BatchNorm is
        ``model[1 + i][0].block[4]``.
    """
    in_features, width = check_int("in_features", in_features, 1), check_int("width", width, 1)
    depth, num_classes = check_int("depth", depth, 1), check_int("num_classes", num_classes, 1)

    def branch() -> nn.Sequential:
        return nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                             nn.Linear(width, width, bias=False), nn.BatchNorm1d(width))

    stem = nn.Sequential(nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
    blocks = [nn.Sequential(Residual(branch()), nn.ReLU()) for _ in range(depth)]
    return nn.Sequential(stem, *blocks, nn.Linear(width, num_classes))
