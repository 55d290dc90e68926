"""tricklib.attention against F.scaled_dot_product_attention: the cases test_layers.py does not cover.

Additive masks with -inf, causal masks with L != S, masks broadcast over batch and heads, keys and
values shared across heads, float64 gradcheck, half-precision gradients, the unscaled version
(scale=1.0) the chapter uses as its baseline, the saturation the 1/sqrt(d) prevents, bad inputs.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tricklib import attention

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _qkv(L=5, S=7, d=8, dv=6, lead=(2, 3), dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype).requires_grad_()
    return make(*lead, L, d), make(*lead, S, d), make(*lead, S, dv)


def _same(out, ref, inputs, rtol=1e-5, atol=1e-6, grad_rtol=1e-4, grad_atol=1e-5):
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, inputs, grad, retain_graph=True)
    theirs = torch.autograd.grad(ref, inputs, grad, retain_graph=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=grad_rtol, atol=grad_atol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_additive_minus_inf_mask_equals_boolean_mask_and_sdpa(device, seed):
    q, k, v = _qkv(device=device, seed=seed)
    keep = torch.rand(5, 7, generator=torch.Generator().manual_seed(seed)) > 0.4
    keep[:, 0] = True  # every query keeps a key (a fully masked row is tested in test_layers.py)
    keep = keep.to(device)
    additive = torch.zeros(5, 7, device=device).masked_fill(~keep, float("-inf"))
    out = attention(q, k, v, mask=additive)
    torch.testing.assert_close(out, attention(q, k, v, mask=keep))
    _same(out, F.scaled_dot_product_attention(q, k, v, attn_mask=additive), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("L,S", [(3, 7), (7, 3), (1, 5), (6, 6)])
def test_causal_with_different_query_and_key_lengths(device, L, S):
    # top-left aligned, as F.scaled_dot_product_attention: query i sees keys j <= i
    q, k, v = _qkv(L=L, S=S, device=device)
    _same(attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v))


@pytest.mark.parametrize("mask_shape", [(1, 7), (2, 1, 5, 7), (1, 3, 1, 7), (3, 5, 7)])
def test_masks_broadcast_over_batch_and_heads(mask_shape):
    q, k, v = _qkv(lead=(2, 3))
    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    _same(attention(q, k, v, mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), (q, k, v))


def test_keys_and_values_shared_across_heads():
    # k, v of shape [batch, 1, S, d] broadcast over the heads of q [batch, heads, L, d]
    q, _, _ = _qkv(lead=(2, 4))
    _, k, v = _qkv(lead=(2, 1), seed=1)
    out = attention(q, k, v)
    assert out.shape == (2, 4, 5, 6)
    ref = F.scaled_dot_product_attention(q, k.expand(2, 4, 7, 8), v.expand(2, 4, 7, 6))
    _same(out, ref, (q, k, v))


@pytest.mark.parametrize("lead", [(), (4,), (2, 3, 2)])
def test_any_number_of_leading_dimensions(lead):
    q, k, v = _qkv(lead=lead)
    _same(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), (q, k, v))


def test_unscaled_is_plain_softmax_of_dot_products():
    # scale=1.0: softmax(q k^T) v, the baseline of the chapter; the default divides by sqrt(d) of q
    q, k, v = _qkv(d=16, dv=3)
    logits = q @ k.transpose(-2, -1)
    torch.testing.assert_close(attention(q, k, v, scale=1.0), logits.softmax(-1) @ v)
    torch.testing.assert_close(attention(q, k, v), (logits / 4.0).softmax(-1) @ v)
    _same(attention(q, k, v, scale=1.0), F.scaled_dot_product_attention(q, k, v, scale=1.0), (q, k, v))


def test_gradcheck_float64():
    q, k, v = _qkv(L=3, S=4, d=5, dv=2, lead=(2,), dtype=torch.float64)
    mask = torch.tensor([[True, False, True, True], [True, True, False, False], [False, True, True, True]])
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, mask=mask), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: attention(a, b, c, is_causal=True, scale=0.7), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradients_match_float32(device, dtype):
    q, k, v = _qkv(dtype=dtype, device=device)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    out, ref = attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5)).to(device)
    ours = torch.autograd.grad(out, (q, k, v), grad.to(dtype))
    theirs = torch.autograd.grad(ref, (q32, k32, v32), grad)
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)


def test_without_the_scale_the_softmax_saturates_as_d_grows():
    # the mechanism of the chapter: unit-variance q, k; the largest weight -> 1 without 1/sqrt(d)
    g = torch.Generator().manual_seed(0)
    largest = {}
    for d in (4, 256):
        q, k = torch.randn(2000, 1, d, generator=g), torch.randn(2000, 16, d, generator=g)
        eye = torch.eye(16).expand(2000, 16, 16)  # values = one-hot positions: the output is the weights
        for scale in (1.0, None):
            largest[d, scale] = attention(q, k, eye, scale=scale).amax(-1).mean().item()
    assert largest[256, 1.0] > 0.85 > largest[4, 1.0]
    assert abs(largest[256, None] - largest[4, None]) < 0.05 and largest[256, None] < 0.35


def test_bad_inputs_raise_clear_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="floating"):
        attention(q.long(), k, v)
    with pytest.raises(TypeError, match="torch.Tensor"):
        attention(q.tolist(), k, v)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k, v[..., :6, :])  # 6 values for 7 keys
    with pytest.raises(ValueError, match="length, dim"):
        attention(q, torch.randn(8), v)
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not broadcast"):
        attention(q, k, v, mask=torch.ones(4, 2, 3, 5, 7, dtype=torch.bool))  # would change the output shape
    with pytest.raises(TypeError, match="boolean"):
        attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, mask=torch.ones(5, 7, dtype=torch.bool), is_causal=True)
