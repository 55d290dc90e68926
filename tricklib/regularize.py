r"""Regularisation tricks (the regularisation chapters of the book)."""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

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


# --------------------------------------------------------------------------- the dropout family


def drop_path(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    r"""Stochastic depth / DropPath (Huang et al. 2016): drop a residual branch for whole examples.

    .. math:: y_n = \frac{m_n}{1-p}\,x_n,\qquad m_n \sim \mathrm{Bernoulli}(1-p)

    Apply it to the branch, ``x + drop_path(block(x), p)``: an example that draws
    :math:`m_n = 0` skips the block (the identity remains); the others scale the branch by
    :math:`1/(1-p)` so its expectation is unchanged and nothing changes at evaluation.
    Equal, draw for draw, to ``torchvision.ops.stochastic_depth(x, p, mode="row")`` (the
    same generator calls) — ``tests/test_regularize.py``.

    Args:
        x: ``Tensor[N, ...]`` float, the residual branch's output.
        p: drop probability in ``[0, 1]`` (1 drops every branch).
        training: False (evaluation) returns ``x`` unchanged.
    """
    check_tensor("x", x, floating=True)
    check_range("p", p, 0.0, 1.0)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


def drop_connect(weight: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    r"""DropConnect (Wan et al. 2013): drop single *weights*, not units, with inverted scaling.

    .. math:: \tilde W = \frac{M \odot W}{1-p},\qquad M_{ij} \sim \mathrm{Bernoulli}(1-p)

    Use the result in place of the weight, for one forward pass:
    ``F.linear(x, drop_connect(layer.weight, p, model.training), layer.bias)`` (or
    ``F.conv2d``). Dropout zeroes a unit, which removes a whole column of the next
    layer's :math:`W`; DropConnect zeroes single entries, so each output sees its own random
    subset of the inputs. :math:`\mathbb E[\tilde W] = W`, so evaluation uses :math:`W`
    itself; the gradient reaches only the kept weights, scaled by :math:`1/(1-p)`. One
    mask per call, shared by the batch (Wan et al. draw one per example, and at test time
    moment-match a Gaussian instead of using the mean weight). It is ``F.dropout``
    applied to the weight: equal to ``F.dropout(weight, p, training)`` draw for draw
    (the same generator calls) — ``tests/test_dropout_family.py``. Not to be confused with
    the ``drop_connect`` of some EfficientNet code, which is stochastic depth
    (:func:`drop_path`).

    Args:
        weight: the layer's weight, any shape, float.
        p: drop probability in ``[0, 1]`` (1 zeroes every weight).
        training: False (evaluation) returns ``weight`` unchanged.
    """
    check_tensor("weight", weight, floating=True)
    check_range("p", p, 0.0, 1.0)
    if not training or p == 0.0:
        return weight
    keep = 1.0 - p
    mask = torch.empty_like(weight).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return weight * mask


def drop_block(x: torch.Tensor, p: float, block_size: int, training: bool = True, eps: float = 1e-6) -> torch.Tensor:
    r"""DropBlock (Ghiasi et al. 2018): drop square blocks of a feature map instead of single units.

    .. math:: \gamma = \frac{p\,HW}{b^2\,(H-b+1)(W-b+1)},\qquad
        M = 1 - \operatorname{maxpool}_{b\times b}\bigl(\mathrm{Bernoulli}(\gamma)\bigr),\qquad
        y = x \odot M \cdot \frac{|M|}{\sum M}

    Neighbouring activations of a conv net are correlated, so dropping single units
    (Dropout) removes little information; dropping contiguous :math:`b \times b` regions
    makes the net use other evidence. Block centres are drawn where a whole block fits,
    with :math:`\gamma` chosen so that about a share :math:`p` of units is dropped; the
    kept ones are rescaled by the measured kept share. Equal, draw for draw, to
    ``torchvision.ops.drop_block2d`` for odd sizes — ``tests/test_regularize.py``.

    Args:
        x: ``Tensor[N, C, H, W]`` float.
        p: share of units to drop, in ``[0, 1]``.
        block_size: :math:`b \ge 1`, capped at ``min(H, W)``, odd or even (torchvision:
            odd only); 1 is Dropout with DropBlock's rescaling.
        training: False returns ``x`` unchanged.
        eps: added to :math:`\sum M` (all units dropped gives zeros, not NaN).
    """
    check_tensor("x", x, ndim=4, floating=True)
    check_range("p", p, 0.0, 1.0)
    block_size = check_int("block_size", block_size, 1)
    if not training or p == 0.0:
        return x
    n, c, h, w = x.shape
    b = min(block_size, h, w)
    gamma = p * h * w / (b * b * (h - b + 1) * (w - b + 1))
    centres = torch.empty((n, c, h - b + 1, w - b + 1), dtype=x.dtype, device=x.device).bernoulli_(gamma)
    # grow every drawn corner into a b x b block: pad by b - 1, then a stride-1 b x b max-pool
    # (H - b + 1 + 2(b - 1) - b + 1 = H rows); any b, where torchvision accepts odd b only
    dropped = F.max_pool2d(F.pad(centres, [b - 1] * 4), kernel_size=b, stride=1)
    mask = 1.0 - dropped
    return x * mask * (mask.numel() / (eps + mask.sum()))


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Cutout (DeVries & Taylor 2017): zero one ``size × size`` square per image, at a uniform centre.

    The square may stick out of the image (its centre is any pixel), so edges are cut
    less often than the middle, as in the paper. An input-space cousin of DropBlock, used
    on training images only.

    Args:
        x: ``Tensor[N, C, H, W]`` images.
        size: side of the square in pixels, ``>= 1``.
        generator: a ``torch.Generator`` (on ``x``'s device) for reproducible squares.

    Returns:
        A new tensor, ``x`` with the squares set to 0.
    """
    check_tensor("x", x, ndim=4)
    size = check_int("size", size, 1)
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return x.masked_fill(inside[:, None], 0)


# --------------------------------------------------------------------------- mixing examples


def _mix_inputs(x: torch.Tensor, targets: torch.Tensor, num_classes: int):
    check_tensor("x", x, floating=True)
    if x.dim() < 1 or x.shape[0] != targets.shape[0]:
        raise ValueError(f"x and targets must have the same number of examples, got {tuple(x.shape)} "
                         f"and {tuple(targets.shape)}")
    return F.one_hot(_class_indices(targets, num_classes), num_classes).to(x.dtype)


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    check_range("alpha", alpha, 0.0, low_open=True)
    # Beta(α, α) from two Gammas, drawn with torch so the generator controls it
    a = torch._standard_gamma(torch.tensor([alpha, alpha], dtype=torch.float64), generator=generator)
    return float(a[0] / a.sum())


def mixup(x: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float = 0.2,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Mixup (Zhang et al. 2018): train on convex combinations of pairs of examples and of their labels.

    .. math:: \hat x = \lambda x_i + (1-\lambda) x_j,\qquad \hat y = \lambda y_i + (1-\lambda) y_j,
        \qquad \lambda \sim \mathrm{Beta}(\alpha, \alpha)

    One :math:`\lambda` per batch, :math:`j` a random permutation of the batch (the paper's
    implementation). Train with soft-target cross-entropy,
    ``F.cross_entropy(logits, y_mix)`` (which accepts probabilities). Small :math:`\alpha`
    (0.1–0.4) keeps most pairs close to one example; paper: CIFAR-10 PreAct ResNet-18
    error 5.6% → 4.2% with :math:`\alpha = 1`.

    Args:
        x: ``Tensor[N, ...]`` float inputs.
        targets: ``Tensor[N]`` integer class indices.
        num_classes: number of classes.
        alpha: :math:`\alpha > 0` of the Beta distribution.
        generator: a CPU ``torch.Generator`` for reproducible :math:`\lambda` and pairs.

    Returns:
        ``(x_mix, y_mix, lam)``: mixed inputs, ``Tensor[N, num_classes]`` soft targets, and
        :math:`\lambda`.
    """
    y = _mix_inputs(x, targets, num_classes)
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm], lam


def cutmix(x: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float = 1.0,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""CutMix (Yun et al. 2019): paste a box from another image; mix the labels by its area.

    .. math:: \hat x = M \odot x_i + (1 - M) \odot x_j,\qquad \hat y = \lambda y_i + (1-\lambda) y_j

    A box of area :math:`(1-\lambda_0) HW`, :math:`\lambda_0 \sim \mathrm{Beta}(\alpha, \alpha)`,
    at a uniform centre, clipped to the image; :math:`\lambda` is then the share of the
    image the box does *not* cover, so labels match pixels exactly. Paper: ImageNet
    ResNet-50 top-1 error 23.7% → 21.4%.

    Args:
        x: ``Tensor[N, C, H, W]`` float images.
        targets: ``Tensor[N]`` integer class indices.
        num_classes: number of classes.
        alpha: :math:`\alpha > 0` (the paper uses 1: :math:`\lambda_0` uniform).
        generator: a CPU ``torch.Generator`` for reproducible boxes and pairs.

    Returns:
        ``(x_mix, y_mix, lam)`` as :func:`mixup`.
    """
    check_tensor("x", x, ndim=4, floating=True)
    y = _mix_inputs(x, targets, num_classes)
    lam0 = _beta(alpha, generator)
    h, w = x.shape[-2:]
    ch, cw = (int(v) for v in torch.randint(0, h, (1,), generator=generator).tolist() +
              torch.randint(0, w, (1,), generator=generator).tolist())
    bh, bw = int(h * math.sqrt(1 - lam0)), int(w * math.sqrt(1 - lam0))
    top, bottom = max(ch - bh // 2, 0), min(ch + bh - bh // 2, h)
    left, right = max(cw - bw // 2, 0), min(cw + bw - bw // 2, w)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return mixed, lam * y + (1 - lam) * y[perm], lam


def r_drop_loss(logits1: torch.Tensor, logits2: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0,
                reduction: str = "mean") -> torch.Tensor:
    r"""R-Drop (Liang et al. 2021): cross-entropy of two dropout passes plus their symmetric KL divergence.

    .. math:: \mathcal L = \tfrac12\bigl(\mathrm{CE}(p_1, y) + \mathrm{CE}(p_2, y)\bigr)
        + \frac{\alpha}{2}\bigl(\mathrm{KL}(p_1 \| p_2) + \mathrm{KL}(p_2 \| p_1)\bigr)

    ``logits1`` and ``logits2`` are two forward passes of the same batch with dropout on
    (different masks); the KL term makes the sub-networks agree, which shrinks the gap
    between training (dropout on) and inference (off). Costs a second forward/backward.

    Args:
        logits1: ``Tensor[N, C]`` float, first pass.
        logits2: ``Tensor[N, C]`` float, second pass (same batch, other dropout masks).
        targets: ``Tensor[N]`` integer class indices.
        alpha: :math:`\alpha \ge 0`, weight of the KL term (paper: 0.3–5 by task).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the examples.
    """
    check_tensor("logits1", logits1, ndim=2, floating=True)
    check_tensor("logits2", logits2, ndim=2, floating=True)
    if logits1.shape != logits2.shape:
        raise ValueError(f"logits1 and logits2 must have the same shape, got {tuple(logits1.shape)} "
                         f"and {tuple(logits2.shape)}")
    check_range("alpha", alpha, 0.0)
    check_choice("reduction", reduction, REDUCTIONS)
    y = _class_indices(targets, logits1.shape[1])
    logp1, logp2 = logits1.log_softmax(dim=1), logits2.log_softmax(dim=1)
    ce = (F.nll_loss(logp1, y, reduction="none") + F.nll_loss(logp2, y, reduction="none")) / 2
    # KL(p1 || p2) + KL(p2 || p1) = sum (p1 - p2)(log p1 - log p2)
    kl = ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(dim=1)
    return reduce_loss(ce + alpha / 2 * kl, reduction)


def soft_threshold(w: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    r"""The proximal step of an L1 penalty: shrink every weight towards 0 by ``threshold``, stopping at 0.

    .. math:: \operatorname{prox}_{t\lambda\|\cdot\|_1}(w) = \operatorname{sign}(w)\,\max(|w| - t\lambda, 0)

    After a gradient step on the data loss with learning rate :math:`t`, applying it with
    ``threshold`` :math:`= t\lambda` is proximal gradient descent (ISTA) on
    :math:`\text{loss} + \lambda\|w\|_1`: weights end *exactly* at 0, where adding
    :math:`\lambda\,\mathrm{sign}(w)` to the gradient only makes them jitter around 0.

    Args:
        w: weights, any shape, float.
        threshold: :math:`t\lambda \ge 0`, a number or a tensor that broadcasts to ``w``
            (one threshold per row, e.g. for a batch of models with different :math:`\lambda`).
    """
    check_tensor("w", w, floating=True)
    if isinstance(threshold, torch.Tensor):
        if threshold.is_complex() or not (threshold >= 0).all():  # NaN fails ">= 0" too
            raise ValueError("threshold must be >= 0 everywhere (no NaN)")
        threshold = threshold.to(w.dtype)
    else:
        check_range("threshold", threshold, 0.0)
    return w.sign() * (w.abs() - threshold).clamp(min=0)


@torch.no_grad()
def l1_prox_step(params: torch.Tensor | Iterable[torch.Tensor], lr: float, lam: float | torch.Tensor) -> None:
    r"""The L1 penalty as a proximal step: soft-threshold ``params`` in place, after ``opt.step()``.

    .. math:: w \leftarrow \operatorname{sign}(w)\,\max(|w| - \eta\lambda,\ 0)

    Called after each gradient step of learning rate :math:`\eta` on the data loss alone,
    this is proximal gradient descent (ISTA, Beck & Teboulle 2009; with mini-batches,
    proximal SGD) on :math:`\text{loss} + \lambda\|w\|_1` (Tibshirani 1996, the lasso):
    every weight whose gradient step lands within :math:`\eta\lambda` of 0 is set to
    *exactly* 0. Adding :math:`\lambda\|w\|_1` to the loss instead (a subgradient step)
    makes such weights jump across 0 by :math:`\eta\lambda` and never land on it. For the
    elastic net (Zou & Hastie 2005), :math:`\lambda_1\|w\|_1 + \tfrac{\lambda_2}{2}\|w\|_2^2`,
    keep the L2 part in the gradient (``weight_decay=λ2`` in SGD) and call this with
    :math:`\lambda_1`. With plain SGD, full batches and :math:`\eta \le 1/L` it converges
    to the minimiser: ``tests/test_l1_l2.py`` checks it against scikit-learn's ``Lasso``,
    ``ElasticNet`` and L1 ``LogisticRegression`` (``l1_ratio=1``). After an Adam step the
    threshold :math:`\eta\lambda` ignores Adam's per-weight scaling: the zeros are still
    exact, the penalty is no longer exactly :math:`\lambda\|w\|_1`.

    Args:
        params: a tensor or ``nn.Parameter``, or an iterable of them (e.g. the weight
            matrices only: leave biases unpenalised), float.
        lr: the learning rate :math:`\eta \ge 0` of the step just taken (with a
            scheduler, the current one: ``opt.param_groups[0]["lr"]``).
        lam: :math:`\lambda \ge 0`, a number or a tensor that broadcasts to every
            parameter (one strength per row).
    """
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not params:
        raise ValueError("params is empty (an exhausted model.parameters() generator?)")
    for i, p in enumerate(params):
        check_tensor(f"params[{i}]", p, floating=True)
    check_range("lr", lr, 0.0)
    if not isinstance(lam, torch.Tensor):
        check_range("lam", lam, 0.0)
    elif lam.is_complex() or not (lam >= 0).all():
        raise ValueError("lam must be >= 0 everywhere (no NaN)")
    for p in params:
        p.copy_(soft_threshold(p, lr * lam))


# --------------------------------------------------------------------------- adversarial training


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, loss_fn) -> torch.Tensor:
    x = x.detach().requires_grad_()
    return torch.autograd.grad(loss_fn(model(x), targets), x)[0]


def fgsm(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, epsilon: float,
         loss_fn=F.cross_entropy, clamp: tuple[float, float] | None = None) -> torch.Tensor:
    r"""Fast gradient sign method (Goodfellow et al. 2015): one step up the loss, size :math:`\epsilon` per input.

    .. math:: x_{\text{adv}} = \operatorname{clip}\bigl(x + \epsilon\,\operatorname{sign}(\nabla_x \mathcal L(f(x), y))\bigr)

    The worst case, to first order, within :math:`\|\delta\|_\infty \le \epsilon`. Training
    on such inputs (adversarial training) trades clean accuracy for robustness. Only the
    input's gradient is computed: the model's ``.grad`` are left as they were.

    Args:
        model: the classifier (its train/eval mode is used as it is).
        x: ``Tensor[N, ...]`` float inputs.
        targets: what ``loss_fn`` takes as targets (class indices for cross-entropy).
        epsilon: :math:`\epsilon \ge 0`, in the units of ``x``.
        loss_fn: ``loss_fn(logits, targets)`` → scalar.
        clamp: ``(low, high)`` valid input range (e.g. ``(0, 1)`` for pixels), or None.

    Returns:
        The adversarial inputs, detached.
    """
    check_tensor("x", x, floating=True)
    check_range("epsilon", epsilon, 0.0)
    x_adv = x.detach() + epsilon * _input_gradient(model, x, targets, loss_fn).sign()
    return x_adv.clamp(*clamp) if clamp is not None else x_adv


def pgd(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, epsilon: float, step_size: float,
        steps: int = 10, loss_fn=F.cross_entropy, clamp: tuple[float, float] | None = None,
        random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Projected gradient descent attack (Madry et al. 2018): ``steps`` FGSM steps, projected back into the ball.

    .. math:: x^{t+1} = \Pi_{\|x' - x\|_\infty \le \epsilon}\bigl(x^t + \eta\,\operatorname{sign}(\nabla_x \mathcal L(f(x^t), y))\bigr)

    from a uniform random start in the ball. Stronger than one FGSM step; Madry et al.
    train on it ("the min-max formulation").

    Args:
        model: the classifier.
        x: ``Tensor[N, ...]`` float inputs.
        targets: targets for ``loss_fn``.
        epsilon: radius :math:`\epsilon \ge 0` of the :math:`L_\infty` ball.
        step_size: :math:`\eta > 0` (often :math:`2.5\,\epsilon/\text{steps}`).
        steps: number of steps, ``>= 1``.
        loss_fn: ``loss_fn(logits, targets)`` → scalar.
        clamp: ``(low, high)`` valid input range, or None.
        random_start: start at a uniform point of the ball (else at ``x``).
        generator: a ``torch.Generator`` (on ``x``'s device) for the start.

    Returns:
        The adversarial inputs, detached, within :math:`\epsilon` of ``x`` and inside ``clamp``.
    """
    check_tensor("x", x, floating=True)
    check_range("epsilon", epsilon, 0.0)
    check_range("step_size", step_size, 0.0, low_open=True)
    steps = check_int("steps", steps, 1)
    x = x.detach()
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = x_adv + (2 * noise - 1) * epsilon
    for _ in range(steps):
        if clamp is not None:
            x_adv = x_adv.clamp(*clamp)
        x_adv = x_adv + step_size * _input_gradient(model, x_adv, targets, loss_fn).sign()
        x_adv = torch.max(torch.min(x_adv, x + epsilon), x - epsilon)
    return x_adv.clamp(*clamp) if clamp is not None else x_adv


def adversarial_batch_transform(model: torch.nn.Module, attack=pgd, **attack_kwargs):
    r"""A ``batch_transform`` for :func:`~tricklib.harness.fit` that trains on adversarial examples (Madry et al. 2018).

    .. math:: \min_\theta\ \mathbb E_{(x, y)}\Bigl[\max_{\|\delta\|_\infty \le \epsilon}
        \mathcal L\bigl(f_\theta(x + \delta), y\bigr)\Bigr]

    Each training batch :math:`x` is replaced by ``attack(model, x, y, **attack_kwargs)``, the
    inner maximisation (:func:`pgd` for Madry et al.'s PGD training, :func:`fgsm` for Goodfellow
    et al.'s, ``pgd`` with ``steps=1`` and ``step_size=1.25 * epsilon`` for Wong et al. 2020's
    FGSM with a random start); the outer step then minimises the loss on it. The attack runs in
    evaluation mode (dropout off, BatchNorm on its running statistics, so the attack sees the
    function that is deployed and does not update the statistics) and the model's mode is
    restored afterwards. ``tests/test_adversarial_training.py`` checks that it returns the
    attack's output on the model in evaluation mode, restores the mode, and trains in ``fit``.

    Args:
        model: the model being trained (the same object given to ``fit``).
        attack: ``attack(model, x, targets, **attack_kwargs)`` → adversarial inputs, e.g.
            :func:`pgd` (default) or :func:`fgsm`.
        **attack_kwargs: passed on, e.g. ``epsilon=0.1, step_size=0.08, steps=3, clamp=(0, 1)``.

    Returns:
        ``transform(x, targets) -> (x_adv, targets)``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(attack):
        raise TypeError(f"attack must be callable (e.g. tricklib.pgd), got {type(attack).__name__}")

    def transform(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = model.training
        model.eval()
        try:
            x_adv = attack(model, x, targets, **attack_kwargs)
        finally:
            model.train(was_training)
        return x_adv, targets

    return transform


@contextlib.contextmanager
def fgm(embedding: torch.nn.Module, epsilon: float = 1.0):
    r"""Fast gradient method on embeddings (Miyato et al. 2017), the form used for text classifiers.

    .. math:: r = \epsilon\,\frac{g}{\|g\|_2},\qquad g = \nabla_E \mathcal L

    Inside the ``with`` block the embedding matrix is :math:`E + r`; on leaving, the exact
    original weights are restored. Use after the clean ``loss.backward()`` (which provides
    :math:`g`) and back-propagate the adversarial loss inside, so the step uses both
    gradients::

        loss_fn(model(x), y).backward()
        with fgm(model.embedding, epsilon=1.0):
            loss_fn(model(x), y).backward()
        opt.step(); opt.zero_grad()

    Args:
        embedding: the module whose ``weight`` is perturbed (an ``nn.Embedding``), with a
            gradient from a backward pass.
        epsilon: :math:`\epsilon \ge 0`, the perturbation's L2 norm.
    """
    check_range("epsilon", epsilon, 0.0)
    weight = getattr(embedding, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.grad is None:
        raise ValueError("fgm needs a module with a weight that has a gradient: call loss.backward() first")
    backup = weight.detach().clone()
    norm = weight.grad.norm()
    with torch.no_grad():
        if norm > 0 and torch.isfinite(norm):
            weight.add_(epsilon * weight.grad / norm)
    try:
        yield embedding
    finally:
        with torch.no_grad():
            weight.copy_(backup)
