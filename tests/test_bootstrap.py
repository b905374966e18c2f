"""Bootstrap: replicates equal single fits, SEs agree with theory, intervals are the textbook ones.

References: each replicate is checked against ``ah.fit`` on the same resampled data (weights,
simulated or block-resampled), which is the definition; the bootstrap SE against the inverse
observed information (asymptotically equal for a correctly specified model); the block
bootstrap against the closed-form long-run standard error of an AR(1) mean; BCa's acceleration
against its closed form for a sample mean and against the delete-one jackknife.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._resampling import _block_resample, _multinomial_weights, key_data, simulated
from helpers import dem2gbp


def _logistic(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(n), rng.normal(size=(n, 3))]
    beta = np.array([0.2, 0.5, -0.4, 0.3])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ beta))).astype(float)
    return ah.models.logistic(X, y), beta


@pytest.fixture(scope="module")
def logistic_fit():
    model, _ = _logistic()
    return ah.fit(model)


def test_nonparametric_se_within_10_percent_of_hessian_se(logistic_fit):
    """N = 1500: the bootstrap SD estimates the same sampling SD as the inverse information.
    With B = 2000 its Monte-Carlo error is ~1/sqrt(2B) = 1.6%, and the two differ by
    O(1/sqrt(N)) otherwise: 10% is the issue's bound."""
    boot = ah.bootstrap(logistic_fit, n=2000, key=jax.random.key(1))
    assert boot.n_failed == 0 and boot.replicates.shape == (2000, 4)
    ratio = boot.se_flat / np.asarray(logistic_fit.bse_flat)
    assert np.all(np.abs(ratio - 1) < 0.10), ratio
    assert set(boot.se) == {"beta"} and boot.se["beta"].shape == (4,)
    cmp = boot.compare()
    np.testing.assert_allclose(cmp.wald_se["hessian"], np.asarray(logistic_fit.bse_flat), rtol=1e-12)
    assert "boot SE" in str(cmp) and "robust SE" in str(cmp)
    assert cmp.to_dict()["n_ok"] == 2000


def test_replicates_equal_single_fits_with_the_same_weights(logistic_fit):
    model = logistic_fit.model
    boot = ah.bootstrap(logistic_fit, n=5, key=3, cov_type="robust")
    raw = key_data(3, 5)
    for b in range(5):
        w = _multinomial_weights(raw[b], model.nobs, model.dtype)
        assert float(w.sum()) == model.nobs  # a resample of N observations
        single = ah.fit(model, weights=w, cov_type="robust")
        # same solver, same arithmetic; vmap may reorder reductions: 1e-10
        np.testing.assert_allclose(np.asarray(boot.replicates[b]), np.asarray(single.params_flat), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(boot.fits.bse_flat[b]), np.asarray(single.bse_flat), rtol=1e-10)


def test_intervals_are_the_textbook_formulas(logistic_fit):
    boot = ah.bootstrap(logistic_fit, n=400, key=5)
    reps = np.asarray(boot.replicates)
    theta = np.asarray(logistic_fit.params_flat)
    pct = boot.conf_int(0.1, method="percentile", flat=True)
    np.testing.assert_allclose(pct, np.quantile(reps, [0.05, 0.95], axis=0).T, rtol=1e-14)
    basic = boot.conf_int(0.1, method="basic", flat=True)
    np.testing.assert_allclose(basic, (2 * theta - np.quantile(reps, [0.95, 0.05], axis=0)).T, rtol=1e-14)
    t = (reps - theta) / np.asarray(boot.fits.bse_flat)
    se = np.asarray(logistic_fit.bse_flat)
    stud = boot.conf_int(0.1, method="studentized", flat=True)
    np.testing.assert_allclose(stud, np.stack([theta - np.quantile(t, 0.95, axis=0) * se,
                                               theta - np.quantile(t, 0.05, axis=0) * se], 1), rtol=1e-14)
    tree = boot.conf_int(method="bca")
    assert tree["beta"].shape == (4, 2) and np.all(tree["beta"][:, 0] < tree["beta"][:, 1])
    # a well-behaved logistic model: every interval is close to Wald's (within 15% of its width)
    wald = np.asarray(logistic_fit.conf_int(flat=True))
    for method in ah._bootstrap.INTERVALS:
        ci = boot.conf_int(method=method, flat=True)
        assert np.all(np.abs(ci - wald) < 0.15 * (wald[:, 1:] - wald[:, :1])), method
    with pytest.raises(ValueError, match="method must be one of"):
        boot.conf_int(method="bc")


def test_bca_acceleration_closed_form_for_a_mean():
    """For the mean of a normal sample the influence of y_i is exactly proportional to
    y_i - ybar, so a = sum d^3 / (6 (sum d^2)^1.5): a closed form (rounding: 1e-10)."""
    rng = np.random.default_rng(2)
    y = rng.gamma(2.0, 1.0, size=300)  # skewed, so a is far from 0
    res = ah.fit(ah.models.linear(np.ones((300, 1)), y))
    with warnings.catch_warnings():
        # a normal model of gamma(2) data: sigma's Hessian SE is too small by sqrt((kurtosis -
        # 1) / 2) = 1.58, right at the Wald check's limit (1.6x here); not what this test is about
        warnings.simplefilter("ignore", ah.BootstrapWarning)
        boot = ah.bootstrap(res, n=200, key=0)
    d = y - y.mean()
    np.testing.assert_allclose(boot.acceleration()[0], np.sum(d**3) / (6 * np.sum(d**2) ** 1.5), rtol=1e-10)


def test_bca_acceleration_matches_the_jackknife():
    """The infinitesimal jackknife (exact scores and Hessian) against N delete-one refits: they
    agree to O(1/N); at N = 200 within 10%."""
    rng = np.random.default_rng(1)
    n = 200
    X = np.c_[np.ones(n), rng.normal(size=n)]
    model = ah.models.poisson(X, rng.poisson(np.exp(-0.5 + 0.8 * X[:, 1])))
    boot = ah.bootstrap(ah.fit(model), n=50, key=0)
    jack = ah.fit_batch(model, weights=np.ones((n, n)) - np.eye(n))
    theta = np.asarray(jack.params_flat)
    U = (n - 1) * (theta.mean(0) - theta)
    a_jack = np.sum(U**3, 0) / (6 * np.sum(U**2, 0) ** 1.5)
    np.testing.assert_allclose(boot.acceleration(), a_jack, rtol=0.10)


def test_parametric_bootstrap_replicates_are_fits_to_simulated_data(logistic_fit):
    model = logistic_fit.model
    boot = ah.bootstrap(logistic_fit, n=1000, key=7, kind="parametric")
    ratio = boot.se_flat / np.asarray(logistic_fit.bse_flat)
    assert np.all(np.abs(ratio - 1) < 0.10), ratio  # correctly specified: as for nonparametric
    raw = key_data(7, 1000)
    for b in (0, 999):
        data = simulated(model, raw[b], logistic_fit.params, model.data)
        single = ah.fit(model.with_data(data), start=logistic_fit.params)
        np.testing.assert_allclose(np.asarray(boot.replicates[b]), np.asarray(single.params_flat), rtol=1e-10)


def test_garch_parametric_and_block_bootstrap_equal_single_fits():
    y = dem2gbp()[:600]
    model = ah.models.garch11(y)
    res = ah.fit(model)
    with pytest.raises(ValueError, match="use kind='block' or kind='parametric'"):
        ah.bootstrap(res, n=4, key=0)
    for kind in ("parametric", "block"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ah.BootstrapWarning)
            boot = ah.bootstrap(res, n=3, key=11, kind=kind, block_length=20 if kind == "block" else None)
        raw = key_data(11, 3)
        for b in (2,):  # one member: each single fit compiles a new model (with_data)
            if kind == "parametric":
                data = simulated(model, raw[b], res.params, model.data)
            else:
                data = _block_resample(raw[b], model.data, 600, 20)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ah.InferenceWarning)
                single = ah.fit(model.with_data(jax.tree_util.tree_map(np.asarray, data)), start=res.params)
            assert int(boot.fits.status_code[b]) == int(single.status_code)
            # the recursion's long sums make GARCH fits agree to ~1e-9 relative (not 1e-10)
            np.testing.assert_allclose(np.asarray(boot.replicates[b]), np.asarray(single.params_flat), rtol=1e-8)


def test_block_resampling_lays_out_wrapped_blocks():
    n, L = 103, 10
    data = {"t": jnp.arange(n, dtype=float), "const": jnp.ones(3)}
    out = _block_resample(key_data(0, 1)[0], data, n, L)
    t = np.asarray(out["t"]).astype(int)
    assert t.shape == (n,) and np.array_equal(np.asarray(out["const"]), np.ones(3))
    for start in range(0, n, L):
        block = t[start:start + L]
        assert np.array_equal(block, (block[0] + np.arange(block.size)) % n)


def test_block_bootstrap_recovers_the_long_run_variance():
    """Mean of an AR(1) series, rho = 0.6: the i.i.d. bootstrap SE estimates sigma_e/sqrt(N)
    but the true SE is sqrt((1+rho)/(1-rho)) = 2 times larger. The block bootstrap (L = 50)
    recovers it up to its O(1/L) downward bias and ~2% Monte-Carlo error: ratio in [1.7, 2.2]."""
    rng = np.random.default_rng(4)
    n, rho = 4000, 0.6
    e = rng.standard_normal(n + 200)
    x = np.zeros_like(e)
    for t in range(1, e.size):
        x[t] = rho * x[t - 1] + e[t]
    res = ah.fit(ah.models.linear(np.ones((n, 1)), x[200:]))
    iid = ah.bootstrap(res, n=1000, key=1)
    # the i.i.d. model's Hessian SE misses the autocorrelation: the Wald check says so
    with pytest.warns(ah.BootstrapWarning, match=r"beta\[0\] 1\.99x .*the Wald SE is wrong"):
        block = ah.bootstrap(res, n=1000, key=1, kind="block", block_length=50)
    ratio = block.se_flat[0] / iid.se_flat[0]
    assert 1.7 < ratio < 2.2, ratio


def test_failed_replicates_are_counted_and_left_out():
    """Small logistic sample with a strong covariate: some resamples are separable (the MLE
    is at infinity). With the default iteration limit every one of them is recognised as
    UNBOUNDED; with 20 iterations (regular resamples need 5-11) a crawl may also end at the
    limit first (MAX_ITERATIONS). They get a status, a warning, and are excluded; nothing
    raises."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = (x + 0.3 * rng.normal(size=30) > 0).astype(float)
    res = ah.fit(ah.models.logistic(np.c_[np.ones(30), x], y))
    with pytest.warns(ah.BootstrapWarning, match=r"bootstrap fits failed \("):
        boot = ah.bootstrap(res, n=200, key=0, maxiter=20)
    assert 0 < boot.n_failed < 200
    failed = np.asarray(boot.fits.status_code)[~boot.ok]
    assert np.all((failed == ah.Status.MAX_ITERATIONS) | (failed == ah.Status.UNBOUNDED))
    assert np.all(np.isfinite(boot.se_flat))
    assert boot.ok.sum() == 200 - boot.n_failed
    with pytest.warns(ah.BootstrapWarning, match=r"\d+ x UNBOUNDED\)"):
        full = ah.bootstrap(res, n=200, key=0)
    assert full.n_failed == boot.n_failed  # the same separable resamples (same key)
    assert np.all(np.asarray(full.fits.status_code)[~full.ok] == ah.Status.UNBOUNDED)
    np.testing.assert_array_equal(full.ok, boot.ok)


def test_bootstrap_bad_input(logistic_fit):
    with pytest.raises(ValueError, match="PRNG key is needed"):
        ah.bootstrap(logistic_fit, n=10)
    with pytest.raises(ValueError, match="kind must be one of"):
        ah.bootstrap(logistic_fit, n=10, key=0, kind="wild")
    with pytest.raises(ValueError, match="positive integer number of replicates"):
        ah.bootstrap(logistic_fit, n=0, key=0)
    with pytest.raises(ValueError, match=r"block_length must be an integer in \[1, 1499\]"):
        ah.bootstrap(logistic_fit, n=10, key=0, kind="block", block_length=0)
    with pytest.raises(ValueError, match="only used with kind='block'"):
        ah.bootstrap(logistic_fit, n=10, key=0, block_length=5)
    with pytest.raises(ValueError, match="single PRNG key"):
        ah.bootstrap(logistic_fit, n=10, key=jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match="needs a FitResult"):
        ah.bootstrap(logistic_fit.model, n=10, key=0)
    plain = ah.Model(ah.models.logistic_loglik, dict(logistic_fit.model.data), {"beta": jnp.zeros(4)})
    with pytest.raises(ValueError, match="has no simulate function"):
        ah.bootstrap(ah.fit(plain), n=10, key=0, kind="parametric")


def test_studentized_uses_one_kind_of_standard_error(logistic_fit):
    """Replicates with robust SEs are scaled back by the estimate's robust SE, not by the fit's
    Hessian SE (mixing them gave 75% coverage at a nominal 95% in the review's simulation).
    Same key, same resamples: equal to bootstrapping the robust fit (rounding: 1e-12)."""
    mixed = ah.bootstrap(logistic_fit, n=100, key=3, cov_type="robust")
    robust_fit = ah.fit(logistic_fit.model, cov_type="robust")
    consistent = ah.bootstrap(robust_fit, n=100, key=3)
    np.testing.assert_allclose(np.asarray(mixed.estimate_se), np.asarray(robust_fit.bse_flat), rtol=1e-12)
    np.testing.assert_allclose(mixed.conf_int(method="studentized", flat=True),
                               consistent.conf_int(method="studentized", flat=True), rtol=1e-12)


def test_bca_is_nan_where_the_fit_has_no_standard_error():
    """y_i ~ N(mu, 1 + s2) with s2 >= 0 (known unit noise plus extra variance): the sample
    variance is below 1, so s2's MLE is its bound 0, with no Wald SE; the influence-function
    acceleration does not apply there, so BCa is NaN for s2, while mu keeps a finite interval."""
    y = 1.0 + np.random.default_rng(4).standard_normal(60)
    assert y.var() < 1.0

    def loglik(p, d):
        return -0.5 * (d["y"] - p["mu"]) ** 2 / (1.0 + p["s2"]) - 0.5 * jnp.log(1.0 + p["s2"])

    res = ah.fit(ah.Model(loglik, {"y": y}, {"mu": 0.0, "s2": ah.Positive(0.5)}), warn=False)
    assert np.isnan(float(res.bse_flat[1])) and np.isfinite(float(res.bse_flat[0]))
    bca = ah.bootstrap(res, n=50, key=0).conf_int(method="bca", flat=True)
    assert np.all(np.isnan(bca[1])) and np.all(np.isfinite(bca[0]))


# ------------------------------------------------------------------------------------------
# Issue 13.3: resampling must respect the model's structure
# ------------------------------------------------------------------------------------------
from autohess._block_length import pw_bandwidth, pw_block_lengths, pw_circular_block_length  # noqa: E402
from autohess._resampling import resampling_problem  # noqa: E402


def _ar1_series(n, phi, seed, burn=300):
    e = np.random.default_rng(seed).standard_normal(n + burn)
    y = np.zeros_like(e)
    for t in range(1, e.size):
        y[t] = phi * y[t - 1] + e[t]
    return y[burn:]


def _ar1_loglik(p, d):
    """A user's exact Gaussian AR(1): the lag is made by shifting y inside the likelihood."""
    y, mu, phi, s = d["y"], p["mu"], p["phi"], p["sigma"]
    prev = jnp.concatenate([mu[None], y[:-1]])
    var = jnp.concatenate([(s**2 / (1 - phi**2))[None], jnp.full(y.shape[0] - 1, s**2)])
    r = y - mu - phi * (prev - mu)
    return -0.5 * (jnp.log(2 * jnp.pi * var) + r**2 / var)


def _arma11_kalman_loglik(p, d):
    """A user's ARMA(1,1) by the exact Kalman filter in lax.scan (prediction-error
    decomposition): state (x_t, theta e_t), x_t = phi x_{t-1} + e_t + theta e_{t-1}."""
    phi, theta, s2 = p["phi"], p["theta"], p["sigma"] ** 2
    T = jnp.array([[phi, 1.0], [0.0, 0.0]])
    R = jnp.array([1.0, theta])
    Q = s2 * jnp.outer(R, R)
    # stationary state covariance: vec(P) = (I - T kron T)^-1 vec(Q)
    P0 = jnp.linalg.solve(jnp.eye(4) - jnp.kron(T, T), Q.reshape(-1)).reshape(2, 2)

    def step(carry, y):
        a, P = carry
        v, F = y - p["mu"] - a[0], P[0, 0]
        K = P[:, 0] / F
        a_upd, P_upd = a + K * v, P - jnp.outer(K, P[0, :])
        return (T @ a_upd, T @ P_upd @ T.T + Q), -0.5 * (jnp.log(2 * jnp.pi * F) + v * v / F)

    return jax.lax.scan(step, (jnp.zeros(2), P0), d["y"])[1]


AR1_PARAMS = {"mu": 0.0, "phi": ah.Interval(-1.0, 1.0, 0.0), "sigma": ah.Positive(1.0)}


@pytest.fixture(scope="module")
def persistent_ar1_fit():
    """The issue's case: phi = 0.87, N = 123, simulated; this seed's estimate is 0.879."""
    y = _ar1_series(123, 0.87, seed=3) + 1.0
    res = ah.fit(ah.Model(_ar1_loglik, {"y": y}, AR1_PARAMS, name="ar1"))
    assert abs(float(res.params["phi"]) - 0.879) < 1e-3
    return res


def test_nonparametric_refuses_an_undeclared_recursion(persistent_ar1_fit):
    """Left at the default independent=True, a recursive model's observations must not be
    resampled: the bootstrap says why and what to do, before any refit."""
    with pytest.raises(ValueError, match=r"model 'ar1' is not separable by observation: at the estimate") as err:
        ah.bootstrap(persistent_ar1_fit, n=50, key=0)
    msg = str(err.value)
    assert "independent=False" in msg and "kind='block'" in msg and "kind='parametric'" in msg


def test_resampling_check_catches_recursions_and_pooled_statistics():
    """Each model links observations in its own way; each is caught. The ARMA(1,1) Kalman filter
    and a regression on a pooled mean of y only at the estimate; the AR(1) at phi = 0 (no
    dependence there) by the second, perturbed point."""
    y = _ar1_series(150, 0.6, seed=1)
    arma = ah.Model(_arma11_kalman_loglik, {"y": y},
                    {"mu": 0.0, "phi": ah.Interval(-1.0, 1.0, 0.5), "theta": 0.3, "sigma": ah.Positive(1.0)},
                    name="arma11")
    assert "at the estimate" in resampling_problem(arma, arma.init_params)
    with pytest.raises(ValueError, match="'arma11' is not separable"):
        ah.bootstrap(ah.evaluate(arma, arma.init_params, warn=False), n=20, key=0)

    def pooled(p, d):  # centres y on its own sample mean: a statistic of all observations
        return -0.5 * (d["y"] - jnp.mean(d["y"]) - p["b"]) ** 2

    assert "at the estimate" in resampling_problem(ah.Model(pooled, {"y": y}, {"b": 0.1}), {"b": jnp.asarray(0.1)})

    ar1 = ah.Model(_ar1_loglik, {"y": y}, AR1_PARAMS)
    at_zero = {"mu": jnp.asarray(0.0), "phi": jnp.asarray(0.0), "sigma": jnp.asarray(1.0)}
    problem = resampling_problem(ar1, at_zero)
    assert problem is not None and problem.startswith("at a perturbed point")
    with pytest.raises(ValueError, match="at a perturbed point"):
        ah.bootstrap(ah.evaluate(ar1, at_zero, warn=False), n=20, key=0)
    arima = pytest.importorskip("statsmodels.tsa.arima.model")
    # the filter is the exact ARMA likelihood (statsmodels' state-space ARIMA; same
    # recursions in another order: 1e-10)
    ref = arima.ARIMA(y, order=(1, 0, 1), trend="c").loglike(np.array([0.0, 0.5, 0.3, 1.0]))
    assert arma.loglik() == pytest.approx(ref, rel=1e-10)


def test_resampling_check_passes_independent_models():
    """No false alarm: observations that interact only through the parameters (a shared mean
    and SD; group effects indexed per observation, with a data leaf that is not per
    observation; a trend on the position; a logistic regression) pass at the estimate and at
    the perturbed point."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)

    def normal(p, d):
        return -0.5 * ((d["y"] - p["mu"]) / p["s"]) ** 2 - jnp.log(p["s"])

    m = ah.Model(normal, {"y": y}, {"mu": 0.3, "s": ah.Positive(1.5)})
    assert resampling_problem(m, m.init_params) is None

    g = rng.integers(0, 4, 200)

    def groups(p, d):  # d["scale"] has 4 entries, one per group: not an observation axis
        return -0.5 * ((d["y"] - p["alpha"][d["g"].astype(int)]) / d["scale"][d["g"].astype(int)]) ** 2

    m = ah.Model(groups, {"y": y, "g": g, "scale": np.array([1.0, 2.0, 0.5, 1.5])}, {"alpha": jnp.ones(4)})
    assert resampling_problem(m, m.init_params) is None

    def trend(p, d):  # a position-dependent mean: the trend stays with its row, as under weights
        t = jnp.arange(d["y"].shape[0]) / 200.0
        return -0.5 * (d["y"] - p["a"] - p["b"] * t) ** 2

    m = ah.Model(trend, {"y": y}, {"a": 0.1, "b": 0.5})
    assert resampling_problem(m, m.init_params) is None

    model, beta = _logistic(n=300)
    assert resampling_problem(model, {"beta": jnp.asarray(beta)}) is None


def test_logistic_bootstrap_raises_no_warning(logistic_fit):
    """A correctly specified logistic model (N = 1500): replicates agree with Wald within
    Monte-Carlo error, so nothing is flagged (n = 400, the size test_intervals compiles)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.BootstrapWarning)
        boot = ah.bootstrap(logistic_fit, n=400, key=5)
    check = boot.wald_check()
    assert not check.flagged.any() and check.n_ok == 400
    # ~1/sqrt(2 * 400) = 3.5% Monte-Carlo error, x4, + log(1.25) = 0.22: the limits are ~0.36
    assert np.all((check.se_limit > 0.3) & (check.se_limit < 0.45)), check.se_limit
    assert boot.compare().disagree == ()


def test_bandwidth_rule_on_known_correlograms():
    """m_hat: the smallest positive m after which K_N = 5 autocorrelations in a row lie within
    2 sqrt(log10 N / N) (0.11 at N = 1000); M = 2 m_hat, at most m_max (Politis and White,
    2004, sec. 3.2). Correlograms built by hand, so m_hat is known exactly."""
    n, m_max = 1000, 37  # ceil(sqrt(1000)) + 5
    rho = np.zeros(m_max + 1)
    rho[0] = 1.0
    assert pw_bandwidth(rho, n) == 2  # white noise: m_hat = 1 (positive)
    rho[1:5] = [0.9, 0.6, 0.3, 0.2]
    assert pw_bandwidth(rho, n) == 8  # lags 5.. negligible: m_hat = 4
    rho[7] = 0.3  # a significant lag 7 inside every window before it
    assert pw_bandwidth(rho, n) == 14
    rho[1:] = 0.5  # never negligible in range: the widest window
    assert pw_bandwidth(rho, n) == m_max


def test_block_length_formula_matches_arch():
    """arch's optimal_block_length implements the same corrected formula for the circular
    bootstrap; it picks m_hat with autocorrelations normalised by each lag's own overlap
    (its documentation says so), so its bandwidth M can differ from the paper's R(k)/R(0)
    rule used here. Given the bandwidth, the block lengths must agree to rounding (1e-10):
    for each series some M in 1..m_max reproduces arch's number."""
    arch = pytest.importorskip("arch.bootstrap")
    from autohess._block_length import _autocovariances

    for n, phi, seed in [(123, 0.87, 0), (500, 0.5, 1), (2000, 0.2, 2), (10000, 0.95, 3)]:
        y = _ar1_series(n, phi, seed)
        want = float(arch.optimal_block_length(y).iloc[0]["circular"])
        m_max = int(np.ceil(np.sqrt(n))) + 5
        R = _autocovariances(y[:, None], m_max)[:, 0]
        ours = np.array([pw_circular_block_length(R, n, M) for M in range(1, m_max + 1)])
        assert np.min(np.abs(ours - want)) < 1e-10 * want, (n, phi, want, ours)
        # and our own bandwidth gives one of these lengths
        assert pw_block_lengths(y)[0] == pytest.approx(ours[pw_bandwidth(R / R[0], n) - 1], rel=1e-12)


def test_block_length_near_closed_form_for_a_long_ar1():
    """For an AR(1) with coefficient rho the optimal circular-block length is
    (2 G^2 / D_CB)^(1/3) N^(1/3) with G / g(0) = 2 rho / (1 - rho^2): 64.4 at rho = 0.5,
    N = 10^5. Over 20 simulated series the estimate's SD is 4%: within 15% (~4 SDs).
    A constant column has no dependence to keep (NaN); white noise needs no blocks (< 3)."""
    n, rho = 100_000, 0.5
    exact = (1.5 * (2 * rho / (1 - rho**2)) ** 2) ** (1 / 3) * n ** (1 / 3)
    y = _ar1_series(n, rho, seed=7)
    b = pw_block_lengths(np.c_[y, np.ones(n), np.random.default_rng(8).standard_normal(n)])
    assert abs(b[0] / exact - 1) < 0.15, (b[0], exact)
    assert np.isnan(b[1]) and b[2] < 3


def test_block_default_length_from_the_data_and_a_too_short_block_warns(persistent_ar1_fit):
    """The issue's case (phi = 0.87, N = 123). The old default N^(1/3) = 5 broke the series
    at every join: the replicates' phi centred 4.7 SEs below the estimate, sigma's SE 2.2x
    the Hessian's. The data-driven length is far longer (the closed form at phi = 0.879 is
    22; this series' estimate 14) and SE(phi) is within 1.5x of the Hessian's (1.13x
    measured; Monte-Carlo error 4% at n = 300). A block of 2 must warn, saying what to do.
    One compiled program serves both block lengths."""
    res = persistent_ar1_fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.BootstrapWarning)  # a short series: see below
        boot = ah.bootstrap(res, n=300, key=1, kind="block")
    assert boot.block_length >= 10 and "Politis-White" in boot.block_length_rule
    ratio = boot.se_flat[1] / float(res.bse_flat[1])
    assert 1 / 1.5 < ratio < 1.5, ratio
    cmp = boot.compare()
    assert f"block length {boot.block_length} (Politis-White, set by data['y'])" in str(cmp)
    assert cmp.to_dict()["block_length"] == boot.block_length
    assert f"block_length={boot.block_length}" in repr(boot)
    with pytest.warns(ah.BootstrapWarning, match=r"rerun with a longer block_length \(e.g. 4\)") as rec:
        short = ah.bootstrap(res, n=300, key=1, kind="block", block_length=2)
    assert "phi" in str(rec[0].message) and short.block_length_rule == "given"
    check = short.wald_check()
    assert check.bias_flagged[1] and check.bias_in_se[1] < -2  # phi pulled towards 0
    assert "phi" in short.compare().disagree
    assert res.model.trace_counts["bootstrap"] == 1  # block length is an input, not a constant
