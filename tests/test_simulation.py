"""Simulation studies: coverage of Wald intervals, bias, SD vs SE, with Monte-Carlo errors.

References: simulation itself. A correctly specified model's Wald intervals cover at the
nominal 95% up to Monte-Carlo error sqrt(0.95 * 0.05 / R) (~0.005 at R = 2000); 3.5 MC standard
errors bound a false alarm below 1 in 2000 per check (the seed is fixed, so the test is
deterministic). A misspecified model (overdispersed counts fitted as Poisson) must show the
inverse-Hessian intervals under-covering and the sandwich ones recovering.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah


def test_correctly_specified_logistic_covers_at_95_percent():
    rng = np.random.default_rng(11)
    n = 500
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    beta = np.array([-0.3, 0.8, 0.4])
    model = ah.models.logistic(X, np.zeros(n))
    study = ah.simulation_study(model, {"beta": beta}, n=2000, key=jax.random.key(2))
    t = study.table()
    assert t.n_ok == 2000 and study.n_failed == 0
    for c in ("hessian", "robust"):
        assert np.all(np.abs(t.coverage[c] - 0.95) <= 3.5 * np.sqrt(0.95 * 0.05 / 2000)), (c, t.coverage[c])
        np.testing.assert_allclose(t.coverage_mcse[c], np.sqrt(t.coverage[c] * (1 - t.coverage[c]) / 2000))
        # mean SE estimates the empirical SD (both carry ~2-3% MC / O(1/N) error here)
        np.testing.assert_allclose(t.mean_se[c], t.emp_sd, rtol=0.06)
    # the MLE's O(1/N) bias is small next to its SD; 4 MC standard errors or 10% of the SD
    assert np.all(np.abs(t.bias) <= np.maximum(4 * t.bias_mcse, 0.1 * t.emp_sd))
    est = np.asarray(study.fits.params_flat)
    np.testing.assert_allclose(t.emp_sd, est.std(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(t.bias_mcse, t.emp_sd / np.sqrt(2000), rtol=1e-12)
    text = str(t)
    assert "cover hessian" in text and "(mcse)" in text and "2000 of 2000" in text
    assert t.to_dict()["n_ok"] == 2000


def test_misspecified_poisson_hessian_undercovers_robust_does_not():
    """Counts drawn from a negative binomial (variance mu + 0.5 mu^2) fitted as Poisson: the
    information matrix equality fails, the Hessian SEs are too small, the sandwich is right."""
    rng = np.random.default_rng(5)
    n = 1000
    X = np.c_[np.ones(n), rng.normal(size=n)]
    beta = np.array([1.0, 0.3])

    def overdispersed(key, params, data):
        mu = jnp.exp(data["X"] @ params["beta"])
        k1, k2 = jax.random.split(key)
        rate = jax.random.gamma(k1, 2.0, mu.shape, mu.dtype) * 0.5 * mu  # Gamma mean mu, CV^2 0.5
        y = jax.random.poisson(k2, rate).astype(mu.dtype)
        return {**data, "y": y, "log_y_factorial": jax.scipy.special.gammaln(y + 1.0)}

    base = ah.models.poisson(X, np.ones(n))
    model = ah.Model(ah.models.poisson_loglik, dict(base.data), {"beta": jnp.zeros(2)}, simulate=overdispersed)
    study = ah.simulation_study(model, {"beta": beta}, n=1000, key=3)
    t = study.table()
    mcse = np.sqrt(0.95 * 0.05 / 1000)
    assert np.all(t.coverage["hessian"] < 0.95 - 10 * mcse), t.coverage["hessian"]
    assert np.all(np.abs(t.coverage["robust"] - 0.95) <= 3.5 * mcse), t.coverage["robust"]
    assert np.all(t.mean_se["hessian"] < 0.8 * t.emp_sd)


def test_simulation_study_bad_input():
    X = np.c_[np.ones(50), np.linspace(-1, 1, 50)]
    model = ah.models.logistic(X, np.zeros(50))
    with pytest.raises(ValueError, match="PRNG key is needed"):
        ah.simulation_study(model, {"beta": np.zeros(2)}, n=10)
    with pytest.raises(ValueError, match="cov_type must be one of"):
        ah.simulation_study(model, {"beta": np.zeros(2)}, n=10, key=0, cov_type="cluster")
    with pytest.raises(ValueError, match="alpha must be in"):
        ah.simulation_study(model, {"beta": np.zeros(2)}, n=10, key=0, alpha=1.5)
    plain = ah.Model(ah.models.logistic_loglik, dict(model.data), {"beta": jnp.zeros(2)})
    with pytest.raises(ValueError, match="has no simulate function"):
        ah.simulation_study(plain, None, n=10, key=0)

    def wrong_shape(key, params, data):
        return {**data, "y": jnp.zeros(49)}

    bad = ah.Model(ah.models.logistic_loglik, dict(model.data), {"beta": jnp.zeros(2)}, simulate=wrong_shape)
    with pytest.raises(ValueError, match=r"simulate returned an array of shape \(49,\)"):
        ah.simulation_study(bad, None, n=10, key=0)
