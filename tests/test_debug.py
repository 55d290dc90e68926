"""tricklib.debug: the Part 1 checks, each against a reference or a planted bug it must catch."""
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import Normalize

from tricklib import (assert_batch_independent, batch_leak, dependency_matrix, describe_batch, digits,
                      expected_initial_loss, first_nonfinite, gradcheck_module, init_final_bias,
                      input_independent_baseline, out_of_range, overfit_one_batch, show_batch, unnormalize)

matplotlib.use("Agg")


# --- planted bugs and their fixes -----------------------------------------------------------------------------
class SeqFirstGRU(nn.Module):
    """Classifies sequences ``[B, T, C]`` with a sequence-first GRU; ``bug=True`` reshapes with ``view``."""

    def __init__(self, bug: bool, channels: int = 5, hidden: int = 6):
        super().__init__()
        self.bug = bug
        self.gru = nn.GRU(channels, hidden)
        self.fc = nn.Linear(hidden, 3)

    def forward(self, x):
        B, T, C = x.shape
        z = x.view(T, B, C) if self.bug else x.permute(1, 0, 2)
        out, _ = self.gru(z)
        return self.fc(out[-1])


class LayerNormFn(torch.autograd.Function):
    """LayerNorm over the last axis with a hand-written backward; ``forget_sigma`` plants the classic bug."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, forget_sigma):
        mu = x.mean(-1, keepdim=True)
        rstd = (x.var(-1, unbiased=False, keepdim=True) + eps).rsqrt()
        xhat = (x - mu) * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.forget_sigma = forget_sigma
        return xhat * weight + bias

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, weight = ctx.saved_tensors
        gxhat = g * weight
        gx = gxhat - gxhat.mean(-1, keepdim=True)
        if not ctx.forget_sigma:  # sigma depends on x too
            gx = gx - xhat * (gxhat * xhat).mean(-1, keepdim=True)
        reduce_dims = tuple(range(g.dim() - 1))
        return rstd * gx, (g * xhat).sum(reduce_dims), g.sum(reduce_dims), None, None


class HandLayerNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-5, forget_sigma: bool = False):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(features))
        self.bias = nn.Parameter(0.1 * torch.randn(features))
        self.eps, self.forget_sigma = eps, forget_sigma

    def forward(self, x):
        return LayerNormFn.apply(x, self.weight, self.bias, self.eps, self.forget_sigma)


class WrongWeightGrad(torch.autograd.Function):
    """y = x * w with the weight gradient off by a factor 2 (the input gradient is right)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, 2 * (g * x).sum(0)


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x):
        return WrongWeightGrad.apply(x, self.w)


# --- expected_initial_loss / init_final_bias ------------------------------------------------------------------
@pytest.mark.parametrize("C", [2, 10, 1000])
def test_expected_initial_loss_is_cross_entropy_of_uniform_logits(C):
    y = torch.randint(0, C, (50,), generator=torch.Generator().manual_seed(C))
    ref = F.cross_entropy(torch.zeros(50, C, dtype=torch.float64), y).item()
    assert expected_initial_loss(C) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("bad,exc", [(1, ValueError), (0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_expected_initial_loss_rejects(bad, exc):
    with pytest.raises(exc, match="num_classes"):
        expected_initial_loss(bad)


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_bias_recovers_prior_and_entropy(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([0.6, 0.25, 0.1, 0.05]), 400, replacement=True, generator=g)
    layer = nn.Linear(3, 4)
    bias = init_final_bias(layer, y, "multiclass")
    prior = torch.bincount(y, minlength=4).double() / len(y)
    torch.testing.assert_close(bias.double().softmax(0), prior, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.bias.detach(), bias)
    # the loss of the bias alone is the entropy of the labels, the best input-independent loss
    loss = F.cross_entropy(bias.double().expand(len(y), 4), y).item()
    assert loss == pytest.approx(-(prior * prior.log()).sum().item(), rel=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_binary_bias_is_logit_of_positive_rate(seed):
    y = (torch.rand(1000, generator=torch.Generator().manual_seed(seed)) < 1 / 11).float()
    layer = nn.Linear(2, 1)
    bias = init_final_bias(layer, y, "binary")
    pi = y.mean().item()
    assert torch.sigmoid(bias).item() == pytest.approx(pi, rel=1e-5)
    assert bias.item() == pytest.approx(math.log(pi / (1 - pi)), rel=1e-5)
    bce = F.binary_cross_entropy_with_logits(bias.expand(len(y)), y).item()
    assert bce == pytest.approx(-(pi * math.log(pi) + (1 - pi) * math.log(1 - pi)), rel=1e-4)


def test_regression_bias_is_mean_per_column():
    y = torch.randn(300, 2) * 3 + torch.tensor([50.0, -7.0])
    layer = nn.Linear(5, 2)
    torch.testing.assert_close(init_final_bias(layer, y, "regression"), y.mean(0))
    layer1 = nn.Linear(5, 1)
    y1 = 50 + torch.randn(100)
    assert init_final_bias(layer1, y1, "regression").item() == pytest.approx(y1.mean().item(), rel=1e-6)


@pytest.mark.parametrize("layer,targets,task,exc,match", [
    (nn.Linear(2, 3), torch.tensor([0, 1, 1]), "multiclass", ValueError, "never occur"),
    (nn.Linear(2, 3), torch.tensor([0, 1, 3]), "multiclass", ValueError, "class indices"),
    (nn.Linear(2, 3), torch.tensor([0.0, 1.0, 2.0]), "multiclass", TypeError, "integer"),
    (nn.Linear(2, 1), torch.tensor([0.0, 0.0]), "binary", ValueError, "both classes"),
    (nn.Linear(2, 1), torch.tensor([0.0, 0.5]), "binary", ValueError, "0 or 1"),
    (nn.Linear(2, 2), torch.tensor([0.0, 1.0]), "binary", ValueError, "out_features=1"),
    (nn.Linear(2, 2), torch.randn(5), "regression", ValueError, "column"),
    (nn.Linear(2, 1), torch.tensor([1, 2]), "regression", TypeError, "floating"),
    (nn.Linear(2, 1, bias=False), torch.randn(5), "regression", ValueError, "bias"),
    (nn.Conv1d(2, 1, 1), torch.randn(5), "regression", TypeError, "nn.Linear"),
    (nn.Linear(2, 1), torch.randn(5), "classification", ValueError, "task"),
    (nn.Linear(2, 1), torch.randn(0), "regression", ValueError, "empty"),
])
def test_init_final_bias_rejects(layer, targets, task, exc, match):
    with pytest.raises(exc, match=match):
        init_final_bias(layer, targets, task)


# --- overfit_one_batch ----------------------------------------------------------------------------------------
def _mlp(softmax_bug: bool = False) -> nn.Module:
    layers = [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)]
    return nn.Sequential(*layers, nn.Softmax(-1)) if softmax_bug else nn.Sequential(*layers)


@pytest.mark.parametrize("seed", range(3))
def test_overfit_one_batch_flags_double_softmax(seed):
    X, y = digits()
    batch = (X[16 * seed:16 * seed + 16], y[16 * seed:16 * seed + 16])
    torch.manual_seed(seed)
    good = overfit_one_batch(_mlp(), batch, steps=150)
    torch.manual_seed(seed)
    bad = overfit_one_batch(_mlp(softmax_bug=True), batch, steps=150)
    assert good.shape == bad.shape == (150,) and good.dtype == torch.float64
    assert good[0] == pytest.approx(expected_initial_loss(10), abs=0.15)
    assert good[-1] < 0.01                                   # memorised
    floor = math.log(1 + 9 / math.e)                          # softmax of probabilities in [0, 1]
    assert bad.min() > floor - 1e-6                           # cannot go below the floor...
    assert bad[-1] > 100 * good[-1]                           # ...and stays far from zero


def test_overfit_one_batch_trains_in_place_and_validates():
    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    overfit_one_batch(model, (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])), steps=3)
    assert not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match="steps"):
        overfit_one_batch(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), steps=0)
    with pytest.raises(ValueError, match="same length"):
        overfit_one_batch(model, (torch.randn(4, 3), torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="lr"):
        overfit_one_batch(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), lr=0.0)


# --- input_independent_baseline -------------------------------------------------------------------------------
def _baseline(y_train):
    X, y = digits()
    train, val = (X[:600], y_train[:600]), (X[600:900], y_train[600:900])
    make = lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))  # noqa: E731
    return input_independent_baseline(make, train, val, epochs=6, lr=1e-2, batch_size=64, device="cpu"), y_train


def test_input_independent_baseline_real_inputs_win():
    runs, y = _baseline(digits()[1])
    assert set(runs) == {"real", "zeroed"}
    assert runs["real"].last("val_acc") > runs["zeroed"].last("val_acc") + 0.5
    # the zeroed model can only learn the label prior: its loss tends to the entropy of the labels
    prior = torch.bincount(y[:600], minlength=10).double() / 600
    assert runs["zeroed"].last("train_loss") == pytest.approx(-(prior * prior.log()).sum().item(), abs=0.02)


def test_input_independent_baseline_no_gap_when_inputs_carry_no_information():
    y = digits()[1]
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    runs, _ = _baseline(shuffled)
    assert runs["real"].last("val_acc") < runs["zeroed"].last("val_acc") + 0.08


def test_input_independent_baseline_rejects():
    X, y = digits()
    with pytest.raises(TypeError, match="make_model"):
        input_independent_baseline(nn.Linear(64, 10), (X, y), (X, y), epochs=1)
    with pytest.raises(TypeError, match="floating"):
        input_independent_baseline(lambda: nn.Linear(64, 10), (y, y), (X, y), epochs=1)


# --- unnormalize / describe_batch / out_of_range / show_batch ------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batched", [True, False])
def test_unnormalize_inverts_torchvision_normalize(seed, channels, batched):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((4, channels, 6, 5) if batched else (channels, 6, 5), generator=g)
    mean = (0.2 + 0.5 * torch.rand(channels, generator=g)).tolist()
    std = (0.1 + 0.3 * torch.rand(channels, generator=g)).tolist()
    normalized = Normalize(mean, std)(x)
    torch.testing.assert_close(unnormalize(normalized, mean, std), x)
    # and it *is* a Normalize with mean -m/s and std 1/s
    inverse = Normalize([-m / s for m, s in zip(mean, std)], [1 / s for s in std])
    torch.testing.assert_close(unnormalize(normalized, mean, std), inverse(normalized))


def test_unnormalize_keeps_dtype_and_gradient():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    out = unnormalize(x, torch.tensor([0.5, 0.4, 0.3]), [0.2, 0.3, 0.4])
    assert out.dtype == torch.float64
    out.sum().backward()
    torch.testing.assert_close(x.grad[0, :, 0, 0], torch.tensor([0.2, 0.3, 0.4], dtype=torch.float64))
    assert unnormalize(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16), [0.5], [0.25]).dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"mean": [0.1, 0.2], "std": [1.0, 1.0]}, ValueError, "mean"),
    ({"mean": [0.1], "std": [0.0]}, ValueError, "std"),
])
def test_unnormalize_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        unnormalize(torch.rand(2, 3, 4, 4), **kwargs)
    with pytest.raises(TypeError, match="floating"):
        unnormalize(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), [0.5], [0.5])
    with pytest.raises(ValueError, match="C, H, W"):
        unnormalize(torch.rand(4, 4), [0.5], [0.5])


def test_describe_batch_matches_torch():
    x = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    table = describe_batch(x)
    assert list(table.columns) == ["mean", "std", "min", "max"] and len(table) == 3
    for c in range(3):
        std, mean = torch.std_mean(x[:, c].double())
        assert table["mean"].iloc[c] == pytest.approx(mean.item())
        assert table["std"].iloc[c] == pytest.approx(std.item())
        assert table["max"].iloc[c] == pytest.approx(x[:, c].max().item())


def test_out_of_range_flags_normalising_twice():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    once = Normalize([0.5], [0.25])(x)
    twice = Normalize([0.5], [0.25])(once)
    assert not out_of_range(unnormalize(once, [0.5], [0.25])).any()
    assert out_of_range(unnormalize(twice, [0.5], [0.25])).all()
    assert out_of_range(x / 255, (0.0, 1.0)).sum() == 0      # too dark is in range: show_batch shows it black
    with pytest.raises(ValueError, match="value_range"):
        out_of_range(x, (1.0, 0.0))


def test_show_batch_draws_labels_masks_and_flags():
    s = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = Normalize([0.5], [0.25])(s)
    x[2] = Normalize([0.5], [0.25])(x[2])                       # one image normalised twice
    masks = s[:, 0] > 0.5
    fig = show_batch(x, torch.tensor([0, 1, 2, 0, 1]), mean=[0.5], std=[0.25], masks=masks,
                     boxes=torch.tensor([[1.0, 1.0, 5.0, 5.0]] * 5), class_names=["a", "b", "c"], ncols=3)
    axes = fig.axes
    assert len(axes) == 6                                      # 2 rows of 3, the last one switched off
    assert [ax.get_title().split("\n")[0] for ax in axes[:5]] == ["a", "b", "c", "a", "b"]
    red = [ax.spines["left"].get_edgecolor()[:3] == (1.0, 0.0, 0.0) for ax in axes[:5]]
    assert red == [False, False, True, False, False]
    assert all(ax.collections for ax in axes[:5]) and all(ax.patches for ax in axes[:5])  # contours, boxes
    assert not axes[5].axison
    matplotlib.pyplot.close(fig)


def test_show_batch_into_given_axes_and_rejects():
    fig, axes = matplotlib.pyplot.subplots(1, 4)
    assert show_batch(torch.rand(3, 8, 8), axes=axes) is fig
    with pytest.raises(ValueError, match="axes"):
        show_batch(torch.rand(5, 8, 8), axes=axes)
    with pytest.raises(ValueError, match="mean and std"):
        show_batch(torch.rand(3, 8, 8), mean=[0.5])
    with pytest.raises(ValueError, match="one entry per image"):
        show_batch(torch.rand(3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="C in"):
        show_batch(torch.rand(3, 2, 8, 8))
    matplotlib.pyplot.close("all")


# --- dependency_matrix / batch_leak / assert_batch_independent ------------------------------------------------
def _jacobian_reference(model, x, direction):
    """D[i, j] = || d<v, f(x)_i> / dx_j || from the full Jacobian (an independent computation)."""
    J = torch.autograd.functional.jacobian(model, x)          # [B, *out, B, *in]
    B = len(x)
    out_dims = J.dim() - x.dim() - 1
    weighted = (J * direction.reshape(1, *direction.shape, *[1] * x.dim())).sum(dim=tuple(range(1, 1 + out_dims)))
    return weighted.reshape(B, B, -1).norm(dim=2)


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), (6, 5)),
    "gru fixed": (lambda: SeqFirstGRU(bug=False), (6, 4, 5)),
    "gru view bug": (lambda: SeqFirstGRU(bug=True), (6, 4, 5)),
    "batchnorm train": (lambda: nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)), (6, 5)),
    "conv + groupnorm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten()), (6, 2, 5, 5)),
}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("vectorize", [True, False])
def test_dependency_matrix_matches_full_jacobian(seed, name, vectorize):
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    model = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    v = torch.randn(model(x).shape[1:], dtype=torch.float64)
    D = dependency_matrix(model, x, direction=v, vectorize=vectorize)
    assert D.shape == (len(x), len(x))
    torch.testing.assert_close(D, _jacobian_reference(model, x, v))


@pytest.mark.parametrize("seed", range(5))
def test_dependency_check_flags_view_bug_and_passes_the_fix(seed):
    torch.manual_seed(seed)
    x = torch.randn(8, 4, 5)
    fixed, buggy = SeqFirstGRU(bug=False), SeqFirstGRU(bug=True)
    D_fixed = dependency_matrix(fixed, x)
    assert torch.count_nonzero(D_fixed - torch.diag(D_fixed.diagonal())) == 0 and batch_leak(D_fixed) == 0
    assert batch_leak(dependency_matrix(buggy, x)) > 0.05
    assert_batch_independent(fixed, x)
    with pytest.raises(AssertionError, match="not independent"):
        assert_batch_independent(buggy, x)
    # with one sample the view is the permute: the check cannot see the bug (hence B >= 2)
    buggy.load_state_dict(fixed.state_dict())
    torch.testing.assert_close(buggy(x[:1]), fixed(x[:1]))
    assert not torch.allclose(buggy(x), fixed(x))


def test_batchnorm_couples_the_batch_in_train_mode_only_and_buffers_survive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    x = torch.randn(16, 5)
    before = [b.clone() for b in model.buffers()]
    leak_train = batch_leak(dependency_matrix(model.train(), x))
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))    # running stats untouched
    assert 0 < leak_train < 1
    assert batch_leak(dependency_matrix(model.eval(), x)) == 0
    gn = nn.Sequential(nn.Linear(5, 8), nn.GroupNorm(2, 8), nn.Linear(8, 3)).train()
    assert batch_leak(dependency_matrix(gn, x)) == 0


@pytest.mark.parametrize("B", [4, 8, 32, 128])
def test_batchnorm_leak_is_a_few_times_one_over_b_as_the_docstring_says(B):
    """batch_leak's docstring: between 1.7/B and 5/B for this MLP (0.22 to 0.43 at B = 8)."""
    leaks = []
    for seed in range(5):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 5)).train()
        leaks.append(batch_leak(dependency_matrix(model, torch.randn(B, 10))))
    assert all(1.5 / B < leak < 5.5 / B for leak in leaks), leaks


def test_random_direction_sees_what_a_plain_sum_misses():
    # rows of a softmax sum to 1, so d(sum of outputs)/dx is zero everywhere
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Softmax(-1)).train()
    x = torch.randn(6, 5)
    assert dependency_matrix(model, x, direction=torch.ones(4)).abs().max() < 1e-6
    assert batch_leak(dependency_matrix(model, x)) > 0.01


def test_dependency_matrix_rejects():
    with pytest.raises(TypeError, match="floating"):
        dependency_matrix(nn.Identity(), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        dependency_matrix(lambda x: x.sum(0), torch.randn(3, 2))
    with pytest.raises(TypeError, match="tensor"):
        dependency_matrix(lambda x: (x, x), torch.randn(3, 2))
    with pytest.raises(ValueError, match="at least 2"):
        assert_batch_independent(nn.Linear(2, 2), torch.randn(1, 2))
    with pytest.raises(ValueError, match="zero diagonal"):
        batch_leak(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="square"):
        batch_leak(torch.zeros(3, 2))


# --- gradcheck_module -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_hand_written_layernorm_matches_torch_and_passes_gradcheck(seed):
    torch.manual_seed(seed)
    layer = HandLayerNorm(6).double()
    x = torch.randn(4, 3, 6, dtype=torch.float64, requires_grad=True)
    ours = layer(x)
    ref = F.layer_norm(x, (6,), layer.weight, layer.bias, layer.eps)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, [x, layer.weight, layer.bias], g),
                               torch.autograd.grad(ref, [x, layer.weight, layer.bias], g))
    assert gradcheck_module(layer.float(), x.float())          # converted to float64 inside
    assert layer.weight.dtype == torch.float32                   # the caller's module is left alone


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_fails_for_a_planted_wrong_backward(seed):
    torch.manual_seed(seed)
    buggy = HandLayerNorm(6, forget_sigma=True)
    x = torch.randn(4, 6)
    # the forward is right, so a value test passes...
    torch.testing.assert_close(buggy(x), F.layer_norm(x, (6,), buggy.weight, buggy.bias, buggy.eps))
    # ...the gradient check does not
    assert not gradcheck_module(buggy, x)
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck_module(buggy, x, raise_exception=True)


def test_gradcheck_checks_parameters_too():
    x = torch.randn(3, 4)
    assert gradcheck_module(Scale(), x, check_params=False)      # the input gradient is right
    assert not gradcheck_module(Scale(), x)                      # the weight gradient is not
    assert gradcheck_module(lambda t: t.sin() * t, x)            # plain functions work too
    assert gradcheck_module(nn.Sequential(nn.Linear(4, 3), nn.Tanh()), x)


def test_gradcheck_module_rejects():
    with pytest.raises(ValueError, match="at least one"):
        gradcheck_module(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="nothing to check"):
        gradcheck_module(lambda t: t.float(), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="callable|nn.Module"):
        gradcheck_module(3, torch.randn(2))


# --- first_nonfinite ------------------------------------------------------------------------------------------
class LogOfSoftmax(nn.Module):
    def forward(self, z):
        return torch.log(torch.softmax(z, -1))


def test_first_nonfinite_names_the_culprit():
    x = torch.randn(4, 6)
    x[1] = 3.0                                                   # a constant row: variance 0
    eps0 = nn.Sequential(nn.Identity(), HandLayerNorm(6, eps=0.0), nn.Linear(6, 2))
    assert first_nonfinite(eps0, x) == "1"
    assert first_nonfinite(nn.Sequential(nn.Identity(), HandLayerNorm(6, eps=1e-5), nn.Linear(6, 2)), x) is None
    logits = torch.tensor([[0.0, 200.0], [1.0, 2.0]])
    assert first_nonfinite(nn.Sequential(nn.Identity(), LogOfSoftmax()), logits) == "1"
    assert first_nonfinite(nn.Sequential(nn.Identity(), nn.LogSoftmax(-1)), logits) is None
    assert first_nonfinite(LogOfSoftmax(), logits) == "<model>"
    assert first_nonfinite(nn.Linear(2, 2), torch.tensor([[float("nan"), 0.0]])) == "<input>"
    with pytest.raises(TypeError, match="nn.Module"):
        first_nonfinite(lambda t: t, x)


def test_first_nonfinite_leaves_buffers_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    before = model[1].running_mean.clone()
    assert first_nonfinite(model, torch.randn(5, 3)) is None
    assert torch.equal(before, model[1].running_mean)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_debug_helpers_on_cuda_match_cpu():
    torch.manual_seed(0)
    model, x = SeqFirstGRU(bug=True), torch.randn(6, 4, 5)
    D_cpu = dependency_matrix(model, x)
    D_cuda = dependency_matrix(model.cuda(), x.cuda())
    assert D_cuda.device.type == "cuda"
    torch.testing.assert_close(D_cuda.cpu(), D_cpu, rtol=1e-4, atol=1e-5)
    images = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(unnormalize(images.cuda(), [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]).cpu(),
                               unnormalize(images, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
    assert first_nonfinite(HandLayerNorm(5, eps=0.0).cuda(), torch.ones(2, 5).cuda()) == "<model>"
