"""Schedules against their torch.optim.lr_scheduler counterparts."""
import pytest
import torch

from tricklib import cosine, restart_steps, sgdr, step_decay


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


@pytest.mark.parametrize("bad", [
    lambda: sgdr(0), lambda: sgdr(5, 0), lambda: sgdr(5, 1.5), lambda: sgdr(5, 1, -0.1), lambda: cosine(0),
    lambda: cosine(10, 1.5), lambda: step_decay([30, 10]), lambda: step_decay([10], 0.0), lambda: step_decay([0]),
])
def test_invalid_hyper_parameters_raise(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()
