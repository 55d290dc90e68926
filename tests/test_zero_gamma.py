"""Zero-γ initialisation (``tricklib.zero_init_residual``) and the post-activation residual MLP.

The reference is torchvision: ``resnet18/resnet50(zero_init_residual=True)`` must equal, parameter
for parameter, the same net built without the flag under the same seed, its blocks wrapped in
``tricklib.Residual`` (sharing the modules) and passed through ``zero_init_residual``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

import tricklib as tl


def wrap_torchvision_block(block: nn.Module) -> nn.Sequential:
    """A torchvision BasicBlock/Bottleneck as ``ReLU(Residual(branch, shortcut=downsample)(x))``, sharing its modules."""
    if isinstance(block, BasicBlock):
        branch = nn.Sequential(block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2)
    elif isinstance(block, Bottleneck):
        branch = nn.Sequential(block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2, nn.ReLU(),
                               block.conv3, block.bn3)
    else:
        raise TypeError(type(block))
    return nn.Sequential(tl.Residual(branch, shortcut=block.downsample), nn.ReLU())


def wrap_torchvision_resnet(model: torchvision.models.ResNet) -> nn.ModuleList:
    return nn.ModuleList(wrap_torchvision_block(b) for layer in (model.layer1, model.layer2, model.layer3,
                                                                  model.layer4) for b in layer)


@pytest.mark.parametrize("arch, n_blocks", [("resnet18", 8), ("resnet50", 16)])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_torchvision_zero_init_residual(arch, n_blocks, seed):
    torch.manual_seed(seed)
    reference = getattr(torchvision.models, arch)(zero_init_residual=True)
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(zero_init_residual=False)
    names = tl.zero_init_residual(wrap_torchvision_resnet(model))
    assert len(names) == n_blocks
    expected, got = reference.state_dict(), model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    # the γ zeroed are those of the last BN of each block; the shortcut's BN is untouched
    last_bn = "bn2" if arch == "resnet18" else "bn3"
    zeroed = {k for k, v in got.items() if k.endswith(".weight") and "bn" in k and not v.any()}
    assert zeroed == {k for k in got if k.endswith(f"{last_bn}.weight")}
    assert model.layer2[0].downsample[1].weight.eq(1).all()


def test_wrapping_is_the_torchvision_block():
    # the reference test above is sound only if the wrapper computes what the block computes
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 64, 8, 8)
    for block in (model.layer1[0], ):
        assert torch.allclose(wrap_torchvision_block(block)(x), block(x), atol=1e-6)
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(wrap_torchvision_block(model.layer2[0])(x), model.layer2[0](x), atol=1e-6)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(wrap_torchvision_block(model.layer1[0])(x), model.layer1[0](x), atol=1e-5)


@pytest.mark.parametrize("train_mode", [True, False])
def test_every_block_starts_as_the_identity(train_mode):
    torch.manual_seed(0)
    model = tl.postact_residual_mlp(12, 16, 5, 3)
    names = tl.zero_init_residual(model)
    assert names == [f"{i}.0.block.4.weight" for i in range(1, 6)]
    model.train(train_mode)
    x = torch.randn(20, 12)
    h = model[0](x)
    for block in model[1:-1]:
        out = block(h)
        assert torch.equal(out, h)  # exactly: ReLU(h + 0) = h for h >= 0
        h = out
    assert torch.equal(model(x), model[-1](model[0](x)))  # the deep net is its stem and head


def test_gradients_at_zero_gamma():
    # with γ = 0 the branch's weights get no gradient at the first step; γ itself does:
    # dL/dγ = Σ_batch g ⊙ ẑ with g the gradient reaching the sum
    torch.manual_seed(0)
    model = tl.postact_residual_mlp(12, 16, 3, 3)
    tl.zero_init_residual(model)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    F.cross_entropy(model(x), y).backward()
    for block in model[1:-1]:
        branch = block[0].block
        assert not branch[0].weight.grad.any() and not branch[3].weight.grad.any()
        assert branch[4].weight.grad.abs().sum() > 0
    assert model[0][0].weight.grad.abs().sum() > 0  # the stem learns through the identity path


def test_default_gamma_is_not_the_identity_and_model_as_residual():
    torch.manual_seed(0)
    model = tl.postact_residual_mlp(12, 16, 2, 3)
    h = model[0](torch.randn(20, 12))
    assert not torch.equal(model[1](h), h)
    # a bare Residual is visited too, and a BN in the shortcut is left alone
    residual = tl.Residual(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), shortcut=nn.BatchNorm1d(4))
    assert tl.zero_init_residual(residual) == ["block.1.weight"]
    assert not residual.block[1].weight.any() and residual.shortcut.weight.eq(1).all()


def test_last_batchnorm_is_chosen_and_conv_branches():
    branch = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                           nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
    model = nn.Sequential(tl.Residual(branch))
    assert tl.zero_init_residual(model) == ["0.block.4.weight"]
    assert branch[1].weight.eq(1).all() and not branch[4].weight.any()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(model(x), x)


def test_errors_and_nothing_changed_on_error():
    with pytest.raises(TypeError, match="nn.Module"):
        tl.zero_init_residual("resnet")
    with pytest.raises(ValueError, match="no tricklib.Residual"):
        tl.zero_init_residual(torchvision.models.resnet18())
    good = tl.Residual(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    no_bn = tl.Residual(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    with pytest.raises(ValueError, match="contains no BatchNorm"):
        tl.zero_init_residual(nn.Sequential(good, no_bn))
    assert good.block[1].weight.eq(1).all()  # checked before anything is changed
    no_affine = tl.Residual(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False)))
    with pytest.raises(ValueError, match="affine=False"):
        tl.zero_init_residual(nn.Sequential(good, no_affine))
    assert good.block[1].weight.eq(1).all()


def reference_forward(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The post-activation residual MLP written out with F.linear and F.batch_norm (training mode)."""
    def bn(h, m):
        return F.batch_norm(h, None, None, m.weight, m.bias, training=True, eps=m.eps)

    stem = model[0]
    h = F.relu(bn(F.linear(x, stem[0].weight), stem[1]))
    for block in model[1:-1]:
        b = block[0].block
        branch = bn(F.linear(F.relu(bn(F.linear(h, b[0].weight), b[1])), b[3].weight), b[4])
        h = F.relu(h + branch)
    return F.linear(h, model[-1].weight, model[-1].bias)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postact_residual_mlp_matches_hand_written(seed):
    torch.manual_seed(seed)
    model = tl.postact_residual_mlp(10, 8, 4, 5).double()
    with torch.no_grad():  # non-default γ, β so that every parameter matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    out, ref = model(x), reference_forward(model, x)
    assert out.shape == (16, 5)
    torch.testing.assert_close(out, ref)
    g_out = torch.autograd.grad(out.sum(), [x, *model.parameters()])
    g_ref = torch.autograd.grad(ref.sum(), [x, *model.parameters()])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b)
    assert sum(isinstance(m, tl.Residual) for m in model.modules()) == 4
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Linear) and m is not model[-1])


@pytest.mark.parametrize("bad", [dict(depth=0), dict(width=0), dict(in_features=-1), dict(depth=2.5)])
def test_postact_residual_mlp_bad_arguments(bad):
    args = dict(in_features=4, width=4, depth=2, num_classes=3) | bad
    with pytest.raises((ValueError, TypeError)):
        tl.postact_residual_mlp(**args)


def test_pre_activation_branch_is_refused():
    # residual_mlp's blocks are BN → ReLU → Linear: zeroing that γ leaves the Linear's bias, not the identity
    torch.manual_seed(0)
    model = tl.residual_mlp(8, 8, 3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="pre-activation"):
        tl.zero_init_residual(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
