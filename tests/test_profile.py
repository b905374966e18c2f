"""Profile likelihood: batched constrained refits against closed-form likelihood-ratio intervals.

References: for y_i ~ N(mu, sigma^2) with both unknown, the profile log-likelihoods are
closed forms (sigma profiled out of mu: n/2 log(1 + (ybar - mu)^2 / s^2); mu profiled out of
sigma: n log(sigma/s) + n s^2 / (2 sigma^2) - n/2, with s the ML standard deviation), so the
likelihood-ratio interval ends are known exactly (mu) or are the roots of a scalar equation
(sigma, solved by scipy's brentq to 1e-14).

Tolerance 1e-7 (relative to the Wald standard error): the ends are placed by linear
interpolation of the signed root within a bracket narrowed 20^5-fold from the grid spacing,
leaving ~1e-10 SE; the profile values themselves carry ~1e-12 relative rounding.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

import autohess as ah

Q95 = 3.841458820694124  # chi2_1(0.95)
TOL = 1e-7


@pytest.fixture
def normal_fit():
    rng = np.random.default_rng(7)
    y = 3.0 + 2.0 * rng.standard_normal(40)
    model = ah.models.linear(np.ones((y.size, 1)), y, sigma=1.5)
    return y, ah.fit(model)


def test_mean_profile_matches_closed_form(normal_fit):
    y, res = normal_fit
    n, ybar, s = y.size, y.mean(), y.std()
    half = s * np.sqrt(np.exp(Q95 / n) - 1.0)
    prof = ah.profile(res, "beta[0]")
    se = float(res.bse_flat[0])
    np.testing.assert_allclose(prof.conf_int(), [ybar - half, ybar + half], rtol=0, atol=TOL * se)
    assert prof.open_ends == (False, False)
    # the LR interval of a normal mean is wider than Wald's z-interval (it is t-like)
    assert prof.conf_int()[1] - prof.conf_int()[0] > prof.wald[1] - prof.wald[0]
    # every point on the curve is a converged constrained refit with the right profile value
    mu = prof.values
    closed = -0.5 * n * (np.log(2 * np.pi * (s**2 + (ybar - mu) ** 2)) + 1.0)
    np.testing.assert_allclose(prof.llf, closed, rtol=1e-12)  # exact arithmetic, N = 40 terms
    assert np.all(prof.status_code == ah.Status.CONVERGED)


def test_sigma_profile_is_asymmetric_and_matches_roots(normal_fit):
    y, res = normal_fit
    n, s = y.size, y.std()

    def lr(sig):
        return 2 * (n * np.log(sig / s) + n * s**2 / (2 * sig**2) - n / 2) - Q95

    lo, hi = brentq(lr, 0.1 * s, s, xtol=1e-14), brentq(lr, s, 10 * s, xtol=1e-14)
    prof = ah.profile(res, "sigma")
    se = float(res.bse_flat[1])
    np.testing.assert_allclose(prof.conf_int(), [lo, hi], rtol=0, atol=TOL * se)
    assert prof.asymmetry > 1.2  # the upper end lies further out: the likelihood is skewed
    assert "profile likelihood" in str(prof) and "Wald" in str(prof)


def test_one_parameter_model_and_single_compilation():
    """p = 1: nothing to refit, the profile is the likelihood itself (exponential rate)."""
    rng = np.random.default_rng(3)
    t = rng.exponential(2.0, size=25)

    def loglik(params, data):
        return jnp.log(params["rate"]) - params["rate"] * data["t"]

    model = ah.Model(loglik, {"t": t}, {"rate": ah.Positive(1.0)})
    res = ah.fit(model)
    n, total = t.size, t.sum()
    rhat = n / total

    def lr(r):
        return 2 * ((n * np.log(rhat) - n) - (n * np.log(r) - r * total)) - Q95

    lo, hi = brentq(lr, 1e-3 * rhat, rhat, xtol=1e-14), brentq(lr, rhat, 10 * rhat, xtol=1e-14)
    prof = ah.profile(res, "rate")
    np.testing.assert_allclose(prof.conf_int(), [lo, hi], rtol=0, atol=TOL * float(res.bse_flat[0]))
    # grid, extensions and refinement rounds all reuse one compiled, batched program
    assert model.trace_counts["profile"] == 1


def test_flat_direction_needs_a_grid_and_gives_open_ends():
    """y ~ N(a*b, 1): only a*b is identified, so the profile of a is flat; both ends open."""
    rng = np.random.default_rng(0)
    y = 2.0 + rng.standard_normal(50)

    def loglik(params, data):
        return -0.5 * (data["y"] - params["a"] * params["b"]) ** 2

    model = ah.Model(loglik, {"y": y}, {"a": 1.0, "b": 1.0})
    with pytest.warns(ah.InferenceWarning):
        res = ah.fit(model)
    with pytest.raises(ValueError, match="give grid="):
        ah.profile(res, "a")
    prof = ah.profile(res, "a", grid=np.linspace(0.5, 4.0, 8))
    assert prof.open_ends == (True, True)
    assert np.isneginf(prof.conf_int()[0]) and np.isposinf(prof.conf_int()[1])
    np.testing.assert_allclose(prof.lr, 0.0, atol=1e-8)  # flat: every a reaches the maximum
    assert "open" in str(prof)


def test_profile_bad_input(normal_fit):
    _, res = normal_fit
    with pytest.raises(ValueError, match=r"unknown parameter 'mu'.*beta\[0\]"):
        ah.profile(res, "mu")
    with pytest.raises(ValueError, match="inside its domain"):
        ah.profile(res, "sigma", grid=[-1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="out of range"):
        ah.profile(res, 5)


def _poisson_fit(**kw):
    rng = np.random.default_rng(1)
    X = np.column_stack([np.ones(40), rng.normal(size=40)])
    y = rng.poisson(2.0, size=40).astype(float)
    return ah.fit(ah.models.poisson(X, y), **kw)


def test_user_grid_away_from_the_ends_still_finds_them():
    """A grid of two close points near the estimate (spacing 0.005 against a Wald SE of 0.108)
    stopped after four doublings and called the lower end open (review); the search now steps
    in Wald standard errors and finds both ends, equal to the default search's (same
    bracketing and interpolation: 1e-7 relative to the SE, as above)."""
    res = _poisson_fit()
    ref = ah.profile(res, "beta[0]").conf_int()
    se = float(res.bse_flat[0])
    for grid in ([0.74, 0.745], [0.1, 0.5]):
        prof = ah.profile(res, "beta[0]", grid=grid)
        assert prof.open_ends == (False, False)
        np.testing.assert_allclose(prof.conf_int(), ref, atol=TOL * se)


def test_profile_of_a_point_that_is_not_the_maximum_warns():
    """maxiter=2 stops 37.6 log-likelihood units short: the interval measured from there is
    wrong ([-0.06, inf) against [0.453, 0.752] in review); it is flagged, not silent."""
    res = _poisson_fit(maxiter=2, warn=False)
    with pytest.warns(ah.InferenceWarning) as record:
        prof = ah.profile(res, "beta[1]")
    text = " ".join(str(w.message) for w in record)
    assert "not a maximum" in text and "found a log-likelihood" in text
    assert not prof.valid and "NOT VALID" in str(prof) and prof.to_dict()["valid"] is False
    good = ah.profile(_poisson_fit(), "beta[1]")
    assert good.valid and good.higher_found <= 1e-8 * (1 + abs(good.llf_hat))


def test_open_end_says_why_and_prints_inf():
    """Separated logistic data: the slope's upper end is open because the profile levels off
    (the log-likelihood approaches its supremum as the slope grows), and the table prints inf,
    not nan."""
    x = np.linspace(-2, 2, 30)
    X = np.c_[np.ones(30), x]
    with pytest.warns(ah.InferenceWarning):
        sep = ah.fit(ah.models.logistic(X, (x > 0.1).astype(float)))
    prof = ah.profile(sep, "beta[1]", grid=[1.0, 5.0])
    assert prof.open_ends[1] and "levels off" in prof.end_notes[1]
    assert np.isposinf(prof.conf_int()[1]) and "inf" in str(prof).split("\n")[3]
    assert "upper end is open" in str(prof)


def test_profile_grid_and_span_checked(normal_fit):
    _, res = normal_fit
    with pytest.raises(ValueError, match="at least 2 distinct"):
        ah.profile(res, "beta[0]", grid=[0.5, 0.5])
    with pytest.raises(ValueError, match="NaN or infinite"):
        ah.profile(res, "beta[0]", grid=[0.1, np.nan, 0.5])
    for span in (0.0, -2.0, np.nan):
        with pytest.raises(ValueError, match="span must be a positive"):
            ah.profile(res, "beta[0]", span=span)
