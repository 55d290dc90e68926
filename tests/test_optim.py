"""adam_step against torch.optim.Adam / AdamW; param_groups membership; flood against its formula."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklib import adam_step, flood, param_groups


def _run_torch(opt_cls, theta0, grads, **kwargs):
    p = nn.Parameter(theta0.clone())
    opt = opt_cls([p], **kwargs)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _run_ours(theta0, grads, **kwargs):
    theta, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    for t, g in enumerate(grads, start=1):
        adam_step(theta, g, m, v, t, **kwargs)
    return theta


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lr,betas,eps,wd", [(1e-3, (0.9, 0.999), 1e-8, 0.1), (0.05, (0.5, 0.9), 1e-3, 0.5),
                                             (3e-4, (0.0, 0.99), 1e-8, 0.0), (0.1, (0.9, 0.999), 0.0, 1e-2)])
@pytest.mark.parametrize("decoupled,ref", [(True, torch.optim.AdamW), (False, torch.optim.Adam)])
def test_adam_step_matches_torch(seed, dtype, lr, betas, eps, wd, decoupled, ref):
    g = torch.Generator().manual_seed(seed)
    theta0 = torch.randn(7, 5, generator=g, dtype=dtype)
    # gradients of very different scales per entry, the case where L2 and decoupled decay differ
    scales = 10.0 ** torch.linspace(-3, 1, 5, dtype=dtype)
    grads = [scales * torch.randn(7, 5, generator=g, dtype=dtype) for _ in range(25)]
    ours = _run_ours(theta0, grads, lr=lr, betas=betas, eps=eps, weight_decay=wd, decoupled=decoupled)
    theirs = _run_torch(ref, theta0, grads, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, theirs, **tol)


def test_l2_and_decoupled_differ_and_l2_decays_large_gradients_less():
    g = torch.Generator().manual_seed(0)
    theta0 = torch.ones(2, dtype=torch.float64)
    scales = torch.tensor([1e-3, 10.0], dtype=torch.float64)   # small and large gradient noise
    grads = [scales * torch.randn(2, generator=g, dtype=torch.float64) for _ in range(300)]
    kw = dict(lr=1e-2, weight_decay=1.0)
    l2 = _run_ours(theta0, grads, decoupled=False, **kw)
    decoupled = _run_ours(theta0, grads, decoupled=True, **kw)
    assert not torch.allclose(l2, decoupled)
    # L2 in Adam: λθ/√v̂ is tiny where gradients are large, so that weight barely shrinks
    assert l2[0].abs() < 0.1 and l2[1].abs() > 0.3
    # decoupled: both shrink by (1 − ηλ)^300 ≈ 0.05, plus the Adam noise step
    assert decoupled.abs().max() < 0.25


def test_adam_step_no_decay_is_the_same_either_way():
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(10, generator=g, dtype=torch.float64)
    grads = [torch.randn(10, generator=g, dtype=torch.float64) for _ in range(10)]
    torch.testing.assert_close(_run_ours(theta0, grads, decoupled=True), _run_ours(theta0, grads, decoupled=False))


def test_adam_step_does_not_modify_grad():
    theta, grad = torch.ones(3), torch.full((3,), 0.5)
    adam_step(theta, grad, torch.zeros(3), torch.zeros(3), 1, weight_decay=0.1, decoupled=False)
    assert torch.equal(grad, torch.full((3,), 0.5))


@pytest.mark.parametrize("kwargs,error", [
    (dict(step=0), ValueError), (dict(step=1.0), TypeError), (dict(lr=-1.0), ValueError),
    (dict(betas=(1.0, 0.999)), ValueError), (dict(betas=(0.9, -0.1)), ValueError), (dict(betas=(0.9,)), ValueError),
    (dict(eps=-1e-8), ValueError), (dict(weight_decay=-0.1), ValueError), (dict(lr="0.1"), TypeError),
])
def test_adam_step_rejects_bad_hyper_parameters(kwargs, error):
    args = dict(step=1)
    args.update(kwargs)
    with pytest.raises(error):
        adam_step(torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(3), **args)


def test_adam_step_rejects_mismatched_shapes_and_int_tensors():
    with pytest.raises(ValueError, match="exp_avg_sq"):
        adam_step(torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(4), 1)
    with pytest.raises(TypeError, match="param"):
        adam_step(torch.ones(3, dtype=torch.long), torch.ones(3), torch.zeros(3), torch.zeros(3), 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("decoupled,ref,wd", [(True, torch.optim.AdamW, 0.1), (False, torch.optim.Adam, 0.1),
                                              (True, torch.optim.Adam, 0.0)])
def test_adam_step_with_one_rate_per_stacked_model_matches_torch_per_slice(dtype, decoupled, ref, wd):
    # M = 4 models' weights stacked along dim 0, each trained at its own rate in one call
    g = torch.Generator().manual_seed(0)
    rates = torch.tensor([0.0, 1e-3, 0.03, 0.3], dtype=dtype)
    theta0 = torch.randn(4, 3, 5, generator=g, dtype=dtype)
    grads = [torch.randn(4, 3, 5, generator=g, dtype=dtype) * 10.0 ** torch.randint(-3, 3, (4, 3, 5), generator=g)
             for _ in range(15)]
    ours = _run_ours(theta0, grads, lr=rates.view(4, 1, 1), weight_decay=wd, decoupled=decoupled)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for i, rate in enumerate(rates.tolist()):
        theirs = _run_torch(ref, theta0[i], [grad[i] for grad in grads], lr=rate, weight_decay=wd)
        torch.testing.assert_close(ours[i], theirs, **tol)
    # a scalar tensor is the same as the float
    torch.testing.assert_close(_run_ours(theta0, grads, lr=torch.tensor(0.03, dtype=dtype)),
                               _run_ours(theta0, grads, lr=0.03), **tol)


@pytest.mark.parametrize("lr,error,match", [
    (torch.tensor([0.1, 0.2]), ValueError, "broadcast"),          # [2] against [3]
    (torch.ones(2, 3, 1), ValueError, "broadcast"),               # would grow param
    (torch.tensor([0.1, -0.1, 0.1]), ValueError, ">= 0"),
    (torch.tensor([0.1, float("nan"), 0.1]), ValueError, ">= 0"),
    (torch.tensor([1, 1, 1]), TypeError, "lr"),                   # integer rates
])
def test_adam_step_rejects_bad_tensor_rates(lr, error, match):
    with pytest.raises(error, match=match):
        adam_step(torch.ones(3), torch.ones(3), torch.zeros(3), torch.zeros(3), 1, lr=lr)


# ---- param_groups -------------------------------------------------------------------------

class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.gn = nn.GroupNorm(1, 3)
        self.conv_nobias = nn.Conv1d(3, 3, 1, bias=False)
        self.ln = nn.LayerNorm([3, 4])          # a 2-D γ: still a norm parameter, never decayed
        self.fc = nn.Linear(4, 2)
        self.prelu = nn.PReLU()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


DECAYED = {"conv.weight", "conv_nobias.weight", "fc.weight"}
NOT_DECAYED = {"embed.weight", "conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
               "fc.bias", "prelu.weight"}


def test_param_groups_membership():
    model = Zoo()
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert set(groups[0]["param_names"]) == DECAYED
    assert set(groups[1]["param_names"]) == NOT_DECAYED
    named = dict(model.named_parameters())
    for g in groups:  # names and tensors line up
        assert all(named[n] is p for n, p in zip(g["param_names"], g["params"]))
    # every trainable parameter exactly once, frozen ones left out
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_param_groups_decay_embeddings_on_request():
    groups = param_groups(Zoo(), 0.1, decay_embeddings=True)
    assert set(groups[0]["param_names"]) == DECAYED | {"embed.weight"}


def test_param_groups_drive_a_torch_optimizer():
    model = Zoo()
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)        # zero gradient: only weight decay moves anything
    opt.step()
    for n, p in model.named_parameters():
        if n in DECAYED:
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.1 * 0.5))
        else:
            torch.testing.assert_close(p.detach(), before[n])


def test_param_groups_tied_weights_counted_once_and_empty_groups_dropped():
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    groups = param_groups(nn.Sequential(emb, head), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0 and groups[0]["param_names"] == ["0.weight"]
    only_bn = param_groups(nn.BatchNorm1d(4), 0.1)
    assert len(only_bn) == 1 and only_bn[0]["param_names"] == ["weight", "bias"]


def test_param_groups_rejects_bad_input():
    with pytest.raises(TypeError, match="model"):
        param_groups([nn.Parameter(torch.ones(2))], 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), -0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), float("inf"))
    with pytest.raises(ValueError, match="no trainable"):
        param_groups(nn.ReLU(), 0.1)


# ---- flood --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("b", [0.0, 0.05, 0.5, 2.0])
def test_flood_equals_formula_values_and_gradients(seed, b):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(5, (32,), generator=g)
    ours = flood(F.cross_entropy(logits, y), b)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    ref = (F.cross_entropy(logits, y) - b).abs() + b
    (grad_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_flood_flips_the_gradient_below_b_only():
    logits = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    y = torch.zeros(16, dtype=torch.long)
    loss = F.cross_entropy(logits, y)
    (plain,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (above,) = torch.autograd.grad(flood(loss, loss.item() * 0.5), logits, retain_graph=True)
    (below,) = torch.autograd.grad(flood(loss, loss.item() * 2.0), logits)
    torch.testing.assert_close(above, plain)       # loss > b: unchanged
    torch.testing.assert_close(below, -plain)      # loss < b: gradient ascent
    assert flood(loss, loss.item() * 2.0).item() == pytest.approx(3 * loss.item())  # |L − 2L| + 2L


def test_flood_b_zero_is_identity_for_nonnegative_losses_and_keeps_dtype():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        loss = torch.tensor([0.0, 0.3, 4.0], dtype=dtype)
        out = flood(loss, 0.0)
        assert out.dtype == dtype and torch.equal(out, loss)
        assert torch.equal(flood(loss, 0.5), (loss - 0.5).abs() + 0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_flood_b_zero_is_the_plain_loss_also_when_the_loss_is_negative(dtype):
    """b = 0 turns flooding off; the formula |J - 0| + 0 would flip a negative loss (a log-likelihood)."""
    loss = torch.tensor([-2.0, -0.25, 0.0, 3.0], dtype=dtype, requires_grad=True)
    out = flood(loss, 0)
    (grad,) = torch.autograd.grad(out.sum(), loss)
    assert torch.equal(out, loss) and torch.equal(grad, torch.ones_like(loss))
    assert flood(torch.tensor(-2.0, dtype=dtype), 0.5).item() == 3.0        # |-2 - 0.5| + 0.5: floods up to b


@pytest.mark.parametrize("b,error", [(-0.1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                                     ("0.1", TypeError), (None, TypeError)])
def test_flood_rejects_bad_b(b, error):
    with pytest.raises(error, match="b"):
        flood(torch.tensor(1.0), b)


def test_flood_rejects_non_tensor_and_integer_loss():
    with pytest.raises(TypeError, match="loss"):
        flood(1.0, 0.1)
    with pytest.raises(TypeError, match="loss"):
        flood(torch.tensor(1), 0.1)
