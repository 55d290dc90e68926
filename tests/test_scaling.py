"""Scalers against sklearn.preprocessing (StandardScaler, MinMaxScaler) and NumPy."""
import numpy as np
import pytest
import torch
from sklearn.preprocessing import MinMaxScaler, StandardScaler

import tricklib as tl
from tricklib import Atan, Log, MinMax, Standardize


def features(seed, n=50, dtype=torch.float64):
    """Columns on wildly different scales, including a heavy tail and a constant column."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    X[:, 0] = X[:, 0] * 1000 + 5000
    X[:, 1] = torch.rand(n, generator=g, dtype=torch.float64)
    X[:, 2] = torch.randn(n, generator=g, dtype=torch.float64).exp() * 100
    X[:, 3] = 7.0
    return X.to(dtype)


@pytest.mark.parametrize("seed", range(5))
def test_standardize_matches_sklearn_on_train_and_unseen_data(seed):
    X_train, X_test = features(seed), features(seed + 100, n=20)
    ours = Standardize().fit(X_train)
    ref = StandardScaler().fit(X_train.numpy())
    np.testing.assert_allclose(ours.transform(X_train).numpy(), ref.transform(X_train.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.transform(X_test).numpy(), ref.transform(X_test.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.mean.numpy(), ref.mean_)
    np.testing.assert_allclose(ours.std.numpy(), ref.scale_)
    Z = ours.transform(X_test)
    np.testing.assert_allclose(ours.inverse_transform(Z).numpy(), ref.inverse_transform(Z.numpy()), rtol=1e-10)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("feature_range", [(0.0, 1.0), (-1.0, 1.0), (2.0, 5.0)])
def test_minmax_matches_sklearn(seed, feature_range):
    X_train, X_test = features(seed), features(seed + 100, n=20)
    ours = MinMax(feature_range).fit(X_train)
    ref = MinMaxScaler(feature_range=feature_range).fit(X_train.numpy())
    np.testing.assert_allclose(ours.transform(X_train).numpy(), ref.transform(X_train.numpy()), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.transform(X_test).numpy(), ref.transform(X_test.numpy()), rtol=1e-10, atol=1e-10)
    Z = ours.transform(X_test)
    np.testing.assert_allclose(ours.inverse_transform(Z).numpy(), ref.inverse_transform(Z.numpy()), rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_their_dtype_and_match_sklearn(dtype):
    X = features(0)
    for ours, ref in ((Standardize(), StandardScaler()), (MinMax(), MinMaxScaler())):
        out = ours.fit_transform(X.to(dtype))
        assert out.dtype == dtype
        expected = ref.fit_transform(X.to(dtype).double().numpy())
        tol = 1e-6 if dtype == torch.float32 else 1e-2
        np.testing.assert_allclose(out.double().numpy(), expected, rtol=tol, atol=tol)


def test_constant_feature_gives_no_nan():
    X = features(1)
    for scaler in (Standardize(), MinMax(), Atan(scale=None)):
        out = scaler.fit_transform(X)
        assert torch.isfinite(out).all(), type(scaler).__name__
    assert (Standardize().fit_transform(X)[:, 3] == 0).all()
    assert (MinMax().fit_transform(X)[:, 3] == 0).all()


def test_statistics_come_from_train_only():
    X_train = torch.tensor([[0.0], [10.0]])
    X_test = torch.tensor([[20.0]])
    assert MinMax().fit(X_train).transform(X_test).item() == 2.0  # outside [0, 1]: not refitted on test
    assert Standardize().fit(X_train).transform(X_test).item() == 3.0


@pytest.mark.parametrize("seed", range(3))
def test_log_and_atan_against_numpy(seed):
    X = features(seed)
    X[:, 4] = -X[:, 2]                               # negative heavy tail
    np.testing.assert_allclose(Log().fit_transform(X).numpy(), np.sign(X.numpy()) * np.log1p(np.abs(X.numpy())))
    np.testing.assert_allclose(Atan().fit_transform(X).numpy(), 2 / np.pi * np.arctan(X.numpy()))
    fitted = Atan(scale=None).fit(X)
    s = np.median(np.abs(X.numpy()), axis=0)         # even n: torch takes the lower median
    s_lower = np.sort(np.abs(X.numpy()), axis=0)[(len(X) - 1) // 2]
    np.testing.assert_allclose(fitted.s.numpy(), s_lower)
    assert np.all(np.abs(fitted.s.numpy() - s) <= np.abs(s) * 0.2 + 1e-12)
    np.testing.assert_allclose(fitted.transform(X).numpy(), 2 / np.pi * np.arctan(X.numpy() / s_lower))
    for scaler in (Log().fit(X), fitted, Atan(2.0).fit(X)):
        np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(X)).numpy(), X.numpy(), rtol=1e-8)


def test_atan_with_unit_scale_saturates_large_features():
    X = features(0)
    out = Atan().fit_transform(X)
    assert (out[:, 0] > 0.999).all()                 # thousands: everything ≈ 1, the feature is lost
    assert Atan(scale=None).fit_transform(X)[:, 0].std() > 0.01


def test_errors():
    X = features(0)
    with pytest.raises(ValueError, match="not fitted"):
        Standardize().transform(X)
    with pytest.raises(ValueError, match="not fitted"):
        MinMax().inverse_transform(X)
    with pytest.raises(ValueError, match="3 features.*fitted on 5"):
        Standardize().fit(X).transform(X[:, :3])
    with pytest.raises(ValueError, match="2 dimension"):
        MinMax().fit(X[:, 0])
    with pytest.raises(TypeError, match="floating"):
        Standardize().fit(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Standardize().fit(X.numpy())
    with pytest.raises(ValueError, match="finite"):
        Standardize().fit(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(ValueError, match="at least one row"):
        MinMax().fit(torch.empty(0, 3))
    with pytest.raises(ValueError, match="low < high"):
        MinMax((1.0, 0.0))
    with pytest.raises(ValueError, match="scale"):
        Atan(scale=0.0)
    with pytest.raises(ValueError, match=r"\(-1, 1\)"):
        Atan().fit(X).inverse_transform(torch.ones(1, 5))


CONSTANTS = [0.0, 1e-300, 1e-10, 0.1, 0.3, 1.1, 123.456, 98765.4321, 100000.3, 3300000.7, 1e15 + 0.5, -2.5e7 - 0.1]


@pytest.mark.parametrize("n", [3, 7, 100, 1000, 12345])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_a_constant_column_is_constant_at_any_magnitude(n, dtype):
    """The float64 mean of N equal values can miss them by an ulp (a variance of ulp^2, not 0)."""
    for value in torch.tensor(CONSTANTS, dtype=torch.float64).to(dtype):
        if not torch.isfinite(value):  # 1e15 in float16
            continue
        X = value.expand(n, 1).contiguous()  # one column: how torch sums it decides the rounding
        ours = Standardize().fit(X)
        ref = StandardScaler().fit(X.double().numpy())
        assert ours.std.item() == ref.scale_[0] == 1.0, value
        if abs(value) > 1e8:  # both means are off by ulps of the value there, more than the unit's 1e-7
            continue
        one_unit_away = (X[:1].double() + 1).to(dtype)
        expected = torch.from_numpy(ref.transform(one_unit_away.double().numpy())).to(dtype)
        torch.testing.assert_close(ours.transform(one_unit_away), expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("magnitude", [1e-8, 1.0, 1e5, 1e12])
def test_a_column_that_varies_a_little_is_not_constant(seed, magnitude):
    """Real variation well above the rounding error is scaled, as by sklearn."""
    g = torch.Generator().manual_seed(seed)
    X = magnitude * (1 + 1e-9 * torch.randn(200, 3, generator=g, dtype=torch.float64))
    ours, ref = Standardize().fit(X), StandardScaler().fit(X.numpy())
    assert (ours.std != 1).all()
    np.testing.assert_allclose(ours.std.numpy(), ref.scale_, rtol=1e-6)
    np.testing.assert_allclose(ours.transform(X).numpy(), ref.transform(X.numpy()), rtol=1e-5, atol=1e-5)


def test_atan_keeps_a_tiny_median_as_its_scale():
    X = torch.tensor([[1e-20], [2e-20], [-3e-20], [4e-20]], dtype=torch.float64)
    scaler = Atan(scale=None).fit(X)
    assert scaler.s.item() == 2e-20
    np.testing.assert_allclose(scaler.transform(X).numpy(), 2 / np.pi * np.arctan(X.numpy() / 2e-20))
    half_zero = torch.tensor([[0.0], [0.0], [5.0]])
    assert Atan(scale=None).fit(half_zero).s.item() == 1.0


@pytest.mark.parametrize("make", [Standardize, MinMax, lambda: MinMax((-1.0, 1.0)), Log,
                                  lambda: Atan(None), lambda: Atan(2.0)])
def test_a_fitted_scaler_survives_a_checkpoint(tmp_path, make):
    """save_checkpoint(scaler=...) then load_checkpoint(scaler=fresh) gives the same map, bit for bit."""
    X = torch.randn(50, 4, dtype=torch.float64) * 10 + 3
    fitted = make().fit(X)
    tl.save_checkpoint(tmp_path / "ck.pt", scaler=fitted)
    fresh = make()
    tl.load_checkpoint(tmp_path / "ck.pt", scaler=fresh)
    Y = torch.randn(7, 4, dtype=torch.float32)
    assert torch.equal(fresh.transform(Y), fitted.transform(Y))
    assert fresh.n_features == 4


def test_scaler_state_errors():
    X = torch.randn(20, 3, dtype=torch.float64)
    unfitted = Standardize().fit(X)
    unfitted.load_state_dict(Standardize().state_dict())
    with pytest.raises(ValueError, match="not fitted"):
        unfitted.transform(X)
    state = Standardize().fit(X).state_dict()
    with pytest.raises(ValueError, match="not a MinMax state"):
        MinMax().load_state_dict(state)
    with pytest.raises(ValueError, match="feature_range"):
        MinMax((-1.0, 1.0)).load_state_dict(MinMax().fit(X).state_dict())
    with pytest.raises(ValueError, match=r"mean must be a Tensor\[3\]"):
        Standardize().load_state_dict({**state, "mean": torch.zeros(2)})
    with pytest.raises(ValueError, match="expected keys"):
        Standardize().load_state_dict([1, 2])
