r"""Debugging a training run before tuning it (the recipe chapters of the book).

Checks from Karpathy's "A Recipe for Training Neural Networks" (2019), each a
plain function you can call from your own code or unit tests:

- *sanity checks before training*: :func:`expected_initial_loss`,
  :func:`init_final_bias`, :func:`overfit_one_batch`,
  :func:`input_independent_baseline`;
- *look at exactly what enters the net*: :func:`unnormalize`,
  :func:`describe_batch`, :func:`out_of_range`, :func:`show_batch`;
- *backprop as a dependency tracer*: :func:`dependency_matrix`,
  :func:`channel_dependency_matrix`, :func:`batch_leak`, :func:`assert_batch_independent`; and for
  custom layers :func:`gradcheck_module` and :func:`first_nonfinite`.

Tested in ``tests/test_debug.py``.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from ._checks import check_choice, check_int, check_range, check_tensor
from .harness import Batch, History, fit

BIAS_TASKS = ("regression", "binary", "multiclass")


# ---- sanity checks before training -------------------------------------------------------------------------

def expected_initial_loss(num_classes: int) -> float:
    r"""The cross-entropy a correctly initialised ``C``-class classifier starts at.

    A well-initialised network's logits are near zero, so its softmax is
    uniform, :math:`p_c = 1/C`, and the loss of every example is

    .. math:: \mathcal{L}_0 = -\log\frac{1}{C} = \log C

    (2.303 for 10 classes). A measured initial loss far above it means
    over-confident random logits: a badly scaled last layer (Karpathy 2019,
    "verify loss @ init"). Checked in the tests against ``F.cross_entropy`` of
    all-zero logits.

    Args:
        num_classes: ``C >= 2``.

    Returns:
        :math:`\log C` as a float.
    """
    num_classes = check_int("num_classes", num_classes, 2)
    return math.log(num_classes)


@torch.no_grad()
def init_final_bias(layer: nn.Linear, targets: torch.Tensor, task: str) -> torch.Tensor:
    r"""Set the bias of the last layer so that the untrained model predicts the data's prior.

    - ``"regression"``: :math:`b = \bar y`, the mean target (per output column),
      so the first steps are not spent moving the output from 0 to the mean.
    - ``"binary"`` (one logit, targets 0/1 with positive rate :math:`\pi`):
      :math:`b = \log\frac{\pi}{1-\pi}`, so :math:`\sigma(b) = \pi`
      (Lin et al. 2017 use it with :math:`\pi = 0.01` in RetinaNet).
    - ``"multiclass"`` (``C`` logits, class frequencies :math:`\pi_c`):
      :math:`b_c = \log \pi_c`, so :math:`\mathrm{softmax}(b) = \pi`.

    With small last-layer weights the initial loss is then the loss of the
    best input-independent prediction (the target variance, or the entropy
    :math:`H(\pi)`) instead of a much larger one (Karpathy 2019, "init well").
    The tests check that ``sigmoid``/``softmax`` of the bias recovers the
    class frequencies and that the loss of the bias alone equals the entropy.

    Args:
        layer: the final ``nn.Linear`` (must have a bias); modified in place.
        targets: training targets: ``Tensor[N]`` or ``Tensor[N, out]`` floats for
            regression, ``Tensor[N]`` of 0/1 for binary, ``Tensor[N]`` int64
            class indices for multiclass.
        task: ``"regression"`` | ``"binary"`` | ``"multiclass"``.

    Returns:
        A copy of the new bias.

    Raises:
        ValueError: a class never occurs (its log-prior would be :math:`-\infty`),
            targets that do not fit the task or the layer's ``out_features``.
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    if layer.bias is None:
        raise ValueError("layer must have a bias (bias=True)")
    check_tensor("targets", targets)
    check_choice("task", task, BIAS_TASKS)
    if len(targets) == 0:
        raise ValueError("targets must not be empty")
    out = layer.out_features
    if task == "regression":
        if not targets.is_floating_point():
            raise TypeError(f"regression targets must be floating point, got dtype {targets.dtype}")
        mean = targets.double().mean(0).reshape(-1)
        if mean.numel() != out:
            raise ValueError(f"targets have {mean.numel()} column(s) but the layer has out_features={out}")
        bias = mean
    elif task == "binary":
        check_tensor("targets", targets, ndim=1)
        if out != 1:
            raise ValueError(f"binary task needs a layer with out_features=1, got {out}")
        t = targets.double()
        if ((t != 0) & (t != 1)).any():
            raise ValueError("binary targets must be 0 or 1")
        pi = t.mean()
        if pi in (0, 1):
            raise ValueError(f"binary targets must contain both classes, got positive rate {pi.item():g}")
        bias = torch.log(pi / (1 - pi)).reshape(1)  # logit of the prior: sigmoid(b) = pi
    else:
        check_tensor("targets", targets, ndim=1)
        if targets.is_floating_point():
            raise TypeError(f"multiclass targets must be integer class indices, got dtype {targets.dtype}")
        if targets.min() < 0 or targets.max() >= out:
            raise ValueError(f"class indices must be in [0, {out - 1}] (out_features={out})")
        counts = torch.bincount(targets, minlength=out).double()
        if (counts == 0).any():
            missing = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"classes {missing} never occur in targets: their log-prior would be -inf")
        bias = torch.log(counts / counts.sum())  # softmax(log pi) = pi
    layer.bias.copy_(bias.to(layer.bias))
    return layer.bias.detach().clone()


def overfit_one_batch(model: nn.Module, batch: Batch, *, steps: int = 200, lr: float = 1e-2,
                      optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                      loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
                      ) -> torch.Tensor:
    r"""Train on one fixed batch and return the loss of every step.

    A network that can fit random labels (Zhang et al. 2017) can certainly
    memorise a handful of real examples: the loss must fall to about zero.
    If it stalls at a floor, something between the logits and the loss is
    wrong (Karpathy 2019, "overfit one batch"). A classic example is a softmax
    applied before ``F.cross_entropy``: the loss then cannot go below
    :math:`\log\bigl(1 + (C-1)/e\bigr)` (1.461 for ten classes) — the test
    plants it and checks that floor.

    Args:
        model: the model to check, put in ``train`` mode and trained in place.
        batch: ``(x, y)``, e.g. 8–32 examples of the real data.
        steps: optimisation steps (each on the whole batch).
        lr: learning rate.
        optimizer: ``optimizer(model.parameters(), lr=lr)`` builds it.
        loss_fn: ``loss_fn(model(x), y)``.

    Returns:
        ``Tensor[steps]`` float64: the loss *before* each step (entry 0 is the loss at init).
    """
    x, y = batch
    check_tensor("x", x)
    check_tensor("y", y)
    if len(x) != len(y):
        raise ValueError(f"batch x and y must have the same length, got {len(x)} and {len(y)}")
    steps = check_int("steps", steps, 1)
    check_range("lr", lr, 0.0, low_open=True)
    model.train()
    opt = optimizer(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).double().cpu()


def input_independent_baseline(make_model: Callable[[], nn.Module], train: Batch, val: Batch, *,
                               seed: int = 0, **fit_kwargs) -> dict[str, History]:
    r"""Train the same model twice: on the real inputs and on all-zero inputs.

    The zeroed run can only learn the label prior, so its loss tends to the
    entropy of the labels, :math:`H(\pi) = -\sum_c \pi_c \log \pi_c`, and its
    accuracy to the majority-class rate. The real run must beat it clearly;
    if it does not, the model ignores its input (a pipeline that feeds the
    wrong tensor, inputs scaled to nothing, labels misaligned with inputs...).
    Karpathy 2019, "input-independent baseline". The test checks that real
    digits beat the baseline and that with labels shuffled (no information in
    the inputs) they do not.

    In your own loop the whole check is ``x = torch.zeros_like(x)`` in the
    training *and* validation batches of a second run.

    Args:
        make_model: builds a fresh model; called once per run after
            ``torch.manual_seed(seed)``, so both runs start from the same weights.
        train, val: ``(X, y)`` tensors.
        seed: seeds the initial weights and the batch order of both runs.
        **fit_kwargs: passed to :func:`tricklib.harness.fit` (``epochs`` is required).

    Returns:
        ``{"real": History, "zeroed": History}``; the validation metrics of the
        zeroed run are computed on zeroed validation inputs.
    """
    if isinstance(make_model, nn.Module) or not callable(make_model):
        raise TypeError(f"make_model must be a function that builds a fresh model (e.g. lambda: Net()), "
                        f"got {type(make_model).__name__}")
    (X, y), (Xv, yv) = train, val
    check_tensor("train X", X, floating=True)
    check_tensor("val X", Xv, floating=True)
    runs = {"real": (train, val), "zeroed": ((torch.zeros_like(X), y), (torch.zeros_like(Xv), yv))}
    histories = {}
    for name, (tr, va) in runs.items():
        torch.manual_seed(seed)
        histories[name] = fit(make_model(), tr, va, seed=seed, **fit_kwargs)
    return histories


# ---- look at exactly what enters the net -------------------------------------------------------------------

def _channel_stats(name: str, values: Sequence[float] | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` as a float tensor of shape ``[C, 1, 1]`` matching the channels of ``x`` (``[..., C, H, W]``)."""
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    if x.dim() < 3:
        raise ValueError(f"x must be an image or batch of images [..., C, H, W], got shape {tuple(x.shape)}")
    if t.numel() not in (1, x.shape[-3]):
        raise ValueError(f"{name} must have 1 or C={x.shape[-3]} values, got {t.numel()}")
    return t.reshape(-1, 1, 1)


def unnormalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
                ) -> torch.Tensor:
    r"""Undo ``torchvision.transforms.Normalize(mean, std)``: back to pixel values.

    .. math:: x_{\text{pixel}} = x \cdot \sigma_c + \mu_c \qquad\text{per channel } c

    Apply it to exactly the tensor that enters ``model(x)``: if the pipeline
    normalised once, the result lies in the pixel range (e.g. [0, 1]); if it
    normalised twice, or not at all, it does not. The test checks it inverts
    ``torchvision.transforms.Normalize`` for 1 and 3 channels, batched or not.

    Args:
        x: ``Tensor[..., C, H, W]`` floating point.
        mean, std: one value per channel (or one for all); ``std > 0``.

    Returns:
        A new tensor of the same shape and dtype.
    """
    check_tensor("x", x, floating=True)
    m = _channel_stats("mean", mean, x)
    s = _channel_stats("std", std, x)
    if (s <= 0).any():
        raise ValueError(f"std must be > 0, got {s.flatten().tolist()}")
    return x * s + m


def describe_batch(x: torch.Tensor) -> pd.DataFrame:
    """Per-channel mean, std, min and max of a batch ``Tensor[B, C, H, W]`` (a table to read next to the images).

    A batch normalised once has mean ≈ 0 and std ≈ 1 per channel; pixel values
    in [0, 1] have mean ≈ 0.2–0.5 and std < 0.5; a batch scaled twice (``/255``
    twice, normalised twice) stands out at once. Checked against ``torch.std_mean``
    in the tests.

    Args:
        x: ``Tensor[B, C, H, W]`` floating point, the batch as the model receives it.

    Returns:
        A ``pandas.DataFrame`` with one row per channel and columns ``mean``, ``std``
        (unbiased), ``min`` and ``max``.
    """
    check_tensor("x", x, ndim=4, floating=True)
    per_channel = x.detach().transpose(0, 1).flatten(1).double()
    std, mean = torch.std_mean(per_channel, dim=1)
    frame = pd.DataFrame({"mean": mean.cpu().numpy(), "std": std.cpu().numpy(),
                          "min": per_channel.amin(1).cpu().numpy(), "max": per_channel.amax(1).cpu().numpy()})
    frame.index = [f"channel {c}" for c in range(x.shape[1])]
    return frame


def out_of_range(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0), tol: float = 1e-3
                 ) -> torch.Tensor:
    """Which images of a decoded batch ``Tensor[B, ...]`` have a pixel outside ``value_range`` (± ``tol``).

    After :func:`unnormalize`, every pixel of a correct pipeline is in the range
    the data came in; a pixel outside it means a scaling or normalisation bug.

    Args:
        images: ``Tensor[B, ...]`` floating point, at least one image.
        value_range: ``(low, high)`` with ``low < high``, the range the pixels should lie
            in; default ``(0.0, 1.0)``.
        tol: slack allowed on either side of the range (rounding), ``>= 0``.

    Returns:
        ``Tensor[B]`` bool.
    """
    check_tensor("images", images, floating=True)
    low, high = value_range
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    check_range("tol", tol, 0.0)
    if images.dim() == 0 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
    flat = images.detach().flatten(1)
    return (flat.amin(1) < low - tol) | (flat.amax(1) > high + tol)


def show_batch(x: torch.Tensor, y: torch.Tensor | None = None, *,
               mean: Sequence[float] | torch.Tensor | None = None, std: Sequence[float] | torch.Tensor | None = None,
               masks: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
               class_names: Sequence[str] | None = None, n: int = 16, ncols: int = 8,
               value_range: tuple[float, float] = (0.0, 1.0), axes: Sequence[Axes] | None = None,
               title: str | None = None) -> Figure:
    r"""Decode the tensor that enters ``model(x)`` back into a grid of images with their labels.

    Karpathy (2019): "the unambiguously correct place to visualize your data is
    immediately before your ``y_hat = model(x)``". Each image is
    :func:`unnormalize`\ d and drawn with a *fixed* colour scale ``value_range``
    (an auto-scaled ``imshow`` would silently undo a scaling bug); images with
    pixels outside it (:func:`out_of_range`) get a red frame and their range in
    the title. Labels are drawn as titles, masks as a red contour, boxes as
    rectangles, so a label that does not match its image is visible.

    Args:
        x: ``Tensor[B, C, H, W]`` (``C`` = 1 or 3) or ``Tensor[B, H, W]``: the model's input.
        y: ``Tensor[B]`` class indices shown as titles (optional).
        mean, std: the normalisation the pipeline applied (both or neither).
        masks: ``Tensor[B, H, W]`` target masks (optional).
        boxes: ``Tensor[B, 4]`` one ``(x1, y1, x2, y2)`` target box per image, in pixels (optional).
        class_names: names for the class indices in ``y``.
        n: show the first ``n`` images at most.
        ncols: images per row of a new figure.
        value_range: the pixel range of the decoded data.
        axes: draw into these axes (at least ``min(n, B)``) instead of a new figure.
        title: figure title.

    Returns:
        The ``Figure``.
    """
    check_tensor("x", x, floating=True)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be [B, H, W] or [B, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if n < 1 or ncols < 1:
        raise ValueError(f"n and ncols must be >= 1, got n={n}, ncols={ncols}")
    count = min(n, len(x))
    for name, t, ndim in (("y", y, 1), ("masks", masks, 3), ("boxes", boxes, 2)):
        if t is not None:
            check_tensor(name, t, ndim=ndim)
            if len(t) != len(x):
                raise ValueError(f"{name} must have one entry per image ({len(x)}), got {len(t)}")
    images = x[:count].detach().float().cpu()
    if mean is not None:
        images = unnormalize(images, mean, std)
    flagged = out_of_range(images, value_range)
    if axes is None:
        rows = -(-count // ncols)
        fig, grid = plt.subplots(rows, min(ncols, count), figsize=(1.3 * min(ncols, count), 1.45 * rows),
                                 squeeze=False, layout="constrained")
        axes = list(grid.flat)
    else:
        axes = list(axes)
        if len(axes) < count:
            raise ValueError(f"need at least {count} axes, got {len(axes)}")
        fig = axes[0].figure
    low, high = value_range
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        img = images[i].permute(1, 2, 0)
        shown = ((img - low) / (high - low)).clamp(0, 1)
        ax.imshow(shown.squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if masks is not None:
            ax.contour(masks[i].detach().float().cpu().numpy(), levels=[0.5], colors="red", linewidths=1.0)
        if boxes is not None:
            x1, y1, x2, y2 = boxes[i].detach().cpu().tolist()
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="red", lw=1))
        label = ""
        if y is not None:
            k = int(y[i])
            label = class_names[k] if class_names is not None else str(k)
        if flagged[i]:
            label += f"\n[{img.min().item():.1f}, {img.max().item():.1f}]"
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2.5)
        ax.set_title(label, fontsize=9, color="red" if flagged[i] else "black")
    if title is not None:
        fig.suptitle(title, fontsize=10)
    return fig


# ---- backprop as a dependency tracer -----------------------------------------------------------------------

@contextlib.contextmanager
def _buffers_restored(model: Callable) -> Iterator[None]:
    """Run a forward pass for inspection without changing the model's buffers (BatchNorm running statistics)."""
    saved = ([(b, b.detach().clone()) for b in model.buffers()] if isinstance(model, nn.Module) else [])
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _grads_per_output(out: torch.Tensor, x: torch.Tensor, grad_outputs: torch.Tensor,
                      vectorize: bool) -> torch.Tensor:
    """``d<grad_outputs[k], out>/dx`` for every ``k``, stacked: one batched backward pass, or a loop."""
    if vectorize:
        (grads,) = torch.autograd.grad(out, x, grad_outputs, is_grads_batched=True, allow_unused=True,
                                       materialize_grads=True)
        return grads
    return torch.stack([torch.autograd.grad(out, x, g, retain_graph=True, allow_unused=True,
                                            materialize_grads=True)[0] for g in grad_outputs])


def dependency_matrix(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                      direction: torch.Tensor | None = None, vectorize: bool = True) -> torch.Tensor:
    r"""Which inputs of a batch each sample's output depends on, traced by backprop.

    .. math:: D_{ij} = \Bigl\lVert \frac{\partial\, \langle v, f(x)_i \rangle}{\partial x_j} \Bigr\rVert_2,
              \qquad i, j = 1..B

    For a model that treats samples independently, :math:`D` is diagonal:
    sample *i*'s output has no gradient path to any other sample's input.
    Off-diagonal entries reveal mixing across the batch — a ``view`` where a
    ``permute`` was meant, BatchNorm in training mode (legitimately), a
    reduction over the wrong axis (Karpathy 2019, "use backprop to chart
    dependencies"). ``v`` is a fixed random direction rather than all ones,
    so outputs that always sum to a constant (a softmax) cannot hide a
    dependency. One forward pass; the :math:`B` backward passes run batched
    (``is_grads_batched``) or, with ``vectorize=False``, in a loop (for custom
    backward functions that ``vmap`` cannot trace). The model is run in its
    current train/eval mode; its buffers (running statistics) are restored.
    The tests compare it with the full Jacobian from
    ``torch.autograd.functional.jacobian``.

    Args:
        model: maps ``Tensor[B, ...]`` to ``Tensor[B, ...]``.
        x: the input batch ``Tensor[B, ...]`` (floating point).
        direction: ``v``, broadcastable to one sample's output ``f(x)_i``;
            default a fixed standard-normal draw (seed 0).
        vectorize: batch the backward passes (default) or loop over them.

    Returns:
        ``Tensor[B, B]`` (float32 or the dtype of ``x``), row *i* = output sample, column *j* = input sample.
    """
    check_tensor("x", x, floating=True)
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    x = x.detach().requires_grad_()
    with _buffers_restored(model), torch.enable_grad():
        out = model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        if out.dim() == 0 or len(out) != len(x):
            raise ValueError(f"model output must have the batch size {len(x)} first, got shape {tuple(out.shape)}")
        if direction is None:
            direction = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        check_tensor("direction", direction, floating=True)
        v = direction.to(out).expand(out.shape[1:])
        B = len(x)
        # grad_outputs[i] = v placed on sample i and 0 elsewhere: backward pass i gives d<v, f(x)_i>/dx
        selector = torch.eye(B, dtype=out.dtype, device=out.device).view(B, B, *[1] * (out.dim() - 1))
        grad_outputs = selector * v
        grads = _grads_per_output(out, x, grad_outputs, vectorize)
    return grads.flatten(2).norm(dim=2).detach()


def channel_dependency_matrix(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                              direction: torch.Tensor | None = None, vectorize: bool = True) -> torch.Tensor:
    r"""Which input channels each output channel depends on, traced by backprop.

    .. math:: D_{oi} = \Bigl\lVert \frac{\partial\, \langle v_{:,o}, f(x)_{:,o} \rangle}{\partial x_{:,i}}
              \Bigr\rVert_2, \qquad o = 1..C_\text{out},\; i = 1..C_\text{in}

    The channel counterpart of :func:`dependency_matrix`: the norm is taken over the batch
    and every spatial position of input channel *i*. :math:`D_{oi} = 0` when output
    channel *o* has no gradient path from input channel *i*. A stack of group
    convolutions (``groups=G``) gives a block-diagonal :math:`D` — groups never mix — and
    ShuffleNet's channel shuffle between them (Zhang et al. 2018) fills it in. ``v`` is a
    fixed random direction rather than all ones, so that contributions cannot cancel
    in a sum. One forward pass and :math:`C_\text{out}` backward passes, batched
    (``is_grads_batched``) or, with ``vectorize=False``, in a loop. The model is run in
    its current train/eval mode; its buffers (running statistics) are restored. The tests
    compare it with the full Jacobian from ``torch.autograd.functional.jacobian``
    (``tests/test_channel_shuffle.py``).

    Args:
        model: maps ``Tensor[N, C_in, *]`` to ``Tensor[N', C_out, *']`` (channels second).
        x: the input ``Tensor[N, C_in, *]`` (floating point).
        direction: ``v``, broadcastable to the output ``f(x)``; default a fixed
            standard-normal draw (seed 0) of the output's shape.
        vectorize: batch the backward passes (default) or loop over them.

    Returns:
        ``Tensor[C_out, C_in]`` (float32 or the dtype of ``x``), row *o* = output channel,
        column *i* = input channel.
    """
    check_tensor("x", x, floating=True)
    if x.dim() < 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must have shape [N, C, *] with N, C >= 1, got {tuple(x.shape)}")
    x = x.detach().requires_grad_()
    with _buffers_restored(model), torch.enable_grad():
        out = model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        if out.dim() < 2:
            raise ValueError(f"model output must have shape [N, C, *], got {tuple(out.shape)}")
        if direction is None:
            direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        check_tensor("direction", direction, floating=True)
        v = direction.to(out).expand(out.shape)
        C = out.shape[1]
        # grad_outputs[o] = v on output channel o and 0 elsewhere: backward pass o gives d<v, f(x)_o>/dx
        selector = torch.eye(C, dtype=out.dtype, device=out.device).view(C, 1, C, *[1] * (out.dim() - 2))
        grad_outputs = selector * v
        grads = _grads_per_output(out, x, grad_outputs, vectorize)
    # grads: [C_out, N, C_in, *] -> norm over the batch and the positions of each input channel
    return grads.transpose(1, 2).flatten(2).norm(dim=2).detach()


def batch_leak(matrix: torch.Tensor) -> float:
    r"""How much a sample's output depends on *other* samples: :math:`\max_{i\ne j} D_{ij} / \max_i D_{ii}`.

    0 for a model that treats samples independently; BatchNorm in training mode
    gives a few times :math:`1/B` (the largest of :math:`B^2 - B` couplings of order
    :math:`1/B`: measured between :math:`1.7/B` and :math:`5/B` for a Linear-BatchNorm-ReLU-Linear
    MLP at :math:`B` = 4 to 128, 0.22 to 0.43 at :math:`B = 8`; ``tests/test_debug.py``); a
    batch-mixing bug gives order 1.

    Args:
        matrix: ``Tensor[B, B]`` from :func:`dependency_matrix`, ``B >= 2``.

    Raises:
        ValueError: if no output depends on its own input (the diagonal is zero).
    """
    check_tensor("matrix", matrix, ndim=2, floating=True)
    B = len(matrix)
    if matrix.shape != (B, B) or B < 2:
        raise ValueError(f"matrix must be square with B >= 2, got shape {tuple(matrix.shape)}")
    diag = matrix.diagonal()
    if diag.max() <= 0:
        raise ValueError("no output depends on its own input (zero diagonal): the check cannot be scaled")
    off = matrix.masked_fill(torch.eye(B, dtype=torch.bool, device=matrix.device), 0)
    return float(off.max() / diag.max())


def assert_batch_independent(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                             tol: float = 1e-6, vectorize: bool = True) -> None:
    """Raise ``AssertionError`` if any sample's output depends on another sample's input.

    A one-line unit test for a model: ``assert_batch_independent(model.eval(), x)``.
    Uses :func:`dependency_matrix` and :func:`batch_leak`; ``tol`` allows
    floating-point noise. Use a batch of at least 2 *distinct* samples: with
    ``B = 1`` a ``view``/``permute`` mix-up is the identity and nothing can be seen.

    Args:
        model: maps ``Tensor[B, ...]`` to ``Tensor[B, ...]`` (put it in the mode to check,
            e.g. ``model.eval()``).
        x: the input batch ``Tensor[B, ...]`` (floating point), ``B >= 2``.
        tol: the largest :func:`batch_leak` allowed (off-diagonal dependence relative to
            the largest diagonal entry), ``>= 0``.
        vectorize: as in :func:`dependency_matrix`: batch the backward passes (default)
            or loop over them.

    Raises:
        ValueError: ``B < 2``.
        AssertionError: the leak exceeds ``tol``; the message names the worst pairs.
    """
    check_tensor("x", x, floating=True)
    if x.dim() == 0 or len(x) < 2:
        raise ValueError(f"x must hold at least 2 samples to see a dependency between them, got shape {tuple(x.shape)}")
    check_range("tol", tol, 0.0)
    D = dependency_matrix(model, x, vectorize=vectorize)
    leak = batch_leak(D)
    if leak > tol:
        off = D.masked_fill(torch.eye(len(D), dtype=torch.bool, device=D.device), 0)
        worst = off.flatten().topk(min(3, off.numel())).indices
        pairs = ", ".join(f"output {int(k) // len(D)} ← input {int(k) % len(D)}" for k in worst)
        raise AssertionError(f"samples are not independent: leak {leak:.3g} > tol {tol:g} (worst: {pairs})")


def gradcheck_module(module: nn.Module | Callable[..., torch.Tensor], *inputs: torch.Tensor,
                     check_params: bool = True, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
                     raise_exception: bool = False) -> bool:
    r"""``torch.autograd.gradcheck`` of a layer in float64, w.r.t. its inputs *and* its parameters.

    Compares the analytical backward with central finite differences,

    .. math:: \frac{\partial f}{\partial \theta_k} \approx
              \frac{f(\theta + \epsilon e_k) - f(\theta - \epsilon e_k)}{2\epsilon},

    whose error is :math:`O(\epsilon^2)` plus rounding :math:`O(u/\epsilon)`:
    with float64 (:math:`u \approx 10^{-16}`) and :math:`\epsilon = 10^{-6}`
    both are tiny; in float32 (:math:`u \approx 10^{-7}`) the rounding alone
    exceeds the tolerance, which is why the check must run in float64. A copy
    of ``module`` is converted (the original is left alone) and its parameters
    are passed as extra inputs through ``torch.func.functional_call``, so a wrong
    weight gradient is caught too. The tests plant a wrong backward in a custom
    ``autograd.Function`` and check that it fails.

    Args:
        module: an ``nn.Module`` or a function of tensors.
        *inputs: example inputs; floating ones are converted to float64 and checked.
        check_params: also check the gradients of the module's parameters.
        eps, atol, rtol: as in ``torch.autograd.gradcheck``.
        raise_exception: raise with gradcheck's detailed report instead of returning ``False``.

    Returns:
        ``True`` if analytical and numerical gradients agree.
    """
    if not callable(module):
        raise TypeError(f"module must be an nn.Module or a function, got {type(module).__name__}")
    if not inputs:
        raise ValueError("give at least one example input")
    for k, t in enumerate(inputs):
        check_tensor(f"inputs[{k}]", t)
    check_range("eps", eps, 0.0, low_open=True)
    inputs64 = tuple(t.detach().double().requires_grad_() if t.is_floating_point() else t for t in inputs)
    if isinstance(module, nn.Module):
        copy64 = copy.deepcopy(module).double()
        named = dict(copy64.named_parameters()) if check_params else {}
    else:
        copy64, named = module, {}
    names = list(named)
    params64 = tuple(named[n].detach().clone().requires_grad_() for n in names)
    if not any(t.requires_grad for t in inputs64) and not params64:
        raise ValueError("nothing to check: no floating-point input and no parameter")

    def f(*args: torch.Tensor) -> torch.Tensor:
        xs, ps = args[:len(inputs64)], args[len(inputs64):]
        if isinstance(copy64, nn.Module):
            return torch.func.functional_call(copy64, dict(zip(names, ps)), xs)
        return copy64(*xs)

    return torch.autograd.gradcheck(f, inputs64 + params64, eps=eps, atol=atol, rtol=rtol,
                                    raise_exception=raise_exception)


def first_nonfinite(model: nn.Module, *inputs: torch.Tensor) -> str | None:
    """Name of the first submodule whose output holds a NaN or infinity, in the order of the forward pass.

    Forward hooks on every submodule check each output as it is produced, so the
    culprit is the innermost module where the first NaN/inf appears — e.g. a
    normalisation dividing by :math:`\\sqrt{\\mathrm{var}}` without :math:`\\epsilon`
    on a constant input, or ``log(softmax(z))`` instead of ``log_softmax(z)``.
    (For NaNs that appear only in the backward pass, use
    ``torch.autograd.detect_anomaly``.) Runs without gradients; buffers are restored.

    Args:
        model: the ``nn.Module`` to run, in its current train/eval mode.
        *inputs: the arguments of ``model``'s forward, as tensors.

    Returns:
        ``"<input>"`` if an input is already non-finite, the qualified module name
        (as in ``model.named_modules()``; ``"<model>"`` for code in the top-level
        ``forward`` itself), or ``None`` if every output is finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for k, t in enumerate(inputs):
        check_tensor(f"inputs[{k}]", t)
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in inputs):
        return "<input>"
    found: list[str] = []

    def nonfinite(out: object) -> bool:
        if isinstance(out, torch.Tensor):
            return out.is_floating_point() and not bool(torch.isfinite(out).all())
        if isinstance(out, (tuple, list)):
            return any(nonfinite(o) for o in out)
        if isinstance(out, dict):
            return any(nonfinite(o) for o in out.values())
        return False

    def hook(name: str) -> Callable:
        def record(_module: nn.Module, _args: object, out: object) -> None:
            if not found and nonfinite(out):
                found.append(name or "<model>")
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()]
    try:
        with _buffers_restored(model), torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
