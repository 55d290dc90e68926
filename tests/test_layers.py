"""tricklib.layers against torch: GroupNorm == nn.GroupNorm, channel_shuffle == nn.ChannelShuffle,
attention == F.scaled_dot_product_attention (values and gradients, masks, half precision)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklib import GroupNorm, attention, channel_shuffle

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,groups", [((4, 6, 5, 5), 3), ((2, 8, 7), 1), ((3, 8, 4, 4), 8),
                                          ((1, 4), 2), ((2, 6, 3, 2, 2), 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm_equals_nn_groupnorm(device, shape, groups, affine):
    torch.manual_seed(0)
    ours = GroupNorm(groups, shape[1], affine=affine).to(device)
    ref = nn.GroupNorm(groups, shape[1], affine=affine).to(device)
    if affine:
        with torch.no_grad():
            ours.weight.normal_()
            ours.bias.normal_()
        ref.load_state_dict(ours.state_dict())
    x = (torch.randn(shape, device=device) * 3 + 1).requires_grad_()
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, *ours.parameters()], g)
    grads_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_groupnorm_gradcheck_in_float64():
    layer = GroupNorm(2, 4).double()
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_groupnorm_is_not_the_unbiased_one_liner():
    x = torch.randn(2, 4, 3, 3)
    g = x.view(2, 2, -1)
    one_liner = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True) + 1e-5).sqrt()).view_as(x)
    ours = GroupNorm(2, 4, affine=False)(x)
    assert not torch.allclose(one_liner, ours, atol=1e-3)
    torch.testing.assert_close(ours, F.group_norm(x, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_groupnorm_half_precision(dtype):
    x = torch.randn(2, 6, 4, 4) * 100 + 50
    y = GroupNorm(3, 6).to(dtype)(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), nn.GroupNorm(3, 6)(x), rtol=2e-2, atol=2e-2)


def test_groupnorm_errors():
    with pytest.raises(ValueError, match="divisible"):
        GroupNorm(3, 4)
    with pytest.raises(ValueError, match="eps"):
        GroupNorm(2, 4, eps=0.0)
    with pytest.raises(ValueError, match=r"\[N, 4, \*\]"):
        GroupNorm(2, 4)(torch.randn(2, 6, 3))
    with pytest.raises(TypeError, match="floating"):
        GroupNorm(2, 4)(torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("shape,groups", [((2, 6, 3, 3), 3), ((2, 6, 3, 3), 2), ((1, 12, 1), 4), ((2, 8, 5), 8),
                                          ((2, 4, 1, 2, 2), 1)])
def test_channel_shuffle_equals_nn_channel_shuffle(shape, groups):
    x = torch.arange(torch.Size(shape).numel()).reshape(shape)
    assert torch.equal(channel_shuffle(x, groups), nn.ChannelShuffle(groups)(x))
    xf = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    a = torch.autograd.grad(channel_shuffle(xf, groups), xf, g)[0]
    b = torch.autograd.grad(nn.ChannelShuffle(groups)(xf), xf, g)[0]
    assert torch.equal(a, b)


def test_channel_shuffle_interleaves_and_refuses_bad_groups():
    x = torch.arange(6).reshape(1, 6)
    assert channel_shuffle(x, 2).tolist() == [[0, 3, 1, 4, 2, 5]]
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(torch.randn(1, 6, 2), 4)
    with pytest.raises(ValueError, match="groups"):
        channel_shuffle(torch.randn(1, 6, 2), 0)


def _qkv(L=5, S=7, d=8, dv=6, lead=(2, 3), dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    make = lambda *s: torch.randn(*lead, *s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    return make(L, d), make(S, d), make(S, dv)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "scale", "broadcast"])
def test_attention_equals_sdpa(device, kind):
    q, k, v = _qkv(device=device)
    g = torch.Generator().manual_seed(1)
    kwargs = {}
    if kind == "bool":
        mask = torch.rand(5, 7, generator=g) > 0.3
        mask[2] = False  # a query with nothing to attend to
        kwargs["mask"] = mask.to(device)
    elif kind == "float":
        kwargs["mask"] = torch.randn(2, 3, 5, 7, generator=g).to(device)
    elif kind == "causal":
        kwargs["is_causal"] = True
    elif kind == "scale":
        kwargs["scale"] = 0.3
    elif kind == "broadcast":
        kwargs["mask"] = (torch.rand(3, 1, 7, generator=g) > 0.2).to(device)
    ref_kwargs = {("attn_mask" if key == "mask" else key): val for key, val in kwargs.items()}
    out = attention(q, k, v, **kwargs)
    ref = F.scaled_dot_product_attention(q, k, v, **ref_kwargs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_attention_masked_query_is_zero_not_nan():
    q, k, v = _qkv(lead=())
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[0] = False
    out = attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and torch.equal(out[0], torch.zeros(6))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_half_precision(dtype):
    q, k, v = _qkv(dtype=dtype)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = attention(q, k, v)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_attention_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="length, dim"):
        attention(torch.randn(3), k, v)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_conv_with_one_kernel_everywhere_is_a_depthwise_conv(k, per_channel):
    from tricklib import dynamic_conv
    g = torch.Generator().manual_seed(k)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(3 if per_channel else 1, k, k, generator=g, dtype=torch.float64)
    if per_channel:
        kernels = weight.reshape(1, 3, k * k, 1, 1).expand(2, 3, k * k, 6, 7)
    else:
        kernels = weight.reshape(1, k * k, 1, 1).expand(2, k * k, 6, 7)
    ref = F.conv2d(x, weight.expand(3, k, k).unsqueeze(1), padding=k // 2, groups=3)
    torch.testing.assert_close(dynamic_conv(x, kernels), ref)


def test_dynamic_conv_per_pixel_kernels_and_gradients():
    from tricklib import dynamic_conv
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(1, 9, 4, 4, dtype=torch.float64, requires_grad=True)
    out = dynamic_conv(x, kernels)
    # pixel (1, 2) of channel 0 by hand
    patch = x[0, 0, 0:3, 1:4].reshape(-1)
    torch.testing.assert_close(out[0, 0, 1, 2], (patch * kernels[0, :, 1, 2]).sum())
    assert torch.autograd.gradcheck(dynamic_conv, (x, kernels))
    with pytest.raises(ValueError, match="k odd"):
        dynamic_conv(x.detach(), torch.randn(1, 4, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="kernels must be"):
        dynamic_conv(x.detach(), torch.randn(1, 9, 3, 4, dtype=torch.float64))


# ---- Residual and residual_mlp (the residual chapter) -------------------------------------

def _branch(width: int = 6) -> nn.Module:
    return nn.Sequential(nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_residual_equals_x_plus_block(seed):
    from tricklib import Residual
    torch.manual_seed(seed)
    block = _branch().double()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    out = Residual(block)(x)
    ref = x + block(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *block.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [x, *block.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda t: Residual(block)(t), (x,))


def test_residual_with_a_zero_branch_is_the_identity_and_passes_the_gradient():
    from tricklib import Residual
    block = _branch()
    nn.init.zeros_(block[2].weight)
    nn.init.zeros_(block[2].bias)
    x = torch.randn(4, 6, requires_grad=True)
    out = Residual(block)(x)
    assert torch.equal(out, x)
    g = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, g)
    assert torch.equal(grad_x, g)  # the identity Jacobian: the upstream gradient arrives unchanged
    out = Residual(block)(x)
    out.sum().backward()  # the zero layer still gets a gradient, so it can learn
    assert block[2].weight.grad.abs().sum() > 0


def test_residual_with_a_projection_shortcut_and_bad_input():
    from tricklib import Residual
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    shortcut = nn.Conv2d(3, 8, 1, stride=2)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(Residual(conv, shortcut)(x), conv(x) + shortcut(x))
    with pytest.raises(ValueError, match="same shape"):
        Residual(conv)(x)
    with pytest.raises(TypeError, match="block"):
        Residual(lambda t: t)
    with pytest.raises(TypeError, match="shortcut"):
        Residual(conv, shortcut="identity")


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("norm", [False, True])
def test_residual_mlp_matches_a_hand_written_forward(residual, norm):
    from tricklib import residual_mlp
    torch.manual_seed(0)
    model = residual_mlp(5, 6, 3, 4, residual=residual, norm=norm).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 5 and len(norms) == (4 if norm else 0)

    def unit(i, h):  # BN -> ReLU -> Linear, written out with the functional ops (training-mode BN)
        if norm:
            h = F.batch_norm(h, None, None, norms[i].weight, norms[i].bias, training=True)
        return F.linear(F.relu(h), linears[i + 1].weight, linears[i + 1].bias)

    h = F.linear(x, linears[0].weight, linears[0].bias)
    for i in range(3):
        h = h + unit(i, h) if residual else unit(i, h)
    torch.testing.assert_close(model(x), unit(3, h))


def test_plain_and_residual_mlp_start_from_the_same_weights():
    from tricklib import residual_mlp
    torch.manual_seed(3)
    plain = residual_mlp(64, 16, 4, 10, residual=False)
    torch.manual_seed(3)
    res = residual_mlp(64, 16, 4, 10)
    a, b = plain.state_dict(), res.state_dict()
    assert [k.replace(".block", "") for k in b] == list(a)
    assert all(torch.equal(u, v) for u, v in zip(a.values(), b.values()))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in res.parameters())
    with pytest.raises(ValueError, match="depth"):
        residual_mlp(64, 16, 0, 10)
    with pytest.raises(TypeError, match="width"):
        residual_mlp(64, 16.0, 2, 10)
