r"""Losses for imbalance and hard examples (the loss chapters of the book)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._checks import check_choice, check_int, check_range, check_same_device, check_tensor

try:
    import numba
except ImportError:  # optional accelerator; without it focal_loss runs in torch ops everywhere
    numba = None
else:
    from ._soft_nms_kernel import _exp_negative  # Soft-NMS's vectorisable exp (0 below -708, 1 ulp of libm's)

REDUCTIONS = ("none", "mean", "sum")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``"none"``, ``"mean"`` or ``"sum"``; the mean of nothing is ``0`` (and keeps the graph).

    Args:
        loss: elementwise loss tensor of any shape.
        reduction: ``"none"`` (return ``loss`` as is) | ``"mean"`` | ``"sum"``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "none":
        return loss
    if reduction == "sum" or loss.numel() == 0:
        return loss.sum()
    return loss.mean()


TOKEN_REDUCTIONS = ("none", "mean", "sum", "sequence_mean")


def token_weights(targets: torch.Tensor, reduction: str = "mean", *, ignore_index: int = -100,
                  normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    r"""The weight :math:`w_i` each token's loss gets under a reduction: :math:`\mathcal L = \sum_i w_i\,\ell_i`.

    Since :math:`\partial\mathcal L/\partial z_i = w_i\,\partial\ell_i/\partial z_i`, the weight is
    also the factor by which the reduction scales the gradient through token :math:`i`'s
    logits. With :math:`m_i = [y_i \ne \text{ignore\_index}]` (padding gets weight 0),
    :math:`N = \sum_i m_i` the batch's real tokens, :math:`n_s` those of sequence :math:`s`
    and :math:`S` the number of sequences with :math:`n_s > 0`:

    .. math:: w_i^{\text{mean}} = \frac{m_i}{N},\qquad
              w_i^{\text{sum}} = \frac{m_i}{c}\ (c = \text{normalizer}, \text{ default } 1),\qquad
              w_{s,t}^{\text{sequence\_mean}} = \frac{m_{s,t}}{S\,n_s}

    ``"mean"`` and ``"sum"`` weight the tokens of one batch alike and differ by the factor
    :math:`N` that changes from batch to batch; ``"sequence_mean"`` gives every sequence the
    same total weight, so a token of a short sequence weighs more than one of a long
    sequence. With no real token every weight is 0 (the mean of nothing is 0, not NaN).
    ``tests/test_loss_reduction.py`` checks the weights against ``F.cross_entropy``'s
    gradients and a per-sequence loop.

    Args:
        targets: integer class indices, any shape; for ``"sequence_mean"`` the last dimension
            is time (``Tensor[..., T]``; one sequence per index of the leading dimensions).
        reduction: ``"mean"`` (default) | ``"sum"`` | ``"sequence_mean"``.
        ignore_index: the target value of padding (PyTorch's default ``-100``).
        normalizer: only with ``"sum"``: divide by this fixed positive number (or 0-d tensor),
            e.g. the token count of a whole accumulated or distributed batch.

    Returns:
        ``Tensor`` of ``targets``' shape, float32.
    """
    _check_targets(targets)
    check_choice("reduction", reduction, TOKEN_REDUCTIONS[1:])
    check_int("ignore_index", ignore_index)
    if normalizer is not None and reduction != "sum":
        raise ValueError(f"normalizer applies to reduction='sum' only, got reduction={reduction!r}")
    mask = (targets != ignore_index).to(torch.float32)
    if reduction == "mean":
        return mask / mask.sum().clamp(min=1)
    if reduction == "sum":
        return mask if normalizer is None else mask / _check_normalizer(normalizer, mask.device)
    if targets.dim() == 0:
        raise ValueError("targets must have a time dimension for reduction='sequence_mean', got a 0-d tensor")
    per_sequence = mask.sum(-1, keepdim=True)                         # n_s
    sequences = (per_sequence > 0).sum().clamp(min=1)                 # S
    return mask / (per_sequence.clamp(min=1) * sequences)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean", *,
               ignore_index: int = -100, label_smoothing: float = 0.0,
               normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    r"""Cross-entropy over tokens with the normalisation said out loud: per token, per sequence, or a sum.

    .. math:: \mathcal L = \sum_i w_i\,\ell_i,\qquad \ell_i = -\log \operatorname{softmax}(z_i)_{y_i}

    with the weights :math:`w_i` of :func:`token_weights`: ``"mean"`` divides by the real
    (not padded) tokens of the batch, ``"sum"`` by nothing (or by a fixed ``normalizer``),
    ``"sequence_mean"`` averages each sequence over its tokens and then the sequences.
    Padding (``targets == ignore_index``) adds nothing to the loss, the weights or the
    counts; with no real token the loss is a differentiable 0 where ``F.cross_entropy``'s
    mean is NaN. ``label_smoothing`` (Szegedy et al. 2016) is ``F.cross_entropy``'s, whose
    smoothing term is masked at padding too.

    ``"mean"`` and ``"sum"`` equal ``F.cross_entropy(logits.flatten(0, -2), targets.flatten(),
    reduction=..., ignore_index=..., label_smoothing=...)`` (values and gradients);
    ``"sequence_mean"`` equals a loop of that mean over the sequences; ``"sum"`` with a
    normalizer is fairseq's sum over tokens divided by the batch's "sample size"
    (Ott et al. 2019). Checked in ``tests/test_loss_reduction.py``.

    Args:
        logits: ``Tensor[..., C]``, classes last (a model's output, not ``F.cross_entropy``'s
            ``(N, C, T)`` layout), floating point.
        targets: ``Tensor[...]`` of class indices in ``[0, C)`` or ``ignore_index``, the shape
            of ``logits`` without its last dimension; for ``"sequence_mean"`` the last
            dimension is time.
        reduction: ``"mean"`` (default) | ``"sum"`` | ``"sequence_mean"`` | ``"none"``
            (the per-token losses, 0 at padding).
        ignore_index: the target value of padding.
        label_smoothing: in ``[0, 1]``.
        normalizer: only with ``"sum"``: a fixed positive divisor (number or 0-d tensor).

    Returns:
        A scalar in ``logits``' dtype, or ``Tensor[...]`` for ``"none"``.
    """
    check_tensor("logits", logits, floating=True)
    _check_targets(targets)
    if logits.dim() == 0 or logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits must have the shape of targets plus a last dimension of classes, got logits "
                         f"{tuple(logits.shape)} and targets {tuple(targets.shape)} (classes last, not (N, C, T))")
    check_same_device(logits=logits, targets=targets)
    check_choice("reduction", reduction, TOKEN_REDUCTIONS)
    check_int("ignore_index", ignore_index)
    check_range("label_smoothing", label_smoothing, 0.0, 1.0)
    classes = logits.shape[-1]
    valid = targets != ignore_index
    if valid.any():
        low, high = torch.aminmax(targets[valid])
        if low < 0 or high >= classes:
            raise ValueError(f"targets must be class indices in [0, {classes}) or ignore_index={ignore_index}, "
                             f"got values from {low.item()} to {high.item()}")
    per_token = F.cross_entropy(logits.reshape(-1, classes), targets.reshape(-1), reduction="none",
                                ignore_index=ignore_index, label_smoothing=label_smoothing).view(targets.shape)
    if normalizer is not None and reduction != "sum":
        raise ValueError(f"normalizer applies to reduction='sum' only, got reduction={reduction!r}")
    if reduction == "none":
        return per_token
    weights = token_weights(targets, reduction, ignore_index=ignore_index, normalizer=normalizer)
    dtype = torch.promote_types(per_token.dtype, torch.float32)  # accumulate half types in float32
    return (per_token.to(dtype) * weights.to(dtype)).sum().to(logits.dtype)


def _check_targets(targets: object) -> None:
    check_tensor("targets", targets)
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"targets must be an integer tensor of class indices, got dtype {targets.dtype}")


def _check_normalizer(normalizer: object, device: torch.device) -> torch.Tensor:
    """A positive finite divisor as a float32 tensor (a 0-d tensor, e.g. an all-reduced count, stays one)."""
    if isinstance(normalizer, torch.Tensor):
        if normalizer.dim() != 0 or normalizer.is_complex():
            raise ValueError(f"normalizer must be a real number or a 0-d tensor, got shape {tuple(normalizer.shape)}")
        value = normalizer.detach().to(device, torch.float32)
        if not (value > 0 and torch.isfinite(value)):
            raise ValueError(f"normalizer must be positive and finite, got {value.item()}")
        return value
    check_range("normalizer", normalizer, 0.0, low_open=True)
    if not math.isfinite(normalizer):
        raise ValueError(f"normalizer must be positive and finite, got {normalizer}")
    return torch.tensor(float(normalizer), device=device)


def topk_loss(loss: torch.Tensor, k: int, reduction: str = "mean") -> torch.Tensor:
    r"""Keep only the ``k`` largest per-example losses: the hardest examples of the batch.

    .. math:: \mathcal L = \frac1k \sum_{i \in \text{top-}k(\ell)} \ell_i

    Gradient flows only through the kept examples (``loss.topk(k)``): each kept example gets
    :math:`1/k` of the upstream gradient (``"mean"``) or all of it (``"sum"``), the others 0.
    With ``k`` at least the number of examples it is the plain mean. Ties are broken by
    ``torch.topk``. With a fixed ``k`` the kept losses are the tail of the batch, so the
    loss grows with the batch size (:func:`ohem_loss` keeps a fraction instead). Tested (``tests/test_ohem.py``)
    against a sorted reference, ``loss.topk(k)``, on ties, empty input and half precision.

    Args:
        loss: ``Tensor[N]`` per-example losses (``reduction="none"`` from the loss function).
        k: how many to keep, ``k >= 1``.
        reduction: ``"mean"`` (over the kept examples) | ``"sum"`` | ``"none"`` (the kept
            losses, largest first).

    Returns:
        A scalar, or ``Tensor[min(k, N)]`` for ``"none"``; the mean of no examples is 0.
    """
    check_tensor("loss", loss, ndim=1, floating=True)
    k = check_int("k", k, 1)
    return reduce_loss(loss.topk(min(k, loss.numel())).values, reduction)


def ohem_loss(loss: torch.Tensor, keep_fraction: float = 0.25, reduction: str = "mean") -> torch.Tensor:
    r"""Online hard example mining (Shrivastava et al. 2016): back-propagate the hardest ``keep_fraction``.

    .. math:: \mathcal L = \frac1k \sum_{i \in \text{top-}k(\ell)} \ell_i,\qquad
        k = \lceil \text{keep\_fraction}\cdot N \rceil

    The argument is the share *kept*, not the share dropped: the popular one-liner
    ``index = argsort(loss)[int(num * rate):]`` keeps the top :math:`1 - \text{rate}`
    (:math:`N - \lfloor \text{rate}\cdot N \rfloor` examples), so its ``rate=0.7`` is
    ``keep_fraction=0.3`` here (:math:`k` is computed after rounding
    :math:`\text{keep\_fraction}\cdot N` to 6 decimals, so ``1 - 0.7`` keeps 30 of 100). The paper samples regions by loss after NMS
    among them; this is the per-example core (:func:`topk_loss` with a fraction). Hard
    examples include mislabelled ones: with label noise OHEM concentrates on them. Tested
    (``tests/test_ohem.py``) against ``loss.topk(k)``, a sorted reference and the one-liner
    above, with gradients, ties, empty input and half precision.

    Args:
        loss: ``Tensor[N]`` per-example losses (``reduction="none"``).
        keep_fraction: share of examples kept, in ``(0, 1]`` (1 is the plain mean).
        reduction: as :func:`topk_loss`.

    Returns:
        As :func:`topk_loss` (at least one example is kept when there is one).
    """
    check_tensor("loss", loss, ndim=1, floating=True)
    check_range("keep_fraction", keep_fraction, 0.0, 1.0, low_open=True)
    # rounded first, so that float noise does not add one: keep_fraction = 1 - 0.7 keeps 30 of 100, not 31
    k = max(1, math.ceil(round(keep_fraction * loss.numel(), 6)))
    return reduce_loss(loss.topk(min(k, loss.numel())).values, reduction)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = 0.25,
               gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
    r"""Sigmoid focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    .. math:: \mathrm{FL} = \alpha_t\,q^{\gamma}\,\mathrm{CE},\qquad
              q = 1 - p_t = p\,(1-y) + (1-p)\,y,\quad \alpha_t = \alpha\,y + (1-\alpha)(1-y)

    with :math:`p = \sigma(z)` for the logit :math:`z`, target :math:`y \in [0, 1]` and
    :math:`\mathrm{CE} = -y\log p - (1-y)\log(1-p)` the binary cross-entropy (for 0/1
    targets :math:`\mathrm{FL} = -\alpha_t (1-p_t)^\gamma \log p_t`). ``gamma=0, alpha=None``
    is plain binary cross-entropy; ``gamma`` down-weights easy examples (large :math:`p_t`).

    The loss and its gradients are computed together, elementwise, with a hand-written
    backward (``torch.autograd.Function``: no graph of intermediate tensors). On the CPU
    with ``numba`` installed that is one compiled pass over the elements, in float64, that
    vectorises (:math:`e^{-|z|}` by the table-and-polynomial ``exp`` of :mod:`tricklib.nms`,
    :math:`\log(1+e^{-|z|})` by a series, :math:`p` and :math:`1-p` both from
    :math:`e^{-|z|}` without cancellation): 0.5x to 1.3x the time of
    ``binary_cross_entropy_with_logits`` and a fifth to a quarter of torchvision's on one
    thread (``benchmarks/README.md``). Elsewhere (CUDA, no numba, or targets that need a
    gradient) torch ops compute the same formulas, with :math:`\log(1+e^{-|z|}) =
    -\log \max(p, 1-p)`; the two agree to rounding. With :math:`\sigma' = p(1-p)` and
    :math:`\mathrm{CE} = \max(z, 0) - z\,y + \log(1 + e^{-|z|})`,

    .. math:: \frac{\partial\,\mathrm{FL}}{\partial z} = \alpha_t\bigl[(p - y)\,q^\gamma
              + \gamma\,\mathrm{CE}\,(1-2y)\,q^{\gamma-1}\,p(1-p)\bigr],\qquad
              \frac{\partial\,\mathrm{FL}}{\partial y} = q^\gamma\bigl[(2\alpha-1)\,\mathrm{CE}
              - \alpha_t z\bigr] + \alpha_t\,\gamma\,(1-2p)\,q^{\gamma}\,\frac{\mathrm{CE}}{q}

    where :math:`q^{\gamma-1}p(1-p) = q^\gamma \cdot p(1-p)/q` with :math:`p(1-p)/q \in [0, 1]`
    and :math:`\mathrm{CE}/q` bounded, both taken as 0 where :math:`q = 0` (there
    :math:`q^\gamma = 0`): values and gradients stay finite at logits of ±1e4, for any
    :math:`\gamma \ge 0`, and for targets of exactly 0 or 1 (the gradient with respect to the
    targets, e.g. when distilling from a saturated teacher). The gradient is not itself
    differentiable (double backward raises). float16/bfloat16 inputs are computed in
    float32 and returned in their dtype. ``benchmarks/focal_loss.py`` times it.

    Args:
        logits: float tensor of any shape (one logit per binary decision), finite.
        targets: same shape and device, values in [0, 1] (usually 0/1; bool or integer
            tensors are converted to the logits' dtype); NaN is refused.
        alpha: weight of the positive class in [0, 1], or ``None`` for no weighting
            (torchvision's ``alpha=-1``).
        gamma: focusing parameter, ``>= 0``.
        reduction: ``"none"`` (default) | ``"mean"`` | ``"sum"``.

    Returns:
        The loss, elementwise (same shape) or reduced, in the logits' dtype. Checked against
        ``torchvision.ops.sigmoid_focal_loss`` (values and gradients, float64/float32/bf16),
        with ``torch.autograd.gradcheck`` in float64 (logits and targets) in
        ``tests/test_losses.py``.
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
    if targets.is_complex():
        raise TypeError(f"targets must be real, got dtype {targets.dtype}")
    if targets.numel():
        low, high = torch.aminmax(targets.detach())
        if not (low >= 0 and high <= 1):  # (a NaN fails both)
            raise ValueError(f"targets must lie in [0, 1] (no NaN), got values from {low.item()} to {high.item()}")
    if not targets.is_floating_point():
        targets = targets.to(logits.dtype)
    loss = _FocalLoss.apply(logits, targets, None if alpha is None else float(alpha), float(gamma))
    return reduce_loss(loss, reduction)


class _FocalLoss(torch.autograd.Function):
    """Elementwise focal loss; its gradients are computed with it (sharing p, q, CE) and kept for backward."""

    @staticmethod
    def forward(ctx, logits, targets, alpha, gamma):
        # half types in float32: their exp and log would lose the tails
        dtype = torch.promote_types(logits.dtype, torch.float32)
        z, y = logits.to(dtype), targets.to(dtype)
        need_z, need_y = ctx.needs_input_grad[:2]
        if numba is not None and z.is_cpu and not need_y:
            loss, grad_z = _focal_compiled(z, y, alpha, gamma)
            grad_z, grad_y = grad_z if need_z else None, None
        else:
            loss, grad_z, grad_y = _focal_torch(z, y, alpha, gamma, need_z, need_y)
        ctx.save_for_backward(grad_z, grad_y)
        ctx.dtypes = logits.dtype, targets.dtype
        return loss.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        grad_z, grad_y = ctx.saved_tensors
        logits_dtype, targets_dtype = ctx.dtypes
        return (None if grad_z is None else (grad_z * grad_loss).to(logits_dtype),
                None if grad_y is None else (grad_y * grad_loss).to(targets_dtype), None, None)


def _focal_torch(z, y, alpha, gamma, need_z, need_y):
    """Loss and gradients in torch ops (any device); buffers are reused in place, since
    allocating a tensor costs about as much as an elementwise op."""
    p = torch.sigmoid(z)
    s = torch.rsub(p, 1)                              # 1 - p
    q = torch.lerp(p, s, y)                           # 1 - p_t = p (1 - y) + (1 - p) y
    # CE = max(z, 0) - z y + log(1 + e^{-|z|}), and log(1 + e^{-|z|}) = -log σ(|z|) = -log max(p, 1 - p)
    spare = torch.maximum(p, s).log_()
    ce = torch.clamp(z, min=0).sub_(spare).addcmul_(z, y, value=-1)
    at = None if alpha is None else torch.mul(y, 2 * alpha - 1, out=spare).add_(1 - alpha)   # α_t
    qg = None if gamma == 0 else q if gamma == 1 else q * q if gamma == 2 else q.pow(gamma)
    weight = at if qg is None else qg if at is None else qg.mul_(at) if gamma == 2 else qg * at
    grad_y = _focal_grad_targets(z, p, s, q, ce, at, weight, alpha, gamma) if need_y else None
    grad_z = None
    if need_z:
        # ∂FL/∂z = α_t [(p - y) q^γ + γ CE (1 - 2y) q^{γ-1} p (1 - p)]
        grad_z = torch.sub(p, y)
        if weight is not None:
            grad_z.mul_(weight)
        if gamma > 0:
            shape = p.mul_(s)                             # p (1 - p), in p's storage
            if gamma == 2:
                shape.mul_(q)
            elif gamma != 1:                              # q^γ · p (1 - p) / q, the ratio in [0, 1]
                shape.div_(q).nan_to_num_(0.0).mul_(qg)
            shape.mul_(ce).mul_(torch.mul(y, -2, out=s).add_(1))   # · CE (1 - 2y)
            grad_z.add_(shape if at is None else shape.mul_(at), alpha=gamma)
    loss = ce if weight is None else ce.mul_(weight)
    return loss, grad_z, grad_y


def _focal_grad_targets(z, p, s, q, ce, at, weight, alpha, gamma):
    """∂FL/∂y = q^γ [(2α - 1) CE - α_t z] + α_t γ (1 - 2p) q^γ CE / q, given ``weight`` = α_t q^γ."""
    grad = ce * (2 * alpha - 1) if alpha is not None else torch.zeros_like(ce)
    grad.sub_(z if at is None else z * at)
    if gamma == 0:
        return grad
    grad.mul_(q.pow(gamma))
    # CE / q is bounded where q > 0; at q = 0 (a saturated 0/1 target) q^γ = 0 and so is the term
    term = torch.div(ce, q).nan_to_num_(0.0, posinf=0.0).mul_(torch.sub(s, p))
    return grad.add_(term.mul_(weight), alpha=gamma)


def _focal_compiled(z, y, alpha, gamma):
    """Loss and gradient with respect to the logits in one pass of the compiled kernel (CPU)."""
    loss, grad = (torch.empty(z.shape, dtype=z.dtype) for _ in range(2))  # (contiguous, as the kernel writes)
    _focal_kernel(z.detach().contiguous().view(-1).numpy(), y.detach().contiguous().view(-1).numpy(),
                  -1.0 if alpha is None else alpha, gamma, loss.view(-1).numpy(), grad.view(-1).numpy())
    return loss, grad


if numba is not None:
    # Not cached on disk (compiled at the first call, about 2 s per dtype): numba's cache only
    # notices changes to the file of the cached function, and _exp_negative lives in
    # _soft_nms_kernel.py (Soft-NMS's compiled kernel).

    @numba.njit(inline="always")
    def _log1p_unit(e):
        # log(1 + e) for e in [0, 1] in float64, within 3 ulp of libm's log1p and branch-free:
        # log1p(e) = 2 atanh(t) with t = e / (2 + e) = 2 t (1 + t^2/3 + t^4/5 + ...); t <= 1/3,
        # so sixteen terms (written out: a loop over a tuple of them stays scalar) leave a
        # truncation error below 2e-17 (relative)
        t = e / (2.0 + e)
        w = t * t
        series = 1.0 / 31.0
        series = series * w + 1.0 / 29.0
        series = series * w + 1.0 / 27.0
        series = series * w + 1.0 / 25.0
        series = series * w + 1.0 / 23.0
        series = series * w + 1.0 / 21.0
        series = series * w + 1.0 / 19.0
        series = series * w + 1.0 / 17.0
        series = series * w + 1.0 / 15.0
        series = series * w + 1.0 / 13.0
        series = series * w + 1.0 / 11.0
        series = series * w + 1.0 / 9.0
        series = series * w + 1.0 / 7.0
        series = series * w + 1.0 / 5.0
        series = series * w + 1.0 / 3.0
        series = series * w + 1.0 / 1.0
        return 2.0 * t * series

    @numba.njit(inline="always")
    def _focal_parts(logit, target):
        # p = σ(z), s = 1 - p (each without cancellation), q = 1 - p_t and CE, in float64
        x, t = np.float64(logit), np.float64(target)
        e = _exp_negative(-abs(x))                  # e^{-|z|}
        big = 1.0 / (1.0 + e)                       # σ(|z|)
        small = e * big                             # σ(-|z|)
        p = big if x >= 0 else small
        s = small if x >= 0 else big
        ce = max(x, 0.0) - x * t + _log1p_unit(e)   # max(z, 0) - z y + log(1 + e^{-|z|})
        return t, p, s, p * (1.0 - t) + s * t, ce

    @numba.njit(inline="always")
    def _focal_element(t, p, s, ce, weight, shape, alpha, gamma):
        # FL = α_t CE q^γ and ∂FL/∂z = α_t [(p - y) q^γ + γ CE (1 - 2y) q^{γ-1} p (1 - p)], given
        # weight = q^γ and shape = q^{γ-1} p (1 - p); p - y = p (1 - y) - (1 - p) y has no cancellation
        at = 1.0 if alpha < 0 else alpha * t + (1.0 - alpha) * (1.0 - t)
        return at * ce * weight, at * ((p * (1.0 - t) - s * t) * weight + gamma * ce * (1.0 - 2.0 * t) * shape)

    @numba.njit(error_model="numpy")  # (no ZeroDivisionError check: it would keep the loop scalar)
    def _focal_kernel(logits, targets, alpha, gamma, loss, grad):
        # One pass: reads a logit and a target, writes the loss and its gradient (alpha < 0:
        # no weighting). For gamma 0, 1, 2 the powers are products and the loop vectorises;
        # other gammas call pow.
        if gamma == 0.0 or gamma == 1.0 or gamma == 2.0:
            for i in range(logits.shape[0]):
                t, p, s, q, ce = _focal_parts(logits[i], targets[i])
                weight = 1.0 if gamma == 0.0 else q if gamma == 1.0 else q * q
                shape = 0.0 if gamma == 0.0 else p * s if gamma == 1.0 else q * p * s
                loss[i], grad[i] = _focal_element(t, p, s, ce, weight, shape, alpha, gamma)
        else:
            for i in range(logits.shape[0]):
                t, p, s, q, ce = _focal_parts(logits[i], targets[i])
                weight = q ** gamma
                # q^{γ-1} p (1 - p) = q^γ · p (1 - p) / q, the ratio in [0, 1]; 0 where q = 0
                shape = weight * (p * s / q) if q > 0.0 else 0.0
                loss[i], grad[i] = _focal_element(t, p, s, ce, weight, shape, alpha, gamma)
