r"""Optimiser tricks as plain PyTorch (the optimisation chapters of the book).

- :func:`adam_step`: one Adam step written out, with weight decay either as L2
  inside the gradient (``torch.optim.Adam(weight_decay=λ)``) or decoupled
  (``torch.optim.AdamW``), so the two can be read side by side.
- :func:`param_groups`: weight decay on conv/linear weights only, not on biases
  or normalisation layers ("no bias decay"), as two parameter groups for any
  ``torch.optim`` optimiser::

      optimizer = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=3e-4)

- :func:`flood`: keep the training loss from going below a flood level ``b``::

      loss = flood(F.cross_entropy(model(x), y), b=0.05)

Each one is checked in ``tests/test_optim.py`` (against ``torch.optim.Adam`` /
``torch.optim.AdamW`` and against its defining formula).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_int, check_range, check_tensor

#: Normalisation layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm); their
#: scales and shifts are never decayed by :func:`param_groups`.
NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.LocalResponseNorm,
)
#: Embedding tables, decayed by :func:`param_groups` only with ``decay_embeddings=True``.
EMBEDDING_LAYERS = (nn.Embedding, nn.EmbeddingBag)


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
              step: int, *, lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              weight_decay: float = 0.0, decoupled: bool = True) -> None:
    r"""One Adam step on one tensor, in place, with L2 or decoupled weight decay.

    With gradient :math:`g`, step :math:`t \ge 1`, rate :math:`\eta` and decay :math:`\lambda`
    (Kingma & Ba 2015, "Adam"; Loshchilov & Hutter 2019, "Decoupled Weight Decay
    Regularization"):

    .. math::
        g &\leftarrow g + \lambda\theta \quad\text{(only if not decoupled: L2 inside the gradient)}\\
        m &\leftarrow \beta_1 m + (1-\beta_1)\,g,\qquad v \leftarrow \beta_2 v + (1-\beta_2)\,g^2\\
        \hat m &= m/(1-\beta_1^t),\qquad \hat v = v/(1-\beta_2^t)\\
        \theta &\leftarrow \theta - \eta\Bigl(\frac{\hat m}{\sqrt{\hat v}+\epsilon}
                 + \lambda\theta\,[\text{decoupled}]\Bigr)

    With L2 the decay term :math:`\lambda\theta` passes through the division by
    :math:`\sqrt{\hat v}`, so weights with large gradients are decayed *less*;
    decoupled, every weight shrinks by the same factor :math:`1-\eta\lambda`.

    Args:
        param: the weights :math:`\theta`, updated in place.
        grad: their gradient :math:`g` (same shape); not modified.
        exp_avg, exp_avg_sq: the moment buffers :math:`m, v` (same shape, start at
            zero), updated in place.
        step: the number of this step, counting from 1 (for the bias corrections).
        lr, betas, eps: :math:`\eta`, :math:`(\beta_1, \beta_2)`, :math:`\epsilon` as in ``torch.optim.Adam``.
            ``lr`` may also be a tensor that broadcasts to ``param``: with ``M`` models' weights
            stacked along dimension 0 (``param`` of shape ``[M, ...]``), ``lr`` of shape
            ``[M, 1, ..., 1]`` trains each model at its own rate in one call — each slice
            follows ``torch.optim.Adam`` at its rate (``tests/test_optim.py``).
        weight_decay: :math:`\lambda \ge 0`.
        decoupled: ``True`` gives ``torch.optim.AdamW``, ``False`` gives
            ``torch.optim.Adam(weight_decay=λ)``; the tests check both, step by step.
    """
    for name, t in (("param", param), ("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        check_tensor(name, t, floating=True)
        if t.shape != param.shape:
            raise ValueError(f"{name} must have the shape of param {tuple(param.shape)}, got {tuple(t.shape)}")
    step = check_int("step", step, 1)  # (steps count from 1)
    if isinstance(lr, torch.Tensor):
        check_tensor("lr", lr, floating=True)
        try:
            grows = torch.broadcast_shapes(lr.shape, param.shape) != param.shape
        except RuntimeError:
            grows = True
        if grows:
            raise ValueError(f"a tensor lr must broadcast to param's shape {tuple(param.shape)}, got {tuple(lr.shape)}")
        if not bool(((lr >= 0) & lr.isfinite()).all()):
            raise ValueError("lr must be finite and >= 0 everywhere")
    else:
        check_range("lr", lr, 0.0)
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_range("betas[0]", betas[0], 0.0, 1.0, high_open=True)
    check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)
    check_range("eps", eps, 0.0)
    check_range("weight_decay", weight_decay, 0.0)
    beta1, beta2 = betas
    if decoupled:
        param.mul_(1 - lr * weight_decay)          # θ ← θ − ηλθ, outside the adaptive scaling
    else:
        grad = grad + weight_decay * param         # L2: g ← g + λθ, scaled by 1/√v̂ below
    exp_avg.lerp_(grad, 1 - beta1)                 # m ← β1 m + (1 − β1) g
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # θ ← θ − η m̂ / (√v̂ + ε), the bias corrections folded into the step size and the denominator
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    if isinstance(lr, torch.Tensor):               # one rate per slice: the same update, broadcast
        param.sub_(exp_avg / denom * (lr / (1 - beta1**step)))
    else:
        param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))


def param_groups(model: nn.Module, weight_decay: float, *,
                 decay_embeddings: bool = False) -> list[dict[str, object]]:
    r"""Split a model's parameters into a decayed and a non-decayed group ("no bias decay").

    He et al. 2019 ("Bag of Tricks for Image Classification with Convolutional
    Neural Networks") apply weight decay :math:`\lambda` only to the weights of
    convolutions and fully connected layers: biases and the :math:`\gamma, \beta`
    of normalisation layers are left free, because shrinking them towards zero
    does not restrict the function class (a norm layer's output scale is set by
    :math:`\gamma` alone) and can only hurt. The rule used here:

    - decayed: trainable parameters with two or more dimensions (conv, linear,
      attention and recurrent weight matrices) that do not belong to a
      normalisation layer (:data:`NORM_LAYERS`) or, unless ``decay_embeddings``,
      an embedding (:data:`EMBEDDING_LAYERS`);
    - not decayed: everything else that is trainable (biases, norm :math:`\gamma`
      and :math:`\beta` of any shape, embeddings, scalars such as PReLU slopes).

    Parameters with ``requires_grad=False`` are left out; a parameter shared by
    several modules (tied weights) is placed by the first module that holds it.

    Args:
        model: any ``nn.Module``.
        weight_decay: :math:`\lambda \ge 0` for the decayed group.
        decay_embeddings: also decay embedding tables.

    Returns:
        Parameter groups for any ``torch.optim`` optimiser:
        ``[{"params": [...], "weight_decay": λ, "param_names": [...]},
        {"params": [...], "weight_decay": 0.0, "param_names": [...]}]``, empty
        groups dropped. ``tests/test_optim.py`` checks the membership on a model
        with Linear, Conv, BatchNorm, LayerNorm, GroupNorm and Embedding layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_range("weight_decay", weight_decay, 0.0)
    if not math.isfinite(weight_decay):
        raise ValueError(f"weight_decay must be finite, got {weight_decay}")
    seen: set[int] = set()
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_LAYERS)
        is_frozen_table = isinstance(module, EMBEDDING_LAYERS) and not decay_embeddings
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full_name = f"{module_name}.{name}" if module_name else name
            wants_decay = p.dim() >= 2 and not is_norm and not is_frozen_table
            (decay if wants_decay else no_decay).append((full_name, p))
    if not decay and not no_decay:
        raise ValueError("model has no trainable parameters")
    groups = [{"params": [p for _, p in ps], "weight_decay": wd, "param_names": [n for n, _ in ps]}
              for ps, wd in ((decay, float(weight_decay)), (no_decay, 0.0))]
    return [g for g in groups if g["params"]]


def flood(loss: torch.Tensor, b: float) -> torch.Tensor:
    r"""Flooding (Ishida et al. 2020, "Do We Need Zero Training Loss After Achieving Zero Training Error?").

    .. math:: \tilde J(\theta) = |J(\theta) - b| + b

    Above the flood level :math:`b` nothing changes (:math:`\tilde J = J`, same
    gradient); below it the gradient is :math:`-\nabla J`, so the optimiser
    climbs back up: the training loss hovers around :math:`b` instead of going
    to zero. Apply it to the mini-batch *mean* loss, as in the paper (on a
    per-example loss it floods each example separately). At exactly
    :math:`J=b` the gradient is zero. The paper's losses are non-negative (cross-entropy,
    squared error); :math:`b = 0` turns flooding off and returns ``loss`` itself, also for
    a loss that can be negative (where :math:`|J| \ne J`).

    Args:
        loss: the training loss (a floating-point tensor, usually a scalar).
        b: the flood level, :math:`b \ge 0` and finite (:math:`b=0`: the plain loss).

    Returns:
        The flooded loss, same shape and dtype as ``loss``. Checked in the tests
        against ``(loss - b).abs() + b`` (values and gradients) and for the
        sign flip of the gradient below ``b``.
    """
    check_tensor("loss", loss, floating=True)
    check_range("b", b, 0.0)
    if not math.isfinite(b):
        raise ValueError(f"b must be finite, got {b}")
    if b == 0:
        return loss
    return (loss - b).abs() + b
