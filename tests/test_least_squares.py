"""ah.least_squares and cov_type="gauss-newton"."""

import jax.numpy as jnp
import numpy as np
import pytest
import statsmodels.api as sm

import autohess as ah


def test_linear_least_squares_equals_ols(rng):
    """For a linear model J = -X, so s^2 (J'J)^-1 is exactly OLS's covariance."""
    n = 200
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = X @ np.array([1.0, -0.5, 2.0]) + 0.3 * rng.normal(size=n)
    model = ah.least_squares(lambda p, d: d["y"] - d["X"] @ p["b"], {"X": X, "y": y}, {"b": jnp.zeros(3)})
    res = ah.fit(model, cov_type="gauss-newton")
    ols = sm.OLS(y, X).fit()
    np.testing.assert_allclose(np.asarray(res.params_flat), ols.params, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.bse_flat), ols.bse, rtol=1e-10)
    assert model.rss(res.params) == pytest.approx(ols.ssr, rel=1e-12)
    assert model.nobs == n and "Gauss-Newton" in res.summary()
    # observed information of the concentrated likelihood: RSS/n instead of RSS/(n-p)
    hess = ah.fit(model)
    np.testing.assert_allclose(np.asarray(hess.bse_flat), ols.bse * np.sqrt((n - 3) / n), rtol=1e-8)


def test_gauss_newton_needs_least_squares_model(rng):
    model = ah.models.poisson(np.ones((10, 1)), np.arange(10))
    with pytest.raises(ValueError, match="needs a least-squares model"):
        ah.fit(model, cov_type="gauss-newton")
    with pytest.raises(ValueError, match="method='gauss-newton' needs a least-squares model"):
        ah.fit(model, method="gauss-newton")
    with pytest.raises(ValueError, match="more residuals"):
        ah.least_squares(lambda p, d: d["y"] - p["b"], {"y": np.ones(2)}, {"b": jnp.zeros(2)})
