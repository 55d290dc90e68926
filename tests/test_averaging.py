"""Weight averaging against torch.optim.swa_utils: ModelEMA == AveragedModel + get_ema_multi_avg_fn and
SWA == AveragedModel (default avg_fn) update by update, precise_bn == update_bn, and the soups'
arithmetic and greedy rule."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

import tricklib as tl
from tricklib import SWA, ModelEMA, greedy_soup, precise_bn, uniform_soup

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def train_steps(model: nn.Module, steps: int, seed: int = 1, device: str = "cpu"):
    """Yield after each SGD step on random data (the weights and BN statistics move)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 3, 8, 8, generator=g).to(device)
        y = torch.randint(0, 4, (16,), generator=g).to(device)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        yield


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("buffers", ["average", "copy"])
@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
def test_ema_equals_averaged_model_update_by_update(device, buffers, decay):
    model = small_net().to(device)
    ema = ModelEMA(model, decay=decay, warmup=False, buffers=buffers)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=buffers == "average")
    ref.update_parameters(model)  # AveragedModel's first update copies the model, as ModelEMA's constructor
    for _ in train_steps(model, 12, device=device):
        ema.update(model)
        ref.update_parameters(model)
        ours, theirs = ema.module.state_dict(), ref.module.state_dict()
        for k, v in ours.items():
            if v.is_floating_point():
                torch.testing.assert_close(v, theirs[k], rtol=0, atol=0, msg=k)
            else:  # AveragedModel(use_buffers=True) averages num_batches_tracked through floats; we copy it
                assert torch.equal(v, dict(model.named_buffers())[k]), k
    assert ema.updates == 12


def test_ema_warmup_follows_its_formula():
    model = small_net()
    ema = ModelEMA(model, decay=0.99, warmup=True)
    expected = [p.detach().clone() for p in model.parameters()]
    for t, _ in enumerate(train_steps(model, 30)):
        beta = min(0.99, (1 + t) / (10 + t))
        assert ema.decay_at(t) == beta
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, model.parameters())]
        ema.update(model)
    for e, a in zip(expected, ema.module.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    assert ModelEMA(model, decay=0.9999).decay_at(0) == pytest.approx(0.1)


def test_ema_leaves_the_model_alone_and_does_not_track_gradients():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = ModelEMA(model)
    ema.update(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training and model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ema_on_the_cpu_for_a_model_on_the_gpu():
    model = small_net().cuda()
    ema = ModelEMA(model, decay=0.9, warmup=False, device="cpu")
    ref = ModelEMA(model.cpu(), decay=0.9, warmup=False)
    model.cuda()
    for _ in train_steps(model, 5, device="cuda"):
        ema.update(model)
        ref.update(model.cpu())
        model.cuda()
    assert next(ema.module.parameters()).device.type == "cpu"
    for a, b in zip(ema.module.parameters(), ref.module.parameters()):
        torch.testing.assert_close(a, b)


def test_ema_in_low_precision_and_after_moving_it():
    model = small_net().to(torch.bfloat16)
    ema = ModelEMA(model, decay=0.5, warmup=False)
    ema.module.to(torch.float32)  # the average may live in another dtype than the model
    ema.update(model)
    assert next(ema.module.parameters()).dtype == torch.float32
    for a, p in zip(ema.module.parameters(), model.parameters()):
        torch.testing.assert_close(a, p.float())


def test_ema_survives_a_checkpoint(tmp_path):
    model = small_net()
    ema = ModelEMA(model, decay=0.9)
    steps = train_steps(model, 10)
    for _ in range(5):
        next(steps)
        ema.update(model)
    tl.save_checkpoint(tmp_path / "ck.pt", ema=ema)
    resumed = ModelEMA(small_net(seed=3), decay=0.9)
    tl.load_checkpoint(tmp_path / "ck.pt", ema=resumed)
    assert resumed.updates == 5
    for _ in steps:
        ema.update(model)
        resumed.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_errors():
    model = small_net()
    for decay in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match="decay"):
            ModelEMA(model, decay=decay)
    with pytest.raises(ValueError, match="buffers"):
        ModelEMA(model, buffers="mean")
    with pytest.raises(TypeError, match="nn.Module"):
        ModelEMA(model.state_dict())
    with pytest.raises(ValueError, match="architecture"):
        ModelEMA(model).update(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="ModelEMA state"):
        ModelEMA(model).load_state_dict({"module": model.state_dict()})



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("buffers", ["average", "copy"])
def test_swa_equals_averaged_model_update_by_update(device, buffers):
    model = small_net().to(device)
    swa = SWA(model, buffers=buffers)
    ref = AveragedModel(model, use_buffers=buffers == "average")  # default avg_fn: the equal-weight mean
    assert swa.n_averaged == 0
    for n, _ in enumerate(train_steps(model, 15, device=device), 1):
        swa.update(model)
        ref.update_parameters(model)
        assert swa.n_averaged == n == ref.n_averaged.item()
        ours, theirs = swa.module.state_dict(), ref.module.state_dict()
        for k, v in ours.items():
            if v.is_floating_point():
                # AveragedModel lerps on CUDA and computes a + (b - a) / (n + 1) on the CPU: rounding apart
                torch.testing.assert_close(v, theirs[k], rtol=2e-6, atol=1e-7, msg=k)
            else:  # AveragedModel(use_buffers=True) averages num_batches_tracked through floats; we copy it
                assert torch.equal(v, dict(model.named_buffers())[k]), k
    assert next(swa.module.parameters()).device.type == device


def test_swa_is_the_mean_of_the_snapshots_and_handles_buffers_as_told():
    model = small_net()
    averaged, copied = SWA(model), SWA(model, buffers="copy")
    snapshots = []
    for _ in train_steps(model, 6):
        averaged.update(model)
        copied.update(model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    for k, v in averaged.module.state_dict().items():
        stacked = torch.stack([s[k] for s in snapshots])
        if v.is_floating_point():
            torch.testing.assert_close(v, stacked.mean(0), rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(v, snapshots[-1][k]), k
    for k in ("1.running_mean", "1.running_var", "4.running_var"):  # "copy": the last snapshot's statistics
        assert torch.equal(copied.module.state_dict()[k], snapshots[-1][k])
        assert not torch.equal(averaged.module.state_dict()[k], snapshots[-1][k])
    torch.testing.assert_close(copied.module[0].weight, averaged.module[0].weight, rtol=0, atol=0)


def test_swa_before_any_update_and_of_a_constant_model():
    model = small_net()
    swa = SWA(model)
    assert swa.n_averaged == 0 and not swa.module.training and model.training
    assert not any(p.requires_grad for p in swa.module.parameters())
    for a, b in zip(swa.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    for _ in range(5):  # the mean of equal snapshots is the snapshot, exactly
        swa.update(model)
    for a, b in zip(swa.module.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_swa_leaves_the_model_alone_and_follows_a_reassigned_parameter():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swa = SWA(model)
    swa.update(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model[0].weight = nn.Parameter(torch.ones_like(model[0].weight))  # found again by name, not by identity
    swa.update(model)
    torch.testing.assert_close(swa.module[0].weight, (before["0.weight"] + 1) / 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_swa_on_the_cpu_for_a_model_on_the_gpu():
    model = small_net().cuda()
    swa = SWA(model, device="cpu")
    ref = AveragedModel(model, device="cpu", use_buffers=True)
    for _ in train_steps(model, 5, device="cuda"):
        swa.update(model)
        ref.update_parameters(model)
    assert next(swa.module.parameters()).device.type == "cpu"
    for a, b in zip(swa.module.parameters(), ref.module.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)


def test_swa_in_float32_for_a_bfloat16_model():
    model = small_net().to(torch.bfloat16)
    swa = SWA(model)
    swa.module.to(torch.float32)  # the average may live in another dtype than the model
    snapshots = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append([p.float().clone() for p in model.parameters()])
        swa.update(model)
    assert next(swa.module.parameters()).dtype == torch.float32
    for a, *ps in zip(swa.module.parameters(), *snapshots):
        torch.testing.assert_close(a, torch.stack(ps).mean(0), rtol=1e-6, atol=1e-6)


def test_swa_survives_a_checkpoint(tmp_path):
    model = small_net()
    swa = SWA(model)
    steps = train_steps(model, 10)
    for _ in range(4):
        next(steps)
        swa.update(model)
    tl.save_checkpoint(tmp_path / "ck.pt", swa=swa)
    resumed = SWA(small_net(seed=3))
    tl.load_checkpoint(tmp_path / "ck.pt", swa=resumed)
    assert resumed.n_averaged == 4
    for _ in steps:
        swa.update(model)
        resumed.update(model)
    for a, b in zip(swa.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)


def test_swa_then_precise_bn_equals_averaged_model_then_update_bn():
    model = small_net()
    swa, ref = SWA(model, buffers="copy"), AveragedModel(model)
    for _ in train_steps(model, 8):
        swa.update(model)
        ref.update_parameters(model)
    g = torch.Generator().manual_seed(5)
    data = [torch.randn(16, 3, 8, 8, generator=g) for _ in range(4)]
    precise_bn(swa.module, data)
    update_bn(data, ref)
    for (k, a), b in zip(swa.module.state_dict().items(), ref.module.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6, msg=k)


def test_swa_errors():
    model = small_net()
    with pytest.raises(TypeError, match="nn.Module"):
        SWA(model.state_dict())
    with pytest.raises(ValueError, match="buffers"):
        SWA(model, buffers="mean")
    with pytest.raises(ValueError, match="architecture"):
        SWA(model).update(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="architecture"):
        SWA(model).update(small_net().append(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="SWA state"):
        SWA(model).load_state_dict({"module": model.state_dict()})
    with pytest.raises(ValueError, match="SWA state"):
        SWA(model).load_state_dict([model.state_dict(), 3])
    for n in (-1, 1.5, True):
        with pytest.raises(ValueError, match="n_averaged"):
            SWA(model).load_state_dict({"module": model.state_dict(), "n_averaged": n})


@pytest.mark.parametrize("max_batches", [None, 3])
def test_precise_bn_equals_update_bn(max_batches):
    model = small_net()
    for _ in train_steps(model, 5):
        pass
    model.eval()
    g = torch.Generator().manual_seed(7)
    data = [(torch.randn(16, 3, 8, 8, generator=g) * 2 + 1, torch.zeros(16)) for _ in range(6)]
    ref = small_net()
    ref.load_state_dict(model.state_dict())
    precise_bn(model, data, max_batches=max_batches)
    update_bn(data[:max_batches] if max_batches else data, ref)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=k)
    assert not model.training  # mode restored
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_precise_bn_takes_bare_tensors_and_refuses_nonsense():
    model = small_net()
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    precise_bn(model, batches)
    bn = model[1]
    assert bn.num_batches_tracked.item() == 2
    with pytest.raises(ValueError, match="no BatchNorm"):
        precise_bn(nn.Linear(2, 2), batches)
    with pytest.raises(ValueError, match="empty"):
        precise_bn(model, [])
    with pytest.raises(ValueError, match="max_batches"):
        precise_bn(model, batches, max_batches=0)
    assert bn.momentum == 0.1


def test_uniform_soup_averages_floats_and_keeps_integers():
    states = [small_net(seed).state_dict() for seed in range(3)]
    for i, s in enumerate(states):
        s["1.num_batches_tracked"] = torch.tensor(i + 5)
    soup = uniform_soup(states)
    for k, v in soup.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, torch.stack([s[k] for s in states]).mean(0))
            assert v.dtype == states[0][k].dtype
    assert soup["1.num_batches_tracked"].item() == 5
    half = uniform_soup([{k: v.half() if v.is_floating_point() else v for k, v in s.items()} for s in states])
    assert half["0.weight"].dtype == torch.float16
    with pytest.raises(ValueError, match="at least one"):
        uniform_soup([])
    with pytest.raises(ValueError, match="other keys"):
        uniform_soup([states[0], nn.Linear(2, 2).state_dict()])
    with pytest.raises(ValueError, match="shape"):
        uniform_soup([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_greedy_soup_adds_only_what_does_not_hurt():
    # one weight; the held-out score is -(w - 1)^2: 1.2 and 0.9 average to a better point,
    # 3.0 would drag the soup away and is left out
    states = [{"w": torch.tensor([w])} for w in (3.0, 1.2, 0.9, 1.05)]
    calls = []

    def score(state):
        calls.append(1)
        return -float((state["w"] - 1.0) ** 2)

    soup, kept = greedy_soup(states, score)
    assert kept[0] == 3  # the best single model first
    assert 0 not in kept
    assert score(soup) >= max(score(s) for s in states)
    assert len(calls) == 2 * len(states) - 1 + 1 + len(states)
    torch.testing.assert_close(soup["w"], torch.stack([states[i]["w"] for i in kept]).mean(0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolate_equals_lerp_and_hits_the_ends(device, seed):
    a = {k: v.to(device) for k, v in small_net(seed).state_dict().items()}
    b = {k: v.to(device) for k, v in small_net(seed + 10).state_dict().items()}
    b["1.num_batches_tracked"] = torch.tensor(7, device=device)
    before = {k: v.clone() for k, v in a.items()}
    for t in (0.0, 0.3, 0.5, 1.0, -0.5, 1.5, 2):
        out = tl.interpolate(a, b, t)
        assert list(out) == list(a)
        for k, v in out.items():
            assert v.dtype == a[k].dtype and v.device == a[k].device
            if v.is_floating_point():
                torch.testing.assert_close(v, torch.lerp(a[k], b[k], float(t)))
            else:
                assert torch.equal(v, a[k])  # integers from state_a
    for k, v in tl.interpolate(a, b, 0.0).items():
        assert torch.equal(v, a[k])
    for k, v in tl.interpolate(a, b, 1.0).items():
        if v.is_floating_point():
            assert torch.equal(v, b[k])
    for k, v in tl.interpolate(a, b, 0.5).items():  # the midpoint is the uniform soup of the two
        assert torch.equal(v, uniform_soup([a, b])[k])
    assert all(torch.equal(before[k], a[k]) for k in a)  # inputs untouched


def test_interpolate_moves_a_linear_model_along_a_line_of_outputs():
    # for f(x) = W x + c the outputs at θ(t) are (1 - t) f_A(x) + t f_B(x), exactly up to rounding
    torch.manual_seed(0)
    f_a, f_b, f_t = nn.Linear(5, 3), nn.Linear(5, 3), nn.Linear(5, 3)
    x = torch.randn(7, 5)
    for t in (0.25, 0.5, 0.9):
        f_t.load_state_dict(tl.interpolate(f_a.state_dict(), f_b.state_dict(), t))
        torch.testing.assert_close(f_t(x), (1 - t) * f_a(x) + t * f_b(x))


def test_interpolate_keeps_low_precision_and_refuses_nonsense():
    a, b = small_net(0).state_dict(), small_net(1).state_dict()
    half = tl.interpolate({k: v.half() if v.is_floating_point() else v for k, v in a.items()},
                          {k: v.half() if v.is_floating_point() else v for k, v in b.items()}, 0.5)
    assert half["0.weight"].dtype == torch.float16
    torch.testing.assert_close(half["0.weight"], ((a["0.weight"].half().double() + b["0.weight"].half().double()) / 2).half())
    for bad in ("0.5", torch.tensor(0.5), None, True):
        with pytest.raises(TypeError, match="real number"):
            tl.interpolate(a, b, bad)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            tl.interpolate(a, b, bad)
    with pytest.raises(ValueError, match="other keys"):
        tl.interpolate(a, nn.Linear(2, 2).state_dict(), 0.5)
    with pytest.raises(ValueError, match="shape"):
        tl.interpolate({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)
