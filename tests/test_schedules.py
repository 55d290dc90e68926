"""Schedules against their torch.optim.lr_scheduler counterparts."""
import math
import warnings

import numpy as np
import pytest
import torch

from tricklib import check_schedule, cosine, linear_scaling, restart_steps, sgdr, step_decay, warmup


def _torch_lrs(make_sched, steps, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(lrs, dtype=torch.float64)


def _ours(fn, steps, lr=0.1):
    return torch.tensor([lr * fn(t) for t in range(steps)], dtype=torch.float64)


@pytest.mark.parametrize("T_0,T_mult,eta_min_ratio", [(10, 1, 0.0), (7, 2, 0.0), (5, 3, 0.1), (1, 1, 0.0), (3, 2, 0.5)])
def test_sgdr_matches_cosine_annealing_warm_restarts(T_0, T_mult, eta_min_ratio):
    steps = 200
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        o, T_0=T_0, T_mult=T_mult, eta_min=eta_min_ratio * 0.1), steps)
    torch.testing.assert_close(_ours(sgdr(T_0, T_mult, eta_min_ratio), steps), ref, rtol=1e-9, atol=1e-12)


def test_sgdr_through_lambda_lr_equals_reference():
    steps = 60
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2), steps)
    ours = _torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, sgdr(4, 2)), steps)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T,ratio", [(50, 0.0), (37, 0.2)])
def test_cosine_matches_cosine_annealing_lr(T, ratio):
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T, eta_min=ratio * 0.1), T + 1)
    torch.testing.assert_close(_ours(cosine(T, ratio), T + 1), ref, rtol=1e-7, atol=1e-10)
    assert cosine(T, ratio)(10 * T) == pytest.approx(ratio)


def test_step_decay_matches_multistep_lr():
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[30, 80], gamma=0.1), 120)
    torch.testing.assert_close(_ours(step_decay([30, 80], 0.1), 120), ref, rtol=1e-9, atol=1e-12)


def test_restart_steps_are_the_lr_minima():
    fn = sgdr(5, 2)
    ends = restart_steps(5, 2, 100)
    assert ends == [5, 15, 35, 75]
    for end in ends:  # the last step of a cycle (1-based) is step index end-1; the next one restarts at the base lr
        assert fn(end) == pytest.approx(1.0)
        assert fn(end - 1) < 0.2


@pytest.mark.parametrize("T_0, T_mult", [(3, 1), (4, 2), (2, 3), (np.int64(5), np.int32(2))])
def test_restart_steps_agree_with_sgdr_for_every_t_mult(T_0, T_mult):
    fn = sgdr(T_0, T_mult)
    ends = restart_steps(T_0, T_mult, 200)
    restarts = [t for t in range(1, 201) if fn(t) == 1.0]      # sgdr's own restarts (multiplier back at 1)
    assert ends == restarts[:len(ends)] and len(restarts) - len(ends) <= 1


@pytest.mark.parametrize("T_mult, error", [(1.5, TypeError), (2.0, TypeError), (0, ValueError), (True, TypeError)])
def test_restart_steps_refuses_what_sgdr_refuses(T_mult, error):
    for make in (lambda: sgdr(5, T_mult), lambda: restart_steps(5, T_mult, 100)):
        with pytest.raises(error, match="T_mult"):
            make()
    with pytest.raises(TypeError, match="T_0"):
        restart_steps(2.5, 1, 100)


@pytest.mark.parametrize("bad", [
    lambda: sgdr(0), lambda: sgdr(5, 0), lambda: sgdr(5, 1.5), lambda: sgdr(5, 1, -0.1), lambda: cosine(0),
    lambda: cosine(10, 1.5), lambda: step_decay([30, 10]), lambda: step_decay([10], 0.0), lambda: step_decay([0]),
])
def test_invalid_hyper_parameters_raise(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


# ---- warm-up, linear scaling, schedule checks (large-batch and cosine-decay chapters) ----------


@pytest.mark.parametrize("m,s", [(5, 0.1), (20, 1 / 3), (1, 0.5), (7, 1.0)])
@pytest.mark.parametrize("inner", ["cosine", "step"])
def test_warmup_matches_linear_lr_then_sequential_lr(m, s, inner):
    steps = 80
    inner_fn = cosine(steps - m) if inner == "cosine" else step_decay([10, 30], 0.5)

    def torch_sched(o):
        after = (torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps - m) if inner == "cosine"
                 else torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 30], gamma=0.5))
        return torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=s, total_iters=m), after], milestones=[m])

    ref = _torch_lrs(torch_sched, steps)
    torch.testing.assert_close(_ours(warmup(inner_fn, m, s), steps), ref, rtol=1e-7, atol=1e-10)
    # and through LambdaLR, as a reader would use it
    ours = _torch_lrs(lambda o: torch.optim.lr_scheduler.LambdaLR(o, warmup(inner_fn, m, s)), steps)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-10)


def test_warmup_from_zero_is_goyals_formula():
    m, lr = 8, 0.4
    f = warmup(cosine(100), m)  # start_factor=0: eta_t = t * eta / m
    for t in range(m):
        assert lr * f(t) == pytest.approx(t * lr / m, abs=1e-12)
    assert f(m) == 1.0 and f(m + 100) == pytest.approx(0.0)
    assert max(f(t) for t in range(200)) == 1.0  # never overshoots the base rate


def test_warmup_clock_restarts_and_zero_steps_is_identity():
    inner = step_decay([5], 0.1)
    f = warmup(inner, 10, 0.2)
    assert [f(10 + t) for t in range(8)] == [inner(t) for t in range(8)]  # inner schedule starts at its step 0
    assert warmup(inner, 0) is inner


def test_linear_scaling_rule():
    assert linear_scaling(0.1, 256) == pytest.approx(0.1)
    assert linear_scaling(0.1, 8192) == pytest.approx(3.2)  # Goyal et al.: 8k batch, lr 3.2
    assert linear_scaling(0.01, 32, base_batch=64) == pytest.approx(0.005)


def _goyal_imagenet():
    return step_decay([30, 60, 80], 0.1)


def test_check_schedule_counts_match_closed_forms():
    T = 1000
    rep = check_schedule(cosine(T), T, warn=False)
    expected = sum(1 for t in range(T) if 0.5 * (1 + math.cos(math.pi * t / T)) < 0.01) / T
    assert rep.fraction_below == pytest.approx(expected)
    assert rep.fraction_below == pytest.approx(math.acos(0.98) / math.pi, abs=2 / T)  # 6.4%
    rep = check_schedule(_goyal_imagenet(), 90, warn=False)  # per epoch: below 1% only after epoch 80
    assert rep.fraction_below == pytest.approx(10 / 90) and rep.first_below == 80
    assert check_schedule(lambda t: 1.0, 50, warn=False).final == 1.0


def test_check_schedule_warns_on_epoch_milestones_stepped_per_batch():
    steps = 20 * 15  # 20 epochs of 15 batches, milestones 30/60/90 meant as epochs
    with pytest.warns(UserWarning, match="stepped"):
        rep = check_schedule(_goyal_imagenet(), steps)
    assert rep.first_below == 80 and rep.fraction_below == pytest.approx((steps - 80) / steps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy schedule must not warn
        check_schedule(warmup(cosine(steps - 30), 30), steps)
        check_schedule(step_decay([steps // 2, 3 * steps // 4]), steps)


def test_check_schedule_accepts_a_recorded_torch_trace():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 90], gamma=0.1)
    trace = []
    for _ in range(300):
        trace.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    rep = check_schedule(trace.__getitem__, len(trace), warn=False)
    assert rep.first_below == 90 and rep.final == pytest.approx(1e-3)


@pytest.mark.parametrize("bad,err", [
    (lambda: warmup(cosine(10), -1), ValueError), (lambda: warmup(cosine(10), 2.5), TypeError),
    (lambda: warmup(cosine(10), 5, start_factor=1.5), ValueError), (lambda: warmup(cosine(10), 5, -0.1), ValueError),
    (lambda: warmup(cosine(10), 10, total_steps=10), ValueError),
    (lambda: warmup(cosine(10), 50, total_steps=10), ValueError),
    (lambda: warmup(0.1, 5), TypeError),
    (lambda: linear_scaling(-0.1, 256), ValueError), (lambda: linear_scaling(0.0, 256), ValueError),
    (lambda: linear_scaling(0.1, 0), ValueError), (lambda: linear_scaling(0.1, 64.0), TypeError),
    (lambda: linear_scaling(0.1, 64, base_batch=0), ValueError),
    (lambda: check_schedule(cosine(10), 0), ValueError),
    (lambda: check_schedule(cosine(10), 10, floor=0.0), ValueError),
    (lambda: check_schedule(cosine(10), 10, max_fraction=2.0), ValueError),
    (lambda: check_schedule([1.0], 1), TypeError),
])
def test_invalid_warmup_scaling_check_arguments_raise(bad, err):
    with pytest.raises(err):
        bad()
