r"""Watching a training run: gradient norms per layer, and the baselines a metric needs (the recipe chapters).

Backpropagation multiplies the gradient by one Jacobian per layer on its way
to the input,

.. math:: \frac{\partial L}{\partial h_l} = \frac{\partial L}{\partial h_L}
    \prod_{k=l+1}^{L} \frac{\partial h_k}{\partial h_{k-1}},

so if those factors are mostly below one the gradient *vanishes* towards the
input layers (deep sigmoid nets: :math:`\sigma' \le \tfrac14`), and if they are
above one it *explodes* (weights initialised too large, recurrent nets). A plot
of the gradient norm per layer, recorded with :class:`GradNormRecorder`, shows
both at a glance. A loss curve is only readable next to a human metric and a
baseline, so :func:`majority_baseline` and :func:`linear_baseline` give the
accuracy a model must beat.
"""
from __future__ import annotations

import torch
from torch import nn

from ._checks import check_tensor
from .harness import Batch, Callback, TrainState


def _layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """Modules that own parameters directly, in registration order, with those parameters."""
    out = []
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            out.append((name or type(module).__name__, params))
    return out


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    r"""The L2 norm of the current gradient of each layer, input layer first.

    A *layer* is a module that owns parameters directly (a ``Linear`` with its
    weight and bias, an ``RNN``, a ``BatchNorm``...); its norm is taken over all
    of them together,

    .. math:: \|g_l\| = \Bigl(\sum_{p \in \text{layer } l} \sum_i g_{p,i}^2\Bigr)^{1/2},

    the per-layer version of the global norm that ``clip_grad_norm_`` computes.
    Call it after ``loss.backward()``. Layers whose parameters have no gradient
    yet are left out. Checked against ``torch.linalg.vector_norm`` of the
    concatenated gradients in ``tests/test_gradients.py``.

    Args:
        model: the ``nn.Module`` whose parameters' ``.grad`` to read (only parameters
            with ``requires_grad`` count).

    Returns:
        ``{layer name: norm}`` (names as in ``model.named_modules()``, e.g. ``"0"``, ``"2"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names, norms = [], []
    for name, params in _layers(model):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            names.append(name)
            norms.append(nn.utils.get_total_norm(grads))
    return dict(zip(names, torch.stack(norms).tolist())) if norms else {}


class GradNormRecorder(Callback):
    """Record :func:`layer_grad_norms` at every step, as a :func:`~tricklib.harness.fit` callback or by hand.

    In :func:`~tricklib.harness.fit`, callbacks run after ``optimizer.step()``;
    the gradients are still there (``fit`` zeroes them at the start of the next
    step), but they are the gradients *after* any ``clip_grad_value`` /
    ``clip_grad_norm`` — the ones the optimiser used. ``history.step["grad_norm"]``
    keeps the global norm before clipping. In your own loop, call :meth:`record`
    right after ``loss.backward()`` to see the raw per-layer norms.

    Args:
        model: the model being trained.

    Attributes:
        norms: ``{layer name: [norm at step 1, norm at step 2, ...]}``.
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.norms: dict[str, list[float]] = {name: [] for name, _ in _layers(model)}

    def record(self) -> dict[str, float]:
        """Append the current per-layer norms (layers without a gradient get NaN) and return them."""
        current = layer_grad_norms(self.model)
        for name, values in self.norms.items():
            values.append(current.get(name, float("nan")))
        return current

    def on_step_end(self, state: TrainState) -> None:
        """Call :meth:`record` after each optimiser step of :func:`~tricklib.harness.fit`.

        Args:
            state: the loop's :class:`~tricklib.harness.TrainState` (not used: the
                gradients are read from the model given to the constructor).
        """
        self.record()

    def as_tensor(self) -> torch.Tensor:
        """``Tensor[steps, layers]`` of the recorded norms, columns in :attr:`norms` order."""
        return torch.tensor(list(self.norms.values()), dtype=torch.float64).T


@torch.no_grad()
def dead_fraction(model: nn.Module, x: torch.Tensor, *, activation: type[nn.Module] | tuple[type[nn.Module], ...] = nn.ReLU,
                  per_layer: bool = False, batch_size: int = 1024) -> float | dict[str, float]:
    r"""The fraction of "dead" units: those whose activation is :math:`\le 0` for every example of ``x``.

    A ReLU unit that outputs 0 on every input gets no gradient (:math:`\operatorname{ReLU}'(a) = 0`
    for :math:`a < 0`) and can never come back: a learning rate or an initialisation that is
    too large kills units this way. A *unit* is one channel (dimension 1) of an activation
    module's output: a column of ``[N, C]``, a feature map of ``[N, C, H, W]`` (dead when it is
    0 at every position of every example). Forward hooks read the outputs of every module of
    type ``activation``; the model is run in eval mode, in batches, and left as it was.

    Args:
        model: the network.
        x: inputs, ``Tensor[N, ...]`` (moved to the model's device batch by batch).
        activation: module type(s) whose outputs are units (default ``nn.ReLU``).
        per_layer: return ``{module name: fraction}`` instead of one fraction over all units.
        batch_size: examples per forward pass.

    Returns:
        The dead fraction over all units of all matching modules, or per module.

    Raises:
        ValueError: the model has no module of type ``activation``, or ``x`` is empty.
    """
    check_tensor("x", x)
    if len(x) == 0:
        raise ValueError("x is empty: a unit is dead only relative to some inputs")
    names = [name for name, module in model.named_modules() if isinstance(module, activation)]
    if not names:
        raise ValueError(f"the model has no {activation} module to count units in")
    alive: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module, inputs, output):
            fired = (output > 0).transpose(0, 1).reshape(output.shape[1], -1).any(dim=1)
            alive[name] = fired | alive[name] if name in alive else fired
        return record

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    was_training = model.training
    device = next((p.device for p in model.parameters()), x.device)
    try:
        model.eval()
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if per_layer:
        return {name: int((~alive[name]).sum()) / alive[name].numel() for name in names}
    units = torch.cat([alive[name] for name in names])
    return int((~units).sum()) / units.numel()


def majority_baseline(y_train: torch.Tensor, y_eval: torch.Tensor) -> float:
    """Accuracy on ``y_eval`` of always predicting the most frequent class of ``y_train``.

    The floor any classifier must clear: on 1:9 data it is already 0.9. Equals
    ``sklearn.dummy.DummyClassifier(strategy="most_frequent")`` (ties go to the
    smallest label), checked in the tests.

    Args:
        y_train: ``Tensor[N]`` integer class labels the majority is counted on, non-empty.
        y_eval: ``Tensor[M]`` integer class labels the constant prediction is scored on, non-empty.

    Returns:
        The accuracy, in [0, 1].
    """
    check_tensor("y_train", y_train, ndim=1)
    check_tensor("y_eval", y_eval, ndim=1)
    if len(y_train) == 0 or len(y_eval) == 0:
        raise ValueError("y_train and y_eval must be non-empty")
    majority = torch.bincount(y_train.long()).argmax()
    return (y_eval.long() == majority).double().mean().item()


def linear_baseline(train: Batch, val: Batch, *, C: float = 1.0, max_iter: int = 5000) -> float:
    """Accuracy on ``val`` of a multinomial logistic regression fitted on ``train``.

    scikit-learn's ``LogisticRegression`` (L2 penalty of strength ``1/C``, lbfgs)
    on the flattened inputs: the simplest *trained* model. A deep net that does not
    beat it is not using its depth (or is broken). Scale the inputs first.

    Args:
        train, val: ``(X, y)`` tensors; ``X`` is flattened to ``[N, -1]``.
        C: inverse regularisation strength.
        max_iter: lbfgs iterations (high, so it converges without a warning).
    """
    from sklearn.linear_model import LogisticRegression

    (X_tr, y_tr), (X_val, y_val) = train, val
    check_tensor("train X", X_tr)
    check_tensor("val X", X_val)
    if len(X_tr) != len(y_tr) or len(X_val) != len(y_val):
        raise ValueError("X and y of train and of val must have the same length")

    def numpy(t: torch.Tensor):
        return t.detach().cpu().flatten(1).double().numpy() if t.dim() > 1 else t.detach().cpu().numpy()

    clf = LogisticRegression(C=C, max_iter=max_iter).fit(numpy(X_tr), numpy(y_tr))
    return float(clf.score(numpy(X_val), numpy(y_val)))
