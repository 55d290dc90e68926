"""The activations chapter: the one-line formulas against PyTorch's activations (values and gradients),
tricklib.dead_fraction with every activation the chapter counts, and tricklib.mlp with those activations."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tricklib

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# the formula of each activation (as the chapter writes it) and PyTorch's function
FORMULAS = {
    "relu": (lambda x: x.clamp(min=0), F.relu),
    "leaky_relu": (lambda x: torch.where(x > 0, x, 0.01 * x), functools.partial(F.leaky_relu, negative_slope=0.01)),
    "silu": (lambda x: x * torch.sigmoid(x), F.silu),
    "mish": (lambda x: x * torch.tanh(F.softplus(x)), F.mish),
    "gelu": (lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), F.gelu),
    "gelu_tanh": (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                  functools.partial(F.gelu, approximate="tanh")),
}
UNITS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.Mish, nn.GELU)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(FORMULAS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_formula_equals_torch_values_and_gradients(name, seed, device):
    formula, reference = FORMULAS[name]
    g = torch.Generator().manual_seed(seed)
    x = (4 * torch.randn(500, generator=g, dtype=torch.float64)).to(device)
    x = torch.cat([x, torch.tensor([-30.0, -1.0, -1e-3, 1e-3, 1.0, 30.0], dtype=torch.float64, device=device)])
    upstream = torch.randn(len(x), generator=g, dtype=torch.float64).to(device)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = formula(a), reference(b)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(FORMULAS))
def test_formula_equals_torch_in_float32(name):
    formula, reference = FORMULAS[name]
    x = 4 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(formula(x), reference(x), rtol=1e-5, atol=1e-6)


def test_prelu_is_max_x_ax_with_a_learned_per_channel_slope():
    torch.manual_seed(0)
    prelu = nn.PReLU(4).double()
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.25, -0.1, 0.0, 1.5], dtype=torch.float64))
    x = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    a = prelu.weight.detach().clone().requires_grad_()
    ours = torch.where(x > 0, x, a * x)  # per channel: the slope broadcasts over dimension 1
    torch.testing.assert_close(prelu(x), ours)
    upstream = torch.randn(16, 4, dtype=torch.float64)
    grad_x, grad_a = torch.autograd.grad((prelu(x) * upstream).sum(), (x, prelu.weight))
    ref_x, ref_a = torch.autograd.grad((ours * upstream).sum(), (x, a))
    torch.testing.assert_close(grad_x, ref_x)
    torch.testing.assert_close(grad_a, ref_a)  # dL/da_c = sum over examples with x < 0 of upstream * x
    torch.autograd.gradcheck(prelu, (x,))


@pytest.mark.parametrize("activation", UNITS)
def test_dead_fraction_counts_units_at_or_below_zero_for_every_activation(activation):
    # every activation of the chapter is > 0 exactly where its input is > 0, so the count is the same
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), activation(), nn.Linear(6, 4), activation())
    with torch.no_grad():
        model[0].bias[:2] = -1e3   # two units below zero on any input
        model[2].bias[:] = 1e3     # the second layer: all above zero
    x = torch.randn(64, 3)
    pre = model[0](x)
    assert int((pre <= 0).all(dim=0).sum()) == 2
    assert tricklib.dead_fraction(model, x, activation=activation, per_layer=True) == {"1": 2 / 6, "3": 0.0}
    assert tricklib.dead_fraction(model, x, activation=UNITS) == 2 / 10


def test_a_dead_relu_gets_no_gradient_and_a_leaky_one_does():
    torch.manual_seed(0)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    for activation, expect_zero in ((nn.ReLU(), True), (nn.LeakyReLU(0.01), False), (nn.SiLU(), False)):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 4), activation, nn.Linear(4, 3))
        with torch.no_grad():
            model[0].bias[0] = -3.0 - model[0](x)[:, 0].max()  # unit 0: input below -3 on every example
        F.cross_entropy(model(x), y).backward()
        unit_grad = torch.cat([model[0].weight.grad[0], model[0].bias.grad[:1]])
        assert (unit_grad == 0).all() == expect_zero
        assert (model[0].weight.grad[1:] != 0).any()   # the other units learn


def test_mlp_takes_any_activation_and_one_seed_gives_the_same_weights():
    nets = {}
    for name, activation in {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU,
                             "prelu": functools.partial(nn.PReLU, 8)}.items():
        torch.manual_seed(0)
        nets[name] = tricklib.mlp(5, 8, 8, 3, activation=activation)
    assert isinstance(nets["prelu"][1], nn.PReLU) and nets["prelu"][1].weight.shape == (8,)
    linears = {name: [m.weight for m in net if isinstance(m, nn.Linear)] for name, net in nets.items()}
    for name in nets:
        assert all(torch.equal(a, b) for a, b in zip(linears["relu"], linears[name]))
    x = torch.randn(4, 5)
    hidden = F.silu(nets["silu"][2](F.silu(nets["silu"][0](x))))
    torch.testing.assert_close(nets["silu"](x), nets["silu"][4](hidden))
