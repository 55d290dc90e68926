"""Mixed-precision helpers against torch.finfo facts and GradScaler's documented behaviour."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tricklib import amp_step, autocast_dtype, lost_update_fraction, overflow_fraction, underflow_fraction

FP16 = torch.finfo(torch.float16)
BF16 = torch.finfo(torch.bfloat16)


def test_autocast_dtype_per_device():
    assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype(torch.device("mps")) == torch.float16
    if torch.cuda.is_available():
        assert autocast_dtype("cuda") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    with pytest.raises(ValueError):
        autocast_dtype("meta")


def test_fp16_underflow_boundary_is_half_the_smallest_subnormal():
    smallest_subnormal = FP16.smallest_normal * 2.0**-10  # 2^-14 * 2^-10 = 2^-24
    assert smallest_subnormal == 2.0**-24
    x = torch.tensor([2.0**-26, 2.0**-25, 2.0**-25 * 1.01, 2.0**-24, FP16.smallest_normal, 1.0])
    # 2^-26 and 2^-25 (a tie, rounds to the even 0) flush; 2^-25 * 1.01 rounds up to 2^-24
    assert underflow_fraction(x) == pytest.approx(2 / 6)
    assert underflow_fraction(-x) == pytest.approx(2 / 6)
    assert underflow_fraction(x, scale=4.0) == 0.0  # loss scaling moves them above the boundary
    assert underflow_fraction([x[:3], x[3:]]) == pytest.approx(2 / 6)  # a list of tensors counts together


def test_bf16_keeps_fp32_range():
    x = torch.tensor([2.0**-30, 2.0**-60, 1e-30])
    assert underflow_fraction(x, torch.bfloat16) == 0.0
    assert underflow_fraction(x, torch.float16) == 1.0
    assert BF16.smallest_normal == torch.finfo(torch.float32).smallest_normal


def test_underflow_fraction_matches_a_direct_count_on_random_gradients():
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(10_000, generator=g) * 2.0 ** torch.randint(-40, 0, (10_000,), generator=g).float()
        for scale in (1.0, 2.0**8, 2.0**16):
            expected = ((x * scale).half() == 0).float().mean().item()
            assert underflow_fraction(x, scale=scale) == pytest.approx(expected)
        assert underflow_fraction(x, scale=2.0**8) < underflow_fraction(x)


def test_zeros_are_not_counted_and_all_zero_is_zero():
    assert underflow_fraction(torch.zeros(5)) == 0.0
    assert underflow_fraction(torch.tensor([0.0, 0.0, 2.0**-30, 1.0])) == pytest.approx(0.5)


def test_overflow_fraction_at_fp16_max():
    x = torch.tensor([FP16.max, 1.0, 2.0**16, -(2.0**17)])
    assert overflow_fraction(x) == pytest.approx(2 / 4)  # 65504 is finite, 65536 is not
    assert overflow_fraction(torch.tensor([1.0, 2.0]), scale=2.0**15) == pytest.approx(1 / 2)  # 2^16 overflows
    assert overflow_fraction(torch.tensor([1e30]), torch.bfloat16) == 0.0
    assert overflow_fraction(torch.tensor([float("inf")])) == 0.0  # already infinite entries are not counted


def test_lost_updates_at_the_fp16_spacing():
    eps = FP16.eps  # spacing of fp16 numbers in [1, 2): 2^-10
    assert eps == 2.0**-10
    theta = torch.ones(4)
    delta = torch.tensor([eps / 4, eps / 2, eps * 0.75, eps])  # eps/2 is a tie: rounds to the even 1.0
    assert lost_update_fraction(theta, delta) == pytest.approx(2 / 4)
    assert ((theta.half() + delta.half()) == theta.half()).tolist() == [True, True, False, False]
    assert ((theta + delta) == theta).sum() == 0  # fp32 master weights keep every one of them
    assert lost_update_fraction(theta, delta, torch.bfloat16) == 1.0  # bf16: spacing 2^-7 at 1
    assert lost_update_fraction([theta * 1024], [delta * 1024]) == pytest.approx(2 / 4)  # relative to |theta|
    assert lost_update_fraction(theta, torch.zeros(4)) == 0.0


@pytest.mark.parametrize("bad,err", [
    (lambda: underflow_fraction(torch.ones(2), torch.float32), ValueError),
    (lambda: underflow_fraction(torch.ones(2), scale=0.0), ValueError),
    (lambda: underflow_fraction(torch.ones(2, dtype=torch.long)), TypeError),
    (lambda: underflow_fraction([1.0, 2.0]), TypeError),
    (lambda: underflow_fraction([]), ValueError),
    (lambda: overflow_fraction(torch.ones(2), scale=-1.0), ValueError),
    (lambda: lost_update_fraction(torch.ones(3), torch.ones(2)), ValueError),
    (lambda: lost_update_fraction(torch.ones(3), torch.ones(3), torch.float64), ValueError),
])
def test_invalid_arguments_raise(bad, err):
    with pytest.raises(err):
        bad()


# ---- amp_step against a hand-written step and GradScaler's contract ----------------------------

def _setup(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    return model, x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plain_and_fp32_scaled_steps_equal_a_hand_written_step(seed):
    model, x, y = _setup(seed)
    ref = copy.deepcopy(model)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    loss_ref = F.cross_entropy(ref(x), y)
    loss_ref.backward()
    opt_ref.step()
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        ours = copy.deepcopy(model)
        loss = amp_step(ours, torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), F.cross_entropy, x, y,
                        scaler=scaler)
        assert loss == pytest.approx(loss_ref.item())
        for p, q in zip(ours.parameters(), ref.parameters()):
            # scaling by a power of two and unscaling is exact in fp32
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_scaler_skips_a_step_with_inf_gradients_and_halves_the_scale():
    model, x, y = _setup(0)
    before = copy.deepcopy(model.state_dict())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    amp_step(model, opt, lambda out, t: F.cross_entropy(out, t) * float("inf"), x, y, scaler=scaler)
    assert scaler.get_scale() == 2.0**15  # backoff_factor 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the step was skipped


def test_scale_grows_after_growth_interval_good_steps():
    model, x, y = _setup(1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        amp_step(model, opt, F.cross_entropy, x, y, scaler=scaler)
    assert scaler.get_scale() == 16.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_step_keeps_fp32_master_weights(dtype):
    model, x, y = _setup(2)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = amp_step(model, opt, F.cross_entropy, x, y, dtype=dtype,
                    scaler=torch.amp.GradScaler("cpu") if dtype == torch.float16 else None)
    assert seen == [dtype]  # the matrix product ran in 16 bits
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    # and the update is close to the fp32 one (16-bit forward/backward, fp32 weights)
    loss_ref = F.cross_entropy(ref(x), y)
    loss_ref.backward()
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    assert loss == pytest.approx(loss_ref.item(), rel=0.02)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0.02)


def test_amp_step_rejects_bad_dtype_and_scaler():
    model, x, y = _setup(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        amp_step(model, opt, F.cross_entropy, x, y, dtype=torch.float64)
    with pytest.raises(TypeError):
        amp_step(model, opt, F.cross_entropy, x, y, scaler=2.0**16)
