"""The verdict every chapter prints: paired differences, the sign-flip test, seeds, tolerant checks.

A verdict is only worth printing if "clear" is rare when nothing happens and common when
something does: the null simulations below check the first (at most 5% of comparisons
called clear, for Gaussian, heavy-tailed and discrete differences), the power
simulations the second, and a brute-force enumeration checks the p-value itself.
"""
from __future__ import annotations

import importlib.util
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import tricklib
from tricklib import Paired, compare, seeds, sign_flip_p_value
from tricklib.measure import ALPHA, MIN_SEEDS_FOR_CLEAR

from conftest import ROOT


def reference_p(diffs):
    """Two-sided sign-flip p-value by brute force over every sign pattern."""
    observed = abs(sum(diffs) / len(diffs))
    patterns = list(itertools.product((-1, 1), repeat=len(diffs)))
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs)) / len(diffs)) >= observed - 1e-12
               for signs in patterns)
    return hits / len(patterns)


# --- the p-value and the interval ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [1, 2, 5, 6, 9])
def test_sign_flip_p_value_equals_brute_force(n, seed):
    diffs = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).add(0.3).tolist()
    assert sign_flip_p_value(diffs) == pytest.approx(reference_p(diffs), abs=1e-15)


def test_sign_flip_p_value_edge_cases():
    assert sign_flip_p_value([]) == 1.0
    assert sign_flip_p_value([0.0] * 7) == 1.0                          # no difference at all
    assert sign_flip_p_value([0.1] * 6) == 2 / 2**6                     # the smallest p with 6 seeds
    assert sign_flip_p_value([0.1] * 5) == 2 / 2**5 > ALPHA             # 5 seeds cannot reach 0.05
    assert sign_flip_p_value([1e-30, 2e-30, 3e-30, 1e-30, 2e-30, 5e-30]) == 2 / 2**6  # scale-free
    with pytest.raises(ValueError, match="finite"):
        sign_flip_p_value([1.0, float("nan")])
    # beyond 16 seeds: a Monte Carlo p-value, (1 + hits) / (1 + draws): never 0, close to the exact one
    assert sign_flip_p_value([1.0] * 30) == 1 / (1 + 2**16)
    diffs = torch.randn(17, generator=torch.Generator().manual_seed(1), dtype=torch.float64).add(0.4).tolist()
    assert sign_flip_p_value(diffs) == pytest.approx(reference_p(diffs), abs=0.01)


def test_interval_is_the_student_t_interval():
    diffs = [0.03, 0.01, 0.02, 0.05, -0.01, 0.02, 0.04]
    p = Paired("acc", "base", "trick", diffs)
    lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert p.ci == pytest.approx((lo, hi), rel=1e-12)
    assert p.mean == pytest.approx(np.mean(diffs)) and p.std == pytest.approx(np.std(diffs, ddof=1))
    assert p.n == 7 and isinstance(p.diffs, tuple)


# --- the verdict --------------------------------------------------------------------------------------------
def test_clear_needs_six_seeds_a_small_p_and_an_interval_without_zero():
    assert MIN_SEEDS_FOR_CLEAR == 6
    assert not Paired("m", "a", "b", [0.5] * 5).clear                  # 5 seeds agreeing: not enough
    six = Paired("m", "a", "b", [0.5] * 6)
    assert six.clear and six.direction == 1 and six.p_value == 2 / 64
    assert Paired("m", "a", "b", [-0.5] * 6).direction == -1
    # every seed agrees in sign, but one huge value: the sign-flip test is happy, the interval is not
    lopsided = Paired("m", "a", "b", [0.01, 0.01, 0.01, 0.01, 0.01, 10.0])
    assert lopsided.p_value <= ALPHA and lopsided.ci[0] < 0 and not lopsided.clear
    # no verdict is clear while its interval contains zero
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        diffs = (torch.randn(8, generator=g, dtype=torch.float64) + 0.8).tolist()
        p = Paired("m", "a", "b", diffs)
        if p.clear:
            assert p.ci[0] > 0 or p.ci[1] < 0
        if p.ci[0] <= 0 <= p.ci[1]:
            assert not p.clear and "no clear difference" in p.verdict()


def test_verdict_words():
    up = Paired("val_acc", "baseline", "smoothing", [0.02, 0.01, 0.03, 0.02, 0.025, 0.015])
    assert up.verdict() == ("val_acc, smoothing − baseline: clearly higher, +0.020 "
                            f"(95% CI +{up.ci[0]:.3f} … +{up.ci[1]:.3f}, 6 seeds)")
    assert "clearly better" in Paired("acc", "a", "b", up.diffs, better="higher").verdict()
    assert "clearly worse" in Paired("loss", "a", "b", up.diffs, better="lower").verdict()
    assert "clearly lower" in Paired("loss", "a", "b", [-d for d in up.diffs]).verdict()
    few = Paired("acc", "a", "b", [0.1, 0.2, 0.1])
    assert "no clear difference" in few.verdict() and "need ≥ 6" in few.verdict()
    assert "1 seed" in Paired("acc", "a", "b", [0.1]).verdict()
    nan = Paired("acc", "a", "b", [0.1, float("nan"), 0.2, 0.1, 0.1, 0.1])
    assert not nan.clear and math.isnan(nan.mean) and "not finite on 1 of 6 seeds" in nan.verdict()


def test_paired_refuses_bad_input():
    with pytest.raises(ValueError, match="no paired differences"):
        Paired("acc", "a", "b", [])
    with pytest.raises(ValueError, match="better"):
        Paired("acc", "a", "b", [0.1], better="up")


# --- null and power simulations -----------------------------------------------------------------------------
NULLS = {
    "gaussian": lambda g, size: torch.randn(size, generator=g, dtype=torch.float64),
    "heavy-tailed (Student t, 2 dof)": lambda g, size: torch.distributions.StudentT(2.0).sample(size),
    "discrete (accuracy flips of ±1/360)": lambda g, size: (torch.randint(-2, 3, size, generator=g) / 360.0),
}


@pytest.mark.parametrize("n", [3, 6, 10])
@pytest.mark.parametrize("null", list(NULLS))
def test_when_nothing_happens_at_most_five_percent_are_called_clear(null, n):
    g = torch.Generator().manual_seed(n)
    torch.manual_seed(n)
    draws = NULLS[null](g, (4000, n)).tolist()
    rate = np.mean([Paired("m", "a", "b", d).clear for d in draws])
    assert rate <= ALPHA, f"{null}, {n} seeds: {rate:.3f} of null comparisons called clear"
    if n == 3:
        assert rate == 0  # the old rule ("every seed agrees in sign") called 25% of these clear


@pytest.mark.parametrize("n, effect, power", [(6, 2.0, 0.85), (8, 1.5, 0.85), (10, 1.0, 0.70)])
def test_a_real_effect_is_found(n, effect, power):
    """Effect in units of the per-seed standard deviation of the differences."""
    g = torch.Generator().manual_seed(7)
    draws = (torch.randn(2000, n, generator=g, dtype=torch.float64) + effect).tolist()
    found = np.mean([Paired("m", "a", "b", d).direction == 1 for d in draws])
    assert found >= power, f"effect {effect} σ with {n} seeds found in only {found:.2f} of runs"


# --- compare ------------------------------------------------------------------------------------------------
def test_compare_table_summary_and_paired():
    def run(shift, seed):
        return {"score": seed + shift, "history": tricklib.History()}

    c = compare(run, {"base": 0.0, "trick": 0.5}, seeds=range(6), progress=False)
    assert list(c.table.columns) == ["variant", "seed", "score"] and len(c.table) == 12
    assert c.summary().loc["trick", "score"] == "3.000 ± 1.871"
    p = c.paired("score", "base", "trick")
    assert p.diffs == (0.5,) * 6 and p.clear and p.mean == 0.5 and p.std == 0.0
    assert "clearly higher, +0.500" in p.verdict()
    assert len(c.histories["base"]) == 6
    mixed = compare(lambda s, seed: {"score": (-1) ** seed * s}, {"a": 0.0, "b": 1.0}, seeds=range(6),
                    progress=False)
    assert not mixed.paired("score", "a", "b").clear
    with pytest.raises(ValueError):
        compare(run, {}, seeds=[0])
    with pytest.raises(ValueError):
        compare(run, {"a": 0}, seeds=[1, 1])
    with pytest.raises(ValueError):
        c.values("nope", "base")


def test_compare_takes_numpy_and_tensor_numbers_as_metrics():
    def run(_, seed):
        return {"np": np.float32(seed), "np_int": np.int64(seed), "tensor": torch.tensor(seed / 2),
                "flag": np.bool_(seed % 2), "vector": torch.ones(3), "name": "x"}

    c = compare(run, {"a": None, "b": None}, seeds=range(6), progress=False)
    assert set(c.metrics) == {"np", "np_int", "tensor", "flag"}
    assert c.values("tensor", "a") == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert set(c.extras["a"][0]) == {"vector", "name"}
    assert c.paired("np", "a", "b").mean == 0


def test_compare_takes_every_kind_of_real_scalar_and_leaves_the_rest_in_extras():
    def run(_, seed):
        return {"f16": np.float16(seed / 4), "array0d": np.array(seed * 1.5),
                "bf16": torch.tensor(seed, dtype=torch.bfloat16), "tensor_bool": torch.tensor(seed % 2 == 0),
                "uint8": np.uint8(seed), "py_bool": bool(seed % 2), "complex": 1j * seed,
                "tensor_complex": torch.tensor(1j), "array1d": np.ones(2), "one_elem": torch.ones(1)}

    c = compare(run, {"a": None, "b": None}, seeds=range(6), progress=False)
    assert set(c.metrics) == {"f16", "array0d", "bf16", "tensor_bool", "uint8", "py_bool"}
    assert c.values("array0d", "a") == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]
    assert c.values("bf16", "b") == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert c.paired("f16", "a", "b").diffs == (0.0,) * 6
    assert set(c.extras["a"][0]) == {"complex", "tensor_complex", "array1d", "one_elem"}
    with pytest.raises(ValueError, match="unknown metric"):
        c.paired("array1d", "a", "b")


@pytest.mark.parametrize("empty", [[], (), np.array([]), torch.tensor([])])
def test_paired_with_no_differences_is_an_error_not_a_verdict(empty):
    with pytest.raises(ValueError, match="no paired differences"):
        Paired("acc", "a", "b", empty)


def test_compare_defaults_to_the_scale_seeds(monkeypatch):
    monkeypatch.delenv("TRICKLIB_SEEDS", raising=False)
    monkeypatch.setenv("TRICKLIB_SCALE", "small")
    c = compare(lambda _, seed: {"s": seed}, {"a": None}, progress=False)
    assert sorted(c.table["seed"]) == seeds() == list(range(6))


# --- seeds --------------------------------------------------------------------------------------------------
def test_seeds_by_scale_and_override(monkeypatch):
    monkeypatch.delenv("TRICKLIB_SEEDS", raising=False)
    monkeypatch.setenv("TRICKLIB_SCALE", "small")
    assert seeds(8, 12) == list(range(8))
    monkeypatch.setenv("TRICKLIB_SCALE", "full")
    assert seeds(8, 12) == list(range(12))
    monkeypatch.setenv("TRICKLIB_SCALE", "small")
    monkeypatch.setenv("TRICKLIB_SEEDS", "101, 102,103,104,105")
    assert seeds(3, 3) == [101, 102, 103]
    assert seeds(8, 8) == [101, 102, 103, 104, 105, 106, 107, 108]   # continues from the largest
    monkeypatch.setenv("TRICKLIB_SEEDS", "7,3")
    assert seeds(4, 4) == [7, 3, 8, 9]


@pytest.mark.parametrize("bad", ["a,b", "1,1", "-1,2", ",", "1.5"])
def test_seeds_refuse_a_bad_override(monkeypatch, bad):
    monkeypatch.setenv("TRICKLIB_SEEDS", bad)
    with pytest.raises(ValueError, match="TRICKLIB_SEEDS"):
        seeds()


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_seeds_refuse_a_bad_count(bad, error):
    with pytest.raises(error, match="small"):
        seeds(bad, 6)


# --- the tolerant comparison of checked outputs (conftest.py at the root) -------------------------------------
def root_conftest():
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("saved, new, same", [
    ("acc 0.963 ± 0.005", "acc 0.962 ± 0.006", True),                 # last digit
    ("acc 0.963 ± 0.005", "acc 0.959 ± 0.005", False),                # 4 units: a real change
    ("loss 356.631 ± 117.127", "loss 357.102 ± 117.300", True),       # 0.2% of the magnitude
    ("loss 356.631", "loss 358.000", False),
    ("0 of 6 diverge", "1 of 6 diverge", False),                      # integers are counts: exact
    ("clearly higher, +0.021", "no clear difference, +0.021", False),  # words are exact
    ("a      0.10 ± 0.01\nbb     9.99", "a  0.10 ± 0.01\nbb    10.01", True),  # padding moves
    ("-0.004 … +0.007", "-0.002 … +0.008", True),
    ("-0.004 … +0.007", "+0.004 … +0.007", False),                    # sign of a small number
    ("x 1.2e-05", "x 1.3e-05", True),
    ("x 1.2e-05", "x 1.9e-05", False),
    ("x nan", "x nan", True),
    ("two 0.1 0.2", "two 0.1", False),
])
def test_checked_numbers_within_the_stated_tolerance(saved, new, same):
    assert root_conftest().numbers_close(saved, new) is same


# --- the verdict table and the claims list ------------------------------------------------------------------
def test_verdicts_table():
    clear = Paired("acc", "base", "trick", [0.02, 0.01, 0.03, 0.02, 0.025, 0.015], better="higher")
    few = Paired("loss", "base", "trick", [0.1, -0.2, 0.1])
    table = tricklib.verdicts([clear, few])
    assert list(table.columns) == ["metric", "mean difference", "95% interval", "seeds", "verdict"]
    assert list(table.index) == ["trick − base", "trick − base"]
    assert table.iloc[0]["verdict"] == "clearly better" and table.iloc[0]["seeds"] == 6
    assert table.iloc[0]["95% interval"] == f"{clear.ci[0]:+.3f}\u00a0…\u00a0{clear.ci[1]:+.3f}"
    assert table.iloc[1]["verdict"] == "no clear difference (too few seeds)"
    assert tricklib.verdicts([Paired("acc", "a", "b", [0.1])]).iloc[0]["95% interval"] == "—"
    # a difference that rounds to zero has no sign
    zero = tricklib.verdicts([Paired("acc", "a", "b", [0.0] * 6), Paired("acc", "a", "b", [-1e-5, 1e-5] * 3)])
    assert list(zero["mean difference"]) == ["0.000", "0.000"]
    assert zero.iloc[0]["95% interval"] == "0.000\u00a0…\u00a00.000"
    assert "0.000 (95% CI 0.000 … 0.000" in Paired("acc", "a", "b", [0.0] * 6).verdict()
    # an interval off zero that the sign-flip test does not back is not clear, and the table says why
    five_of_six = Paired("acc", "a", "b", [0.01, 0.012, 0.011, 0.009, 0.013, -0.001])
    assert five_of_six.ci[0] > 0 and five_of_six.p_value > 0.05 and five_of_six.interval_only
    assert tricklib.verdicts([five_of_six]).iloc[0]["verdict"] == \
        f"no clear difference (sign test p\u00a0=\u00a0{five_of_six.p_value:.2f})"
    assert f"p = {five_of_six.p_value:.2f}" in five_of_six.verdict()
    assert not clear.interval_only and not few.interval_only
    # the table-cell summary: signed mean and verdict, zero without a sign, not finite as "undefined"
    assert clear.summary() == f"{clear.mean:+.3f} (clearly better)"
    assert Paired("acc", "a", "b", [-1e-5, 1e-5] * 3).summary() == "0.000 (no clear difference)"
    assert Paired("acc", "a", "b", [0.1, float("nan")]).summary() == "undefined"
    # negative differences carry a typographic minus, as the text writes them
    worse = Paired("acc", "a", "b", [-0.02, -0.01, -0.03, -0.02, -0.025, -0.015], better="higher")
    assert worse.summary() == f"\u2212{-worse.mean:.3f} (clearly worse)"
    assert "-" not in tricklib.verdicts([worse]).iloc[0]["95% interval"]
    with pytest.raises(TypeError, match="Paired"):
        tricklib.verdicts([0.1])


def test_check_claims_lists_every_claim_and_raises_on_any_false(capsys):
    tricklib.check_claims({"one": True, "two": np.bool_(True), "three": torch.tensor(True)})
    out = capsys.readouterr().out
    assert "Checked on every build" in out and out.count("✓") == 3
    with pytest.raises(AssertionError, match="claims that do not hold: two; three"):
        tricklib.check_claims({"one": True, "two": False, "three": np.bool_(False)})
    assert "✗ **FAILED:** two" in capsys.readouterr().out
    with pytest.raises(TypeError, match="single truth value"):
        tricklib.check_claims({"ambiguous": np.array([True, False])})
    with pytest.raises(ValueError, match="empty"):
        tricklib.check_claims({})


# --- when does it pay off: sweep and payoff -----------------------------------------------------------------
def test_sweep_pairs_the_trick_with_the_baseline_at_each_value():
    def run(noise, config, seed):
        g = torch.Generator().manual_seed(seed)
        base = 0.8 + 0.05 * torch.randn(1, generator=g).item()   # the seed's luck, shared by both variants
        return {"acc": base + config * (noise - 0.2) + 0.002 * seed}

    result = tricklib.sweep(run, [0.0, 0.2, 0.4], {"base": 0.0, "trick": 0.5}, metric="acc", baseline="base",
                            trick="trick", variable="label noise", seeds=range(6), better="higher", progress=False)
    assert [round(p.mean, 6) for p in result.paired] == [-0.1, 0.0, 0.1]
    assert result.where(1) == [0.4] and result.where(-1) == [0.0] and result.where(0) == [0.2]
    table = result.table()
    assert table.index.name == "label noise" and list(table["verdict"]) == ["clearly worse", "no clear difference",
                                                                            "clearly better"]
    assert len(result.comparisons) == 3 and result.comparisons[0].variants == ["base", "trick"]
    with pytest.raises(ValueError, match="not one of the variants"):
        tricklib.sweep(run, [0.0], {"base": 0.0}, metric="acc", baseline="base", trick="trick", variable="x",
                       progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        tricklib.sweep(run, [], {"base": 0.0, "trick": 1.0}, metric="acc", baseline="base", trick="trick",
                       variable="x", progress=False)


def test_payoff_draws_one_point_per_value():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def run(value, config, seed):
        return {"acc": config * value + 0.01 * ((seed * 7) % 5)}

    for values, logx in (([1, 10, 100], True), (["small", "large"], False)):
        numeric = not isinstance(values[0], str)
        result = tricklib.sweep(lambda v, c, s: run(values.index(v) - 1 if not numeric else v, c, s), values,
                                {"base": 0.0, "trick": 0.01}, metric="acc", baseline="base", trick="trick",
                                variable="size", seeds=range(6), better="higher", progress=False)
        ax = tricklib.payoff(result, logx=logx)
        assert ax.get_xlabel() == "size" and "trick − base" in ax.get_ylabel()
        assert len(ax.collections) >= len(values)   # the seeds' dots, one collection per value
        plt.close(ax.figure)
    # the words on clear points: "helps"/"hurts" by default, neutral ones when asked
    result = tricklib.sweep(run, [1, 2], {"base": 0.0, "trick": 0.01}, metric="acc", baseline="base", trick="trick",
                            variable="size", seeds=range(6), better="lower", progress=False)
    assert [t.get_text() for t in tricklib.payoff(result).texts] == ["hurts", "hurts"]
    assert [t.get_text() for t in tricklib.payoff(result, words=("fewer", "more")).texts] == ["more", "more"]
    plt.close("all")


def test_within_is_an_equivalence_claim():
    tight = Paired("acc", "a", "b", [0.001, -0.002, 0.0, 0.001, 0.002, -0.001])
    assert tight.within(0.01) and not tight.within(0.001)
    assert not Paired("acc", "a", "b", [0.05, -0.05, 0.04, -0.04, 0.05, -0.05]).within(0.01)
    with pytest.raises(ValueError):
        tight.within(0)


def test_with_variant_adds_a_derived_variant():
    c = compare(lambda shift, seed: {"acc": seed + shift, "loss": -seed}, {"a": 0.0, "b": 1.0}, seeds=range(6),
                progress=False)
    d = c.with_variant("ensemble", {"acc": [s + 2.0 for s in range(6)]})
    assert d.variants == ["a", "b", "ensemble"] and c.variants == ["a", "b"]
    assert d.paired("acc", "b", "ensemble").mean == 1.0
    assert np.isnan(d.values("loss", "ensemble")).all()
    with pytest.raises(ValueError, match="already"):
        c.with_variant("a", {"acc": list(range(6))})
    with pytest.raises(ValueError, match="one value per seed"):
        c.with_variant("e", {"acc": [1.0]})
    with pytest.raises(ValueError, match="unknown metrics"):
        c.with_variant("e", {"nope": list(range(6))})
