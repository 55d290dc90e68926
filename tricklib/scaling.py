r"""Feature scaling fitted on the training split only (the recipe chapters of the book).

Four scalers with one small API, ``fit`` on the training features, then
``transform`` train, validation and test with the *same* statistics:

======================  =====================================================  ============================
scaler                  :math:`x \mapsto`                                      fitted statistics
======================  =====================================================  ============================
:class:`MinMax`         :math:`a + (b-a)\,(x-\min)/(\max-\min)`                per-feature min and max
:class:`Standardize`    :math:`(x-\mu)/\sigma`                                 per-feature mean and std
:class:`Log`            :math:`\operatorname{sign}(x)\log(1+|x|)`              none
:class:`Atan`           :math:`\tfrac{2}{\pi}\arctan(x/s)`                     scale :math:`s` (optional)
======================  =====================================================  ============================

Features are the columns of a ``Tensor[N, F]``. Statistics are computed in
float64 and results returned in the input's dtype. A constant feature is
divided by 1 instead of 0, as scikit-learn does, so it maps to a constant
rather than to NaN or to huge values: for :class:`Standardize` "constant" means
a variance within the rounding error of its computation, which grows with the
column's magnitude (see there).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_finite, check_range, check_tensor


class Scaler:
    """Base class: ``fit(X_train)`` learns per-feature statistics, ``transform(X)`` applies them.

    Subclasses implement ``_fit``, ``_forward`` and ``_inverse`` on float64 tensors and
    name their fitted tensors in ``_stats``. :meth:`state_dict` / :meth:`load_state_dict`
    make a fitted scaler part of a checkpoint: ``save_checkpoint(path, model=model,
    scaler=scaler)`` stores its statistics, and ``load_checkpoint(path, scaler=Standardize())``
    restores them, so a resumed or deployed model sees its inputs scaled exactly as in training.
    """

    #: number of features seen by :meth:`fit` (``None`` before fitting)
    n_features: int | None = None
    #: names of the fitted per-feature tensors (float64, ``Tensor[F]``)
    _stats: tuple[str, ...] = ()

    def _config(self) -> dict:
        """Constructor arguments that change the map (stored with the statistics, checked on load)."""
        return {}

    def state_dict(self) -> dict:
        """The fitted statistics as plain tensors and numbers (for :func:`~tricklib.checkpoint.save_checkpoint`).

        An unfitted scaler gives ``{"n_features": None}``.
        """
        if self.n_features is None:
            return {"n_features": None}
        return {"n_features": self.n_features, **self._config(),
                **{name: getattr(self, name).clone() for name in self._stats}}

    def load_state_dict(self, state: dict) -> None:
        """Restore statistics saved by :meth:`state_dict` (as :func:`~tricklib.checkpoint.load_checkpoint` does).

        Args:
            state: the dict :meth:`state_dict` returned, from a scaler of the same class
                and constructor arguments.

        Raises:
            ValueError: keys, constructor arguments or shapes that do not match this scaler.
        """
        if state == {"n_features": None}:  # saved before fitting
            for name in self._stats:
                self.__dict__.pop(name, None)
            self.n_features = None
            return
        expected = {"n_features", *self._config(), *self._stats}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a {type(self).__name__} state: expected keys {sorted(expected)}, got {got}")
        for key, value in self._config().items():
            if state[key] != value:
                raise ValueError(f"state was saved with {key}={state[key]!r}, this scaler has {key}={value!r}")
        n = state["n_features"]
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_features must be a positive int, got {n!r}")
        stats = {}
        for name in self._stats:
            t = state[name]
            if not isinstance(t, torch.Tensor) or t.shape != (n,):
                raise ValueError(f"{name} must be a Tensor[{n}], got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            stats[name] = t.detach().to(torch.float64).clone()
        for name, t in stats.items():
            setattr(self, name, t)
        self.n_features = n

    def fit(self, X: torch.Tensor) -> "Scaler":
        """Learn the statistics from the training features ``X`` (``Tensor[N, F]``, N ≥ 1); returns ``self``.

        Args:
            X: ``Tensor[N, F]`` floating point, finite: the training split only (fitting on
                validation or test rows leaks their statistics into training).
        """
        X = self._check(X, fitting=True)
        self._fit(X.double())
        self.n_features = X.shape[1]
        return self

    def transform(self, X: torch.Tensor) -> torch.Tensor:
        """Scale ``X`` (``Tensor[M, F]``) with the statistics learned by :meth:`fit`.

        Args:
            X: ``Tensor[M, F]`` floating point, the same ``F`` features as in :meth:`fit`;
                returned in its dtype (computed in float64).
        """
        X = self._check(X)
        return self._forward(X.double()).to(X.dtype)

    def fit_transform(self, X: torch.Tensor) -> torch.Tensor:
        """``fit(X)`` then ``transform(X)`` — for the training split only.

        Args:
            X: ``Tensor[N, F]`` floating point, finite: the training features.
        """
        return self.fit(X).transform(X)

    def inverse_transform(self, Z: torch.Tensor) -> torch.Tensor:
        """Map scaled features back to the original units (e.g. to read a prediction in dollars).

        Args:
            Z: ``Tensor[M, F]`` floating point, in the scaled units (the output of
                :meth:`transform`, or a prediction made in them).
        """
        Z = self._check(Z, name="Z")
        return self._inverse(Z.double()).to(Z.dtype)

    def _check(self, X: torch.Tensor, *, fitting: bool = False, name: str = "X") -> torch.Tensor:
        check_tensor(name, X, ndim=2, floating=True)
        if fitting:
            if len(X) == 0:
                raise ValueError(f"{name} must have at least one row to fit on, got shape {tuple(X.shape)}")
            check_finite(name, X)
        elif self.n_features is None:
            raise ValueError(f"{type(self).__name__} is not fitted yet: call .fit(X_train) before .transform")
        elif X.shape[1] != self.n_features:
            raise ValueError(f"{name} has {X.shape[1]} features, but {type(self).__name__} was fitted on "
                             f"{self.n_features}")
        return X

    def _fit(self, X: torch.Tensor) -> None:
        """Stateless scalers learn nothing."""

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _inverse(self, Z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fitted={self.n_features is not None})"


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    """Replace (near-)zero scales by 1, like scikit-learn's ``_handle_zeros_in_scale``."""
    return torch.where(scale < 10 * torch.finfo(scale.dtype).eps, torch.ones_like(scale), scale)


class MinMax(Scaler):
    r"""Min–max scaling to ``feature_range = (a, b)``, default ``(0, 1)``.

    .. math:: x' = a + (b - a)\,\frac{x - \min_{\text{train}}}{\max_{\text{train}} - \min_{\text{train}}}

    Validation/test values outside the training range map outside ``[a, b]``
    (no clipping); one outlier in the training set squeezes all other values
    into a tiny interval. Checked against ``sklearn.preprocessing.MinMaxScaler``.

    Args:
        feature_range: ``(a, b)`` with ``a < b``: where the training minimum and maximum
            of each feature land.
    """

    def __init__(self, feature_range: tuple[float, float] = (0.0, 1.0)):
        a, b = feature_range
        check_range("feature_range[0]", a)
        check_range("feature_range[1]", b)
        if not a < b:
            raise ValueError(f"feature_range must satisfy low < high, got {feature_range}")
        self.feature_range = (float(a), float(b))

    _stats = ("min", "range")

    def _config(self) -> dict:
        return {"feature_range": self.feature_range}

    def _fit(self, X: torch.Tensor) -> None:
        self.min = X.amin(dim=0)
        self.range = _nonzero(X.amax(dim=0) - self.min)

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        a, b = self.feature_range
        return a + (b - a) * (X - self.min) / self.range

    def _inverse(self, Z: torch.Tensor) -> torch.Tensor:
        a, b = self.feature_range
        return (Z - a) / (b - a) * self.range + self.min


class Standardize(Scaler):
    r"""Z-score: zero mean and unit variance per feature, with the *training* statistics.

    .. math:: x' = \frac{x - \mu_{\text{train}}}{\sigma_{\text{train}}},\qquad
        \sigma^2 = \frac1N\sum_i (x_i-\mu)^2 \ \text{(biased, as scikit-learn)}

    LeCun et al. 1998 ("Efficient BackProp") recommend it: inputs with zero mean
    and equal variance keep the Hessian better conditioned, so one learning rate
    suits every weight. A feature whose variance is within the rounding error of
    computing it, :math:`\sigma^2 \le N\epsilon\,\sigma^2 + (N\mu\epsilon)^2` with
    :math:`\epsilon` float64's machine epsilon (Chan, Golub & LeVeque 1983), is
    constant: it is divided by 1, so a value one unit away maps to 1, not to
    :math:`10^{10}`. Checked against ``sklearn.preprocessing.StandardScaler``
    (which uses the same bound).
    """

    _stats = ("mean", "std")

    def _fit(self, X: torch.Tensor) -> None:
        self.mean = X.mean(dim=0)
        var = X.var(dim=0, correction=0)
        # The float64 mean of N equal values can miss them by an ulp, which leaves a variance
        # of ulp^2 instead of 0 (a std of 1e-11 for values near 1e5). Chan, Golub & LeVeque's
        # bound on the rounding error of the two-pass variance, as scikit-learn's
        # _is_constant_feature: a variance below it is indistinguishable from 0.
        n, eps = X.shape[0], torch.finfo(torch.float64).eps
        constant = var <= n * eps * var + (n * self.mean * eps) ** 2
        self.std = torch.where(constant, 1.0, var.sqrt())

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean) / self.std

    def _inverse(self, Z: torch.Tensor) -> torch.Tensor:
        return Z * self.std + self.mean


class Log(Scaler):
    r"""Signed log: compresses heavy right tails (prices, counts, areas) without a fitted statistic.

    .. math:: x' = \operatorname{sign}(x)\,\log(1 + |x|)

    Equals ``torch.log1p`` for non-negative features and stays defined for
    negative ones. ``fit`` only records the number of features. Checked against
    ``numpy.log1p`` / ``expm1``.
    """

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        return X.sign() * X.abs().log1p()

    def _inverse(self, Z: torch.Tensor) -> torch.Tensor:
        return Z.sign() * Z.abs().expm1()


class Atan(Scaler):
    r"""Squash into :math:`(-1, 1)` with the arctangent (Hui 2018, "How to start a deep learning project").

    .. math:: x' = \frac{2}{\pi}\arctan\!\left(\frac{x}{s}\right)

    With ``scale=1.0`` (the formula as usually quoted) a feature in the thousands
    maps to ≈ 1 everywhere and its information is lost; ``scale=None`` fits
    per-feature :math:`s` as the training median of :math:`|x|` (the lower middle value
    for an even count, as ``torch.median``), so half the
    training values land in :math:`(-\tfrac12, \tfrac12)`. The map is bounded, so
    outliers cannot dominate. Checked against ``numpy.arctan``.

    Args:
        scale: a fixed :math:`s > 0` for every feature, or ``None`` to fit it.
    """

    def __init__(self, scale: float | None = 1.0):
        if scale is not None:
            check_range("scale", scale, 0.0, low_open=True)
        self.scale = scale

    _stats = ("s",)

    def _config(self) -> dict:
        return {"scale": self.scale}

    def _fit(self, X: torch.Tensor) -> None:
        if self.scale is None:
            # any positive median is a valid scale, however small (x / s stays finite or
            # overflows to +-inf, which atan maps to +-1); only 0 (half the values 0) is not
            median = X.abs().median(dim=0).values
            self.s = torch.where(median > 0, median, 1.0)
        else:
            self.s = torch.full((X.shape[1],), float(self.scale), dtype=X.dtype)

    def _forward(self, X: torch.Tensor) -> torch.Tensor:
        return 2 / math.pi * torch.atan(X / self.s)

    def _inverse(self, Z: torch.Tensor) -> torch.Tensor:
        if Z.numel() and Z.abs().max() >= 1:
            raise ValueError("Z must lie in (-1, 1) to invert 2·atan(x/s)/π")
        return torch.tan(Z * math.pi / 2) * self.s
