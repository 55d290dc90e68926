"""grid_points and random_points: coverage, scales, reproducibility, validation."""
import math

import pytest
import torch

import tricklib
from tricklib import grid_points, random_points

SPACE = {"lr": (1e-5, 1.0, "log"), "dropout": (0.0, 0.5)}


def test_grid_is_cell_midpoints_on_each_scale():
    pts = grid_points(SPACE, 9)
    assert len(pts) == 9 and all(set(p) == {"lr", "dropout"} for p in pts)
    lrs = sorted({round(math.log10(p["lr"]), 9) for p in pts})
    drops = sorted({round(p["dropout"], 9) for p in pts})
    # log10(lr) in [-5, 0]: midpoints of 3 cells; dropout in [0, 0.5]: midpoints of 3 cells
    assert lrs == pytest.approx([-5 + 5 / 6, -2.5, -5 / 6])
    assert drops == pytest.approx([0.5 / 6, 0.25, 2.5 / 6])
    # first axis varies slowest, and every combination appears once
    assert [p["lr"] for p in pts[:3]] == pytest.approx([pts[0]["lr"]] * 3)
    assert len({(p["lr"], p["dropout"]) for p in pts}) == 9


def test_grid_tests_k_values_per_axis_random_tests_n():
    grid, rand = grid_points(SPACE, 16), random_points(SPACE, 16, generator=0)
    assert len({p["lr"] for p in grid}) == 4
    assert len({p["lr"] for p in rand}) == 16


@pytest.mark.parametrize("n,d", [(1, 1), (7, 1), (8, 3), (27, 3), (16, 4)])
def test_grid_sizes(n, d):
    space = {f"x{i}": (0.0, 1.0) for i in range(d)}
    pts = grid_points(space, n)
    assert len(pts) == n and len({tuple(p.values()) for p in pts}) == n
    if n == 1:
        assert pts == [{"x0": 0.5}]


@pytest.mark.parametrize("seed", range(3))
def test_random_points_distribution_and_bounds(seed):
    pts = random_points(SPACE, 4000, generator=seed)
    lr = torch.tensor([p["lr"] for p in pts], dtype=torch.float64)
    dropout = torch.tensor([p["dropout"] for p in pts], dtype=torch.float64)
    assert lr.min() >= 1e-5 and lr.max() <= 1.0 and dropout.min() >= 0 and dropout.max() <= 0.5
    # log-uniform: each decade holds ~1/5 of the points; linear: each half ~1/2
    decade_counts = torch.histc(lr.log10(), bins=5, min=-5, max=0) / len(pts)
    assert torch.allclose(decade_counts, torch.full((5,), 0.2, dtype=torch.float64), atol=0.03)
    assert abs((dropout < 0.25).double().mean().item() - 0.5) < 0.03


def test_random_points_reproducible_and_prefix_consistent():
    a = random_points(SPACE, 20, generator=7)
    assert a == random_points(SPACE, 20, generator=torch.Generator().manual_seed(7))
    assert random_points(SPACE, 5, generator=7) == a[:5]
    assert a != random_points(SPACE, 20, generator=8)
    assert random_points(SPACE, 0, generator=0) == []


@pytest.mark.parametrize("space,error", [
    ({}, ValueError), ([("lr", (0, 1))], TypeError), ({"lr": (1.0, 0.1)}, ValueError), ({"lr": (0.1, 0.1)}, ValueError),
    ({"lr": (0.0, 1.0, "log")}, ValueError), ({"lr": (-1.0, 1.0, "log")}, ValueError), ({"lr": (0, 1, "exp")}, ValueError),
    ({"lr": (0, float("inf"))}, ValueError), ({"lr": (0, 1, "log", 3)}, ValueError), ({"lr": "0,1"}, ValueError),
    ({"lr": ("0", 1)}, ValueError), ({1: (0, 1)}, TypeError),
])
def test_bad_spaces_raise(space, error):
    with pytest.raises(error):
        grid_points(space, 4)
    with pytest.raises(error):
        random_points(space, 4, generator=0)


def test_bad_budgets_and_generators_raise():
    with pytest.raises(ValueError, match="nearest: 9 or 16"):
        grid_points(SPACE, 10)
    with pytest.raises(ValueError, match="n must be"):
        grid_points(SPACE, 0)
    with pytest.raises(ValueError, match="n must be"):
        random_points(SPACE, -1, generator=0)
    with pytest.raises(TypeError, match="n must be"):
        random_points(SPACE, 2.5, generator=0)
    with pytest.raises(TypeError, match="generator"):
        random_points(SPACE, 3, generator=None)


def test_sobol_points_fill_the_space_evenly_and_follow_each_axis_scale():
    space = {"lr": (1e-4, 1.0, "log"), "dropout": (0.0, 0.5)}
    pts = tricklib.sobol_points(space, 64, generator=3)
    lr = torch.tensor([p["lr"] for p in pts], dtype=torch.float64)
    dropout = torch.tensor([p["dropout"] for p in pts], dtype=torch.float64)
    assert (lr >= 1e-4).all() and (lr <= 1.0).all() and (dropout >= 0).all() and (dropout <= 0.5).all()
    # 64 points of a Sobol sequence: exactly 8 in each eighth of every axis (on its own scale)
    u_lr = (lr.log() - math.log(1e-4)) / (0 - math.log(1e-4))
    for u in (u_lr, dropout / 0.5):
        assert torch.bincount((u * 8).floor().long().clamp(max=7), minlength=8).tolist() == [8] * 8
    # same seed, same points; another seed, other points; prefixes are smaller searches
    assert pts == tricklib.sobol_points(space, 64, generator=3)
    assert pts != tricklib.sobol_points(space, 64, generator=4)
    assert tricklib.sobol_points(space, 16, generator=3) == pts[:16]
    expected = torch.quasirandom.SobolEngine(2, scramble=True, seed=3).draw(4, dtype=torch.float64)
    assert [p["dropout"] for p in pts[:4]] == pytest.approx((expected[:, 1] * 0.5).tolist())
    with pytest.raises(TypeError):
        tricklib.sobol_points(space, 4, generator="x")
