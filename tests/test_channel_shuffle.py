"""channel_shuffle beyond tests/test_layers.py (identities, inverse, dtypes, layouts, gradcheck, errors) and
channel_dependency_matrix against the full Jacobian from torch.autograd.functional.jacobian."""
import pytest
import torch
from torch import nn

from tricklib import channel_dependency_matrix, channel_shuffle

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- channel_shuffle ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.bool])
def test_channel_shuffle_dtypes_equal_nn_channel_shuffle(device, dtype):
    x = (torch.arange(2 * 12 * 3 * 2).reshape(2, 12, 3, 2) % 5).to(device, dtype)
    for groups in (1, 2, 3, 4, 6, 12):
        out = channel_shuffle(x, groups)
        assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
        assert torch.equal(out, nn.ChannelShuffle(groups)(x))


def test_channel_shuffle_is_the_formula_and_one_or_c_groups_are_the_identity():
    n, c, g = 3, 12, 4
    x = torch.randn(n, c, 5)
    out = channel_shuffle(x, g)
    for grp in range(g):  # channel grp * C/G + i  ->  i * G + grp
        for i in range(c // g):
            assert torch.equal(out[:, i * g + grp], x[:, grp * (c // g) + i])
    assert torch.equal(channel_shuffle(x, 1), x)
    assert torch.equal(channel_shuffle(x, c), x)
    assert channel_shuffle(x, 4).data_ptr() != x.data_ptr()  # a copy, except where it is the identity


def test_channel_shuffle_by_c_over_g_undoes_it():
    x = torch.randn(2, 24, 3, 3)
    for g in (2, 3, 4, 6, 8):
        assert torch.equal(channel_shuffle(channel_shuffle(x, g), 24 // g), x)


def test_channel_shuffle_non_contiguous_and_channels_last():
    x = torch.randn(2, 8, 5, 4)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(channel_shuffle(cl, 4), nn.ChannelShuffle(4)(x))
    t = torch.randn(2, 4, 5, 8).transpose(1, 3)  # [2, 8, 5, 4], not contiguous
    assert torch.equal(channel_shuffle(t, 2), nn.ChannelShuffle(2)(t.contiguous()))


def test_channel_shuffle_gradcheck():
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: channel_shuffle(t, 3), (x,))
    # the gradient of a permutation is the inverse permutation of the upstream gradient
    g = torch.randn(2, 6, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(channel_shuffle(x, 3), x, g)
    assert torch.equal(grad, channel_shuffle(g, 2))


def test_channel_shuffle_errors():
    with pytest.raises(ValueError, match="divisible"):
        channel_shuffle(torch.randn(2, 6, 3), 4)
    with pytest.raises(ValueError, match=r"\[N, C, \*\]"):
        channel_shuffle(torch.randn(6), 2)
    with pytest.raises(ValueError, match="groups"):
        channel_shuffle(torch.randn(2, 6), -2)
    with pytest.raises(TypeError, match="groups"):
        channel_shuffle(torch.randn(2, 6), 2.0)
    with pytest.raises(TypeError, match="groups"):
        channel_shuffle(torch.randn(2, 6), True)
    with pytest.raises(TypeError, match="x"):
        channel_shuffle([[1.0, 2.0]], 1)


# --- channel_dependency_matrix ------------------------------------------------------------------------------

class _Shuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        return channel_shuffle(x, self.groups)


def _group_stack(c: int, groups: int, layers: int, shuffle: bool, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    mods = []
    for _ in range(layers):
        if shuffle:
            mods.append(_Shuffle(groups))
        mods += [nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.Tanh()]
    return nn.Sequential(*mods).to(dtype)


def _reference(model, x, v):
    # brute force: the full Jacobian, contracted with v over each output channel
    J = torch.autograd.functional.jacobian(model, x)  # [N, Co, *S, N, Ci, *S]
    out_dims = model(x).dim()
    Jv = (v.reshape(*v.shape, *[1] * x.dim()) * J).sum(dim=[d for d in range(out_dims) if d != 1])
    return Jv.transpose(1, 2).flatten(2).norm(dim=2), J  # Jv: [Co, N, Ci, *S] -> [Co, Ci]; the full Jacobian


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("groups,layers,shuffle", [(2, 1, False), (2, 2, True), (4, 3, False), (4, 2, True)])
def test_channel_dependency_matches_full_jacobian(groups, layers, shuffle, vectorize):
    model = _group_stack(8, groups, layers, shuffle)
    x = torch.randn(2, 8, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(2, 8, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    D = channel_dependency_matrix(model, x, direction=v, vectorize=vectorize)
    ref, J = _reference(model, x, v)
    assert D.shape == (8, 8) and D.dtype == torch.float64
    torch.testing.assert_close(D, ref, rtol=1e-10, atol=1e-12)
    # the support is the support of the full Jacobian's channel blocks
    blocks = J.permute(1, 5, 0, 2, 3, 4, 6, 7).flatten(2).norm(dim=2)  # [Co, Ci]: Frobenius norm of each block
    assert torch.equal(D > 0, blocks > 0)
    # the default direction gives the same support
    assert torch.equal(channel_dependency_matrix(model, x) > 0, blocks > 0)


def test_channel_dependency_block_diagonal_without_shuffle_dense_with_it():
    x = torch.randn(3, 8, 5, 5)
    for layers in (1, 2, 3):
        D = channel_dependency_matrix(_group_stack(8, 4, layers, shuffle=False, dtype=torch.float32), x)
        assert torch.equal(D > 0, torch.block_diag(*[torch.ones(2, 2)] * 4).bool())
    # 4 groups of 2 channels: the shuffled stack reaches 2, 4, then all 8 inputs
    reach = [int((channel_dependency_matrix(_group_stack(8, 4, layers, shuffle=True, dtype=torch.float32), x) > 0)
                 .sum(1).min()) for layers in (1, 2, 3)]
    assert reach == [2, 4, 8]


def test_channel_dependency_other_output_shapes_and_buffers():
    # a classifier head: [N, C, H, W] -> [N, K]; BatchNorm statistics restored; 1-D convolutions
    head = nn.Sequential(nn.Conv2d(4, 6, 1, groups=2), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 9, 3))
    x = torch.randn(5, 4, 3, 3)
    before = head[1].running_mean.clone()
    D = channel_dependency_matrix(head, x)
    assert D.shape == (3, 4) and (D > 0).all()
    assert torch.equal(head[1].running_mean, before)
    conv1d = nn.Conv1d(6, 6, 3, groups=3)
    D1 = channel_dependency_matrix(conv1d, torch.randn(2, 6, 7))
    assert torch.equal(D1 > 0, torch.block_diag(*[torch.ones(2, 2)] * 3).bool())


def test_channel_dependency_errors():
    conv = nn.Conv2d(2, 2, 1)
    with pytest.raises(TypeError, match="floating"):
        channel_dependency_matrix(conv, torch.ones(1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[N, C, \*\]"):
        channel_dependency_matrix(lambda t: t, torch.randn(3))
    with pytest.raises(ValueError, match=r"\[N, C, \*\]"):
        channel_dependency_matrix(lambda t: t, torch.randn(0, 2))
    with pytest.raises(TypeError, match="tensor"):
        channel_dependency_matrix(lambda t: (t,), torch.randn(2, 2))
    with pytest.raises(ValueError, match="output"):
        channel_dependency_matrix(lambda t: t.sum(1), torch.randn(2, 2))
