"""A fit with frequency weights stands for its rows repeated ``w_i`` times: everything built on
the fit (profile likelihood, bootstrap, AIC/BIC) must honour the weights, not the raw rows."""

import jax
import numpy as np
import pytest

import autohess as ah


@pytest.fixture(scope="module")
def weighted_and_repeated():
    rng = np.random.default_rng(11)
    n = 150
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = rng.poisson(np.exp(X @ np.array([0.3, 0.5, -0.4])))
    w = rng.integers(0, 4, size=n).astype(float)
    rows = np.repeat(np.arange(n), w.astype(int))
    weighted = ah.fit(ah.models.poisson(X, y), weights=w)
    repeated = ah.fit(ah.models.poisson(X[rows], y[rows]))
    return weighted, repeated


def test_profile_of_a_weighted_fit_is_the_weighted_profile(weighted_and_repeated):
    """It used to refit the unweighted likelihood against the weighted maximum (interval
    [-0.75, 4.8] around 2.0 in the review's repro). 1e-8: both profiles solve the same
    likelihood-ratio equation, each to ~1e-10."""
    weighted, repeated = weighted_and_repeated
    a = ah.profile(weighted, "beta[1]").conf_int()
    b = ah.profile(repeated, "beta[1]").conf_int()
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8)


def test_bootstrap_of_a_weighted_fit_resamples_what_the_weights_stand_for(weighted_and_repeated):
    weighted, repeated = weighted_and_repeated
    boot = ah.bootstrap(weighted, n=400, key=jax.random.key(0))
    assert np.isfinite(np.asarray(boot.fits.llf)).all() and boot.n_failed == 0
    # the BCa acceleration from the weighted influence equals the repeated rows' exactly (1e-10:
    # the same scores, summed in another order)
    boot_rep = ah.bootstrap(repeated, n=8, key=jax.random.key(1))
    np.testing.assert_allclose(boot.acceleration(), boot_rep.acceleration(), rtol=1e-10)
    # SEs agree with the sandwich SEs of the repeated rows (these data are over-dispersed by
    # chance: Hessian SEs are ~25% smaller, and the unweighted resampling gave neither) within
    # Monte-Carlo error: with B = 400 a bootstrap SE has relative SD ~1/sqrt(2B) = 3.5%; 15%
    # allows 4 of those plus the sandwich's own finite-sample difference (measured 3-6%)
    robust = ah.fit(repeated.model, cov_type="robust")
    np.testing.assert_allclose(boot.se_flat, np.asarray(robust.bse_flat), rtol=0.15)
    # and the comparison table's Wald SEs are the weighted fit's
    cmp = boot.compare()
    np.testing.assert_allclose(cmp.wald_se["hessian"], np.asarray(weighted.bse_flat), rtol=1e-12)


def test_bootstrap_refuses_what_it_cannot_do_with_weights(weighted_and_repeated):
    weighted, _ = weighted_and_repeated
    with pytest.raises(ValueError, match="frequency weights"):
        ah.bootstrap(weighted, n=4, key=0, kind="parametric")
    model = weighted.model
    half = ah.fit(model, weights=np.full(model.nobs, 0.5))
    with pytest.raises(ValueError, match="non-integer weights"):
        ah.bootstrap(half, n=4, key=0)
