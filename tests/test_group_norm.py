"""GroupNorm's family and its use, beyond tests/test_layers.py (== nn.GroupNorm, gradients, gradcheck):
G = 1 is LayerNorm over (C, H, W), G = C is InstanceNorm, no statistic crosses the batch, bad G raises,
and a bias before a per-channel norm is dead weight (the claims of chapters/part3_architecture/group_norm)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklib import GroupNorm


@pytest.mark.parametrize("shape", [(3, 8, 5, 5), (2, 6, 7), (4, 4, 2, 3, 3)])
def test_one_group_is_layer_norm_over_c_h_w(shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    ours = GroupNorm(1, shape[1], affine=False).double()(x)
    ref = F.layer_norm(x, x.shape[1:])
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    torch.testing.assert_close(*(torch.autograd.grad(out, x, g)[0] for out in (ours, ref)))


@pytest.mark.parametrize("shape", [(3, 8, 5, 5), (2, 6, 7), (4, 4, 2, 3, 3)])
def test_one_group_per_channel_is_instance_norm(shape):
    torch.manual_seed(1)
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    layer = GroupNorm(shape[1], shape[1]).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    ours = layer(x)
    ref = F.instance_norm(x, weight=layer.weight, bias=layer.bias)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ours)
    torch.testing.assert_close(*(torch.autograd.grad(out, x, g)[0] for out in (ours, ref)))


def test_output_does_not_depend_on_the_batch():
    # unlike BatchNorm in training mode: an example's output is the same alone or with any companions
    torch.manual_seed(2)
    layer = GroupNorm(2, 8)
    x = torch.randn(6, 8, 4, 4)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(layer(x), alone)
    torch.testing.assert_close(layer.eval()(x), layer.train()(x))
    bn = nn.BatchNorm2d(8)
    assert not torch.allclose(bn(x)[:2], bn(x[:2]), atol=1e-3)


def test_unbiased_one_liner_is_off_by_sqrt_n_minus_1_over_n():
    torch.manual_seed(3)
    n = 8  # values per group: 2 channels × 2 × 2 pixels
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    g = x.view(3, 2, -1)
    one_liner = ((g - g.mean(-1, keepdim=True)) / g.var(-1, keepdim=True).sqrt()).view_as(x)
    ours = GroupNorm(2, 4, eps=1e-12, affine=False).double()(x)
    torch.testing.assert_close(one_liner * (7 / 8) ** -0.5, ours * 1.0, rtol=1e-6, atol=1e-9)
    assert g.shape[-1] == n


@pytest.mark.parametrize("groups,channels", [(3, 4), (0, 4), (5, 4), (-1, 4)])
def test_bad_number_of_groups_raises(groups, channels):
    with pytest.raises(ValueError):
        GroupNorm(groups, channels)


def test_non_integer_groups_raises():
    with pytest.raises((TypeError, ValueError)):
        GroupNorm(2.5, 5)


@pytest.mark.parametrize("norm,redundant", [(nn.BatchNorm2d(8), True), (GroupNorm(8, 8), True),
                                            (GroupNorm(2, 8), False), (GroupNorm(1, 8), False)])
def test_conv_bias_before_a_per_channel_norm_is_dead_weight(norm, redundant):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, padding=1).double()
    norm = norm.double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    out = norm(conv(x))
    grad = torch.autograd.grad(out, conv.bias, torch.randn_like(out))[0]
    with torch.no_grad():
        conv.bias.add_(torch.randn(8, dtype=torch.float64))
    changed = (norm(conv(x)) - out).abs().max()
    if redundant:
        assert grad.abs().max() < 1e-10 and changed < 1e-10
    else:
        assert grad.abs().max() > 1e-3 and changed > 1e-3
