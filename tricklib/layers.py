r"""Layers whose one-line change alters how a network trains (the architecture chapters).

:class:`GroupNorm` (normalise over groups of channels, independent of the batch size),
:func:`channel_shuffle` (let stacked group convolutions exchange information) and
:func:`attention` (scaled dot-product attention) and :func:`dynamic_conv` (a kernel per
pixel), each written out in plain PyTorch and checked in ``tests/test_layers.py`` against
``nn.GroupNorm``, ``nn.ChannelShuffle``, ``F.scaled_dot_product_attention`` and
``F.conv2d`` (values and gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_int, check_range, check_tensor


class GroupNorm(nn.Module):
    r"""Group Normalization (Wu & He 2018): statistics over groups of channels, per example.

    .. math:: \hat x = \frac{x - \mu_g}{\sqrt{\sigma_g^2 + \epsilon}},\qquad
        y = \gamma_c\,\hat x + \beta_c

    with :math:`\mu_g, \sigma_g^2` the mean and the *biased* variance
    (:math:`\frac1n\sum (x-\mu)^2`) of the :math:`C/G \cdot H \cdot W` values of one group of
    one example. No statistic crosses the batch, so it behaves the same at batch size 2 as
    at 64, in training and in evaluation — unlike BatchNorm (paper: ResNet-50 on ImageNet,
    top-1 error at batch 2: BN 34.7%, GN 24.1%; at 32: 23.6% vs 24.1%). ``G = 1`` is
    LayerNorm over (C, H, W); ``G = C`` is InstanceNorm.

    The popular one-liner ``x.view(N, G, -1)``, ``mean``, ``var`` uses ``Tensor.var``, which
    is *unbiased* by default (divides by :math:`n-1`) and so differs from ``nn.GroupNorm``;
    here ``correction=0``. Half-precision inputs are normalised in float32 and returned in
    their dtype, as ``nn.GroupNorm`` does. Equal to ``nn.GroupNorm`` (same signature, same
    ``weight``/``bias`` names, so state dicts load into either) — ``tests/test_layers.py``.
    Written out to be read: ``nn.GroupNorm``'s fused kernel is about 5× faster on CPU
    (``benchmarks/layers.py``), so use it in a model.

    Args:
        num_groups: :math:`G`, a divisor of ``num_channels``.
        num_channels: :math:`C`, the size of dimension 1 of the input.
        eps: :math:`\epsilon > 0` added to the variance.
        affine: learn a per-channel scale :math:`\gamma` (init 1) and shift :math:`\beta` (init 0).
        device: where to create the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.num_groups = check_int("num_groups", num_groups, 1)
        self.num_channels = check_int("num_channels", num_channels, 1)
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        check_range("eps", eps, 0.0, low_open=True)
        self.eps, self.affine = float(eps), bool(affine)
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[N, C, *]`` (``*``: any spatial dimensions, or none).

        Args:
            x: ``Tensor[N, C, *]`` floating point, ``C = num_channels``.
        """
        check_tensor("x", x, floating=True)
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"x must have shape [N, {self.num_channels}, *], got {tuple(x.shape)}")
        groups = x.reshape(x.shape[0], self.num_groups, -1)
        if groups.dtype in (torch.float16, torch.bfloat16):
            groups = groups.float()
        mean = groups.mean(dim=-1, keepdim=True)
        var = groups.var(dim=-1, keepdim=True, correction=0)  # biased, as nn.GroupNorm
        y = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    r"""ShuffleNet's channel shuffle (Zhang et al. 2018): interleave the channels of ``groups`` groups.

    .. math:: \text{channel } g\cdot\tfrac{C}{G} + i \;\mapsto\; i \cdot G + g

    ``x.view(N, G, C // G, *rest).transpose(1, 2).reshape(N, C, *rest)``: after a group
    convolution each group of output channels has seen only its own group of inputs; a
    second group convolution after the shuffle gives each group channels from every
    group, so information crosses groups at no cost in FLOPs. Equal to
    ``nn.ChannelShuffle(groups)`` — ``tests/test_layers.py``.

    Args:
        x: ``Tensor[N, C, *]`` (any dtype), ``C`` divisible by ``groups``.
        groups: :math:`G \ge 1`.

    Returns:
        ``Tensor[N, C, *]``: a copy, or a view of ``x`` where the shuffle is the identity
        (``groups`` 1 or ``C``), as ``reshape`` gives.
    """
    check_tensor("x", x)
    groups = check_int("groups", groups, 1)
    if x.dim() < 2 or x.shape[1] % groups:
        raise ValueError(f"x must have shape [N, C, *] with C divisible by groups={groups}, got {tuple(x.shape)}")
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              is_causal: bool = False, scale: float | None = None) -> torch.Tensor:
    r"""Scaled dot-product attention (Vaswani et al. 2017), written out.

    .. math:: \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Bigl(\frac{QK^\top}{\sqrt{d}} + M\Bigr)V

    The :math:`1/\sqrt d` keeps the logits' spread independent of the key size :math:`d`: with
    unit-variance entries :math:`q\cdot k` has variance :math:`d`, and without the scale the
    softmax saturates as :math:`d` grows (one key takes all the weight, its gradient
    vanishes). A query whose keys are all masked out gets zeros, not NaN. Equal to
    ``F.scaled_dot_product_attention`` without dropout (values and gradients; boolean,
    additive and causal masks; batch and head dimensions; half precision) —
    ``tests/test_layers.py`` and ``tests/test_attention.py``. Written out to be read:
    ``F.scaled_dot_product_attention`` is about 2× faster on CPU (``benchmarks/layers.py``)
    and has flash kernels on GPUs, so use it in a model.

    Args:
        q: ``Tensor[..., L, d]`` queries.
        k: ``Tensor[..., S, d]`` keys (same leading dimensions, or broadcastable).
        v: ``Tensor[..., S, d_v]`` values.
        mask: ``None``; a boolean ``Tensor`` broadcastable to ``[..., L, S]``, True where a
            query may attend to a key; or a float one added to the logits (``-inf`` to mask).
        is_causal: query :math:`i` attends to keys :math:`j \le i` only (top-left aligned, as
            ``F.scaled_dot_product_attention``); not together with ``mask``.
        scale: the factor on :math:`QK^\top`; default :math:`1/\sqrt d`.

    Returns:
        ``Tensor[..., L, d_v]``.

    Raises:
        TypeError: a non-tensor or non-floating ``q``/``k``/``v``; a mask neither boolean nor floating.
        ValueError: shapes that do not fit; a mask that does not broadcast to ``[..., L, S]``;
            ``mask`` together with ``is_causal``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, floating=True)
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape [..., length, dim], got {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"q [..., L, d], k [..., S, d] and v [..., S, d_v] do not fit: "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if is_causal and mask is not None:
        raise ValueError("give either mask or is_causal=True, not both")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(f"mask must be boolean (True: may attend) or floating (added to the scores), "
                            f"got dtype {mask.dtype}")
        try:
            fits = torch.broadcast_shapes(mask.shape, logits.shape) == logits.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
                             f"{tuple(logits.shape)} ([..., L, S])")
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, float("-inf"))
        else:
            logits = logits + mask
    # a row with every key masked: softmax of all -inf is NaN; that query attends to nothing
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
    weights = logits.masked_fill(empty, 0.0).softmax(dim=-1).masked_fill(empty, 0.0)
    return weights @ v


def dynamic_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    r"""Pixel-adaptive convolution: every output pixel has its own :math:`k \times k` kernel.

    .. math:: y_{n,c,i,j} = \sum_{a,b} K_{n,(a,b),i,j}\; x_{n,c,\,i+a-\lfloor k/2\rfloor,\,j+b-\lfloor k/2\rfloor}

    The kernels are predicted by a small network from the input itself (kernel prediction
    networks, Bako et al. 2017 / Mildenhall et al. 2018; pixel-adaptive convolution, Su et
    al. 2019), so the filter can change where the image changes — a fixed convolution
    applies one kernel everywhere. Implemented with ``F.unfold`` (the :math:`k^2`
    neighbours of every pixel) and a weighted sum; zero padding keeps the size. With the
    same kernel at every pixel it equals the depthwise ``F.conv2d`` (``groups=C``) —
    ``tests/test_layers.py``.

    Args:
        x: ``Tensor[N, C, H, W]`` float.
        kernels: ``Tensor[N, k*k, H, W]`` (one kernel per pixel, shared by the channels) or
            ``Tensor[N, C, k*k, H, W]`` (one per pixel and channel); ``k`` odd. Often the
            softmax over the :math:`k^2` weights of a predicted map.

    Returns:
        ``Tensor[N, C, H, W]``.
    """
    check_tensor("x", x, ndim=4, floating=True)
    check_tensor("kernels", kernels, floating=True)
    n, c, h, w = x.shape
    if kernels.dim() == 4:
        kernels = kernels.unsqueeze(1)
    if kernels.dim() != 5 or kernels.shape[0] != n or kernels.shape[1] not in (1, c) or kernels.shape[3:] != (h, w):
        raise ValueError(f"kernels must be [N, k*k, H, W] or [N, C, k*k, H, W] for x of shape {tuple(x.shape)}, "
                         f"got {tuple(kernels.shape)}")
    k = math.isqrt(kernels.shape[2])
    if k * k != kernels.shape[2] or k % 2 == 0:
        raise ValueError(f"kernels' size dimension must be k*k with k odd, got {kernels.shape[2]}")
    patches = F.unfold(x, kernel_size=k, padding=k // 2).view(n, c, k * k, h, w)
    return (patches * kernels).sum(dim=2)


class Residual(nn.Module):
    r"""A residual connection (He et al. 2016): the block learns :math:`F`, the output is :math:`F(x) + x`.

    .. math:: H(x) = F(x) + S(x), \qquad S = \text{identity unless a shortcut is given}

    Wrap any block whose output has the shape of its input: ``Residual(block)(x) ==
    x + block(x)``. Through a stack of residual blocks the gradient reaching block
    :math:`l` is :math:`\frac{\partial L}{\partial x_l} = \frac{\partial L}{\partial x_L}
    \prod_{k \ge l} \bigl(I + \frac{\partial F_k}{\partial x_k}\bigr)`: the identity term
    carries it to every block however deep the stack, where a plain stack multiplies
    :math:`\prod_k \frac{\partial F_k}{\partial x_k}` and lets it vanish or explode with
    depth. With a branch that outputs 0 the block is exactly the identity (the basis of
    zero-γ initialisation). Where the shape changes (more channels, a stride), pass a
    ``shortcut`` — a 1×1 convolution or a ``Linear``, the paper's projection shortcut
    (option B). Equal to ``x + block(x)`` written out, and a zero branch is the identity
    (values and gradients) — ``tests/test_layers.py``.

    Args:
        block: the residual branch :math:`F`, an ``nn.Module`` (e.g. BatchNorm → ReLU →
            Linear, or two 3×3 convolutions).
        shortcut: :math:`S`, an ``nn.Module`` applied to ``x`` on the skip path (default:
            the identity, no parameters).
    """

    def __init__(self, block: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be an nn.Module, got {type(block).__name__}")
        if shortcut is not None and not isinstance(shortcut, nn.Module):
            raise TypeError(f"shortcut must be an nn.Module or None, got {type(shortcut).__name__}")
        self.block = block
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``block(x) + x`` (or ``block(x) + shortcut(x)``); raise if the two shapes differ.

        Args:
            x: the block's input, any shape ``block`` accepts.
        """
        out = self.block(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if out.shape != skip.shape:
            raise ValueError(f"the block's output {tuple(out.shape)} and the shortcut's {tuple(skip.shape)} must have "
                             f"the same shape: give a shortcut that changes the shape (e.g. a 1x1 conv or a Linear)")
        return out + skip


def zero_init_residual(model: nn.Module) -> list[str]:
    r"""Zero-γ initialisation: set γ of the last BatchNorm of every residual branch to 0, in place.

    In a residual block whose branch ends in BatchNorm, e.g. the post-activation block of
    He et al. 2016, :math:`x_{l+1} = \operatorname{ReLU}\bigl(x_l + \operatorname{BN}_2(W_2\,
    \operatorname{ReLU}(\operatorname{BN}_1(W_1 x_l)))\bigr)` with
    :math:`\operatorname{BN}_2(z) = \gamma \odot \hat z + \beta`, setting :math:`\gamma = 0`
    (and :math:`\beta = 0`, PyTorch's default) makes the branch output exactly 0, so every
    block starts as the identity (:math:`\operatorname{ReLU}(x_l) = x_l` for the non-negative
    :math:`x_l` a ReLU produced) and the network starts as shallow as its stem and head.
    Goyal et al. 2017 ("Accurate, large minibatch SGD") and He et al. 2019 ("Bag of tricks
    for image classification") use it; it is torchvision's ``resnet*(zero_init_residual=True)``.

    Every :class:`Residual` in ``model`` (``model`` itself included) is visited; in its
    ``block`` (the branch :math:`F`, never the ``shortcut``, whose BatchNorm is left alone as
    in torchvision) the *last* ``BatchNorm`` module in registration order — for an
    ``nn.Sequential`` branch, the one nearest the output — has its ``weight`` (γ) zeroed.
    The bias β is not touched. Every branch is checked before anything is changed, so a
    ``ValueError`` leaves the model as it was. Applied to torchvision's ResNet-18 and
    ResNet-50 with their blocks wrapped in :class:`Residual`, it zeros exactly the γ that
    ``zero_init_residual=True`` zeros — ``tests/test_zero_gamma.py``.

    Args:
        model: a module containing at least one :class:`Residual` whose branch holds a
            ``BatchNorm1d/2d/3d`` (or ``SyncBatchNorm``) with ``affine=True``.

    Returns:
        The qualified names of the zeroed parameters (as in ``model.state_dict()``), one per
        residual block, in module order.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` contains no :class:`Residual`; a branch has no BatchNorm; its
            last BatchNorm has no γ (``affine=False``); a branch is an ``nn.Sequential`` that
            ends in a ``Linear``/``Conv`` (a pre-activation block, BN → ReLU → weight, such
            as :func:`~tricklib.models.residual_mlp`'s: there a zero γ leaves the bias and
            does not give the identity).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    residuals = [(name, m) for name, m in model.named_modules() if isinstance(m, Residual)]
    if not residuals:
        raise ValueError(f"model ({type(model).__name__}) contains no tricklib.Residual block: wrap each residual "
                         f"branch in Residual(branch) (for torchvision ResNets use resnet*(zero_init_residual=True))")
    targets: list[tuple[str, nn.Parameter]] = []
    for name, residual in residuals:
        norms = [(sub, m) for sub, m in residual.block.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        where = f"the residual branch {name + '.block' if name else 'block'!r}"
        if not norms:
            raise ValueError(f"{where} contains no BatchNorm layer: zero-γ needs a branch that ends in BatchNorm "
                             f"(or zero the branch's last weight yourself)")
        sub, norm = norms[-1]
        if norm.weight is None:
            raise ValueError(f"the last BatchNorm of {where} has affine=False: it has no γ to set to zero")
        last = residual.block[-1] if isinstance(residual.block, nn.Sequential) and len(residual.block) else None
        if isinstance(last, (nn.Linear, nn.modules.conv._ConvNd)):
            raise ValueError(f"{where} ends in a {type(last).__name__} after its last BatchNorm (a pre-activation "
                             f"block, BN → ReLU → weight): a zero γ there does not make the block the identity; "
                             f"zero-initialise that last layer's weight (and bias) instead")
        targets.append((".".join(part for part in (name, "block", sub, "weight") if part), norm.weight))
    with torch.no_grad():
        for _, gamma in targets:
            gamma.zero_()
    return [qualified for qualified, _ in targets]
