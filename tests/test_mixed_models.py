"""The zoo's mixed models (issue #15 part 6): ``ah.models.mixed_*`` constructors.

References: the same model written by hand with ``ah.Model(random=...)`` (the llf is the same
function: 1e-10), statsmodels ``MixedLM`` by ML (the Gaussian model, where Laplace is exact), an
independent numpy Laplace approximation (binomial, with the log binomial coefficient lme4's
``logLik`` carries), lme4's published ``cbpp`` fit, and closed-form / Gauss-Hermite moments for the simulated data (a
law-of-large-numbers check). Data are small (8 groups x 5) so the file stays quick: each model
construction compiles its Laplace marginal once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln
from jax.scipy.stats import poisson as jpoisson

import autohess as ah
import laplace_reference

G, PER = 8, 5
N = G * PER
_rng = np.random.default_rng(20261201)
CODES = np.repeat(np.arange(G), PER)
X = np.column_stack([np.ones(N), np.linspace(-1.0, 1.0, N)])
TRIALS = _rng.integers(1, 6, N).astype(float)
_eta = 0.2 + 0.5 * X[:, 1] + 0.6 * _rng.standard_normal(G)[CODES]
Y = {
    "linear": _eta + 0.5 * _rng.standard_normal(N),
    "logistic": _rng.binomial(TRIALS.astype(int), 1.0 / (1.0 + np.exp(-_eta))).astype(float),
    "poisson": _rng.poisson(np.exp(_eta)).astype(float),
    "negative_binomial": _rng.poisson(np.exp(_eta) * _rng.gamma(2.0, 0.5, N)).astype(float),
    "zip": np.where(_rng.random(N) < 0.3, 0.0, _rng.poisson(np.exp(_eta))).astype(float),
}
OFFSET = 0.1 * np.sin(np.arange(N))


def _f64(params: dict) -> dict:
    """Leaves as float64 arrays: Python floats are weakly typed, and a compiled program is
    keyed on that, so they would compile the model's marginal a second time."""
    return {k: jnp.asarray(np.asarray(v, np.float64)) for k, v in params.items()}


#: a point away from the constructors' starts, at which likelihoods and draws are compared
P = {
    "linear": {"beta": jnp.array([0.3, 0.4]), "sigma": 0.5, "sd": 0.8},
    "logistic": {"beta": jnp.array([0.3, 0.4]), "sd": 0.8},
    "poisson": {"beta": jnp.array([0.3, 0.4]), "sd": 0.8},
    "negative_binomial": {"alpha": 0.4, "beta": jnp.array([0.3, 0.4]), "sd": 0.8},
    "zip": {"beta": jnp.array([0.3, 0.4]), "beta_zero": jnp.array([-0.8]), "sd": 0.8},
}
P = {family: _f64(p) for family, p in P.items()}


@functools.cache
def zoo(family: str) -> ah.Model:
    """The zoo's random-intercept model of ``family`` on the data above (built once)."""
    kwargs = {
        "linear": {},
        "logistic": {"trials": TRIALS, "offset": OFFSET},
        "poisson": {"offset": OFFSET},
        "negative_binomial": {"offset": OFFSET},
        "zip": {"offset": OFFSET},
    }[family]
    return getattr(ah.models, f"mixed_{family}")(X, Y[family], CODES, **kwargs)


# -- the same models written by hand, as the example does ------------------------------
def _hand_loglik(family):
    def eta_of(p, d):
        return d["X"] @ p["beta"] + d["offset"] + p["b"][d["herd"]]

    if family == "linear":
        def loglik(p, d):
            return jax.scipy.stats.norm.logpdf(d["y"], d["X"] @ p["beta"] + p["b"][d["herd"]], p["sigma"])
    elif family == "logistic":
        def loglik(p, d):
            eta, n, y = eta_of(p, d), d["n"], d["y"]
            logchoose = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
            return logchoose + y * eta - n * jnp.logaddexp(0.0, eta)
    elif family == "poisson":
        def loglik(p, d):
            return jpoisson.logpmf(d["y"], jnp.exp(eta_of(p, d)))
    elif family == "negative_binomial":
        def loglik(p, d):
            r, mu, y = 1.0 / p["alpha"], jnp.exp(eta_of(p, d)), d["y"]
            return (gammaln(y + r) - gammaln(r) - gammaln(y + 1)
                    + r * jnp.log(r / (r + mu)) + y * jnp.log(mu / (r + mu)))
    else:
        def loglik(p, d):
            pi = jax.nn.sigmoid(p["beta_zero"][0])
            lp = jpoisson.logpmf(d["y"], jnp.exp(eta_of(p, d)))
            return jnp.where(d["y"] == 0, jnp.log(pi + (1 - pi) * jnp.exp(lp)), jnp.log1p(-pi) + lp)
    return loglik


def _hand(family: str) -> ah.Model:
    data = {"X": X, "y": Y[family], "herd": CODES, "offset": OFFSET if family != "linear" else np.zeros(N)}
    params = {"beta": jnp.zeros(2), "sd": ah.Positive(1.0)}
    if family == "logistic":
        data["n"] = TRIALS
    if family == "linear":
        params["sigma"] = ah.Positive(1.0)
    if family == "negative_binomial":
        params["alpha"] = ah.Positive(1.0)
    if family == "zip":
        params["beta_zero"] = jnp.zeros(1)
    return ah.Model(_hand_loglik(family), data, params, random={"b": ah.Normal(sd="sd", groups="herd")})


@pytest.mark.parametrize("family", list(Y))
def test_constructor_equals_the_model_written_by_hand(family):
    """Same parameters, same labels, and the same Laplace marginal (per group and in total) at a
    point away from the start: the two are the same function, so a fit of one is a fit of the
    other. 1e-10 relative: the two logliks differ only in operation order (jax.scipy.stats
    logpmf, logaddexp vs the zoo's softplus), ~1e-15 per term, and the Laplace log-determinant
    adds second derivatives of the same order."""
    model, hand = zoo(family), _hand(family)
    assert model.labels == hand.labels
    assert model.laplace.structure.block_diagonal and hand.laplace.structure.block_diagonal
    ours, theirs = np.asarray(model.contributions(P[family])), np.asarray(hand.contributions(P[family]))
    assert ours.shape == (G,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=0)
    assert model.loglik(P[family]) == pytest.approx(hand.loglik(P[family]), rel=1e-10)


# -- random coefficients, several factors, pandas names ------------------------------------------
ZX = np.column_stack([np.ones(N), X[:, 1], X[:, 1] ** 2])
#: q = 3: rho holds the canonical partial correlations (1,0), (2,0), (2,1)
P_SLOPE = _f64({"beta": [0.2, 0.5], "sd": [0.7, 0.4, 0.3], "rho": [0.3, -0.2, 0.4]})


@functools.cache
def slope_logistic() -> ah.Model:
    """Bernoulli GLMM with correlated random coefficients on ``Z = [1, x, x^2]``."""
    return ah.models.mixed_logistic(X, (Y["logistic"] > 0).astype(float), CODES, Z=ZX)


def test_random_coefficients_and_crossed_factors_equal_hand_written_models():
    """``Z`` (q = 3, MultivariateNormal with three partial correlations, labelled by the pairs
    they correlate; q = 1, a column of ones: the random intercept model, 1e-12) and a dict of two crossed factors (dense inner Hessian) against ``ah.Model``
    written by hand, 1e-10 as above; pandas names flow into the labels and the level names
    into ``model.random_names``."""
    pd = pytest.importorskip("pandas")
    model = slope_logistic()
    assert model.labels == (
        "beta[0]", "beta[1]", "rho[1,0]", "rho[2,0]", "rho[2,1]", "sd[0]", "sd[1]", "sd[2]"
    )
    assert model.random_names == {"b": (None, None)}

    def slope_loglik(p, d):
        eta = d["X"] @ p["beta"] + jnp.sum(d["Z"] * p["b"][d["g"]], axis=1)
        return d["y"] * eta - jnp.logaddexp(0.0, eta)

    hand = ah.Model(
        slope_loglik, {"X": X, "Z": ZX, "y": (Y["logistic"] > 0).astype(float), "g": CODES},
        {"beta": jnp.zeros(2), "sd": ah.Positive(jnp.ones(3)), "rho": ah.Interval(-1, 1, jnp.zeros(3))},
        random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="g")},
    )
    np.testing.assert_allclose(model.contributions(P_SLOPE), hand.contributions(P_SLOPE), rtol=1e-10)

    # Z with one column of ones (q = 1: a scalar sd, no correlation) is the random intercept
    ones = ah.models.mixed_poisson(X, Y["poisson"], CODES, Z=np.ones((N, 1)), offset=OFFSET)
    assert ones.labels == zoo("poisson").labels
    np.testing.assert_allclose(ones.contributions(P["poisson"]), zoo("poisson").contributions(P["poisson"]), rtol=1e-12)

    # two crossed factors from pandas: text labels (sorted) and a categorical (its categories;
    # an unused last one is not a level of the random effect, which ends at the largest code)
    site_codes = np.arange(N) % 3
    df = pd.DataFrame({"const": np.ones(N), "age": X[:, 1]})
    herd = pd.Series(np.array(["h" + str(c) for c in CODES]))
    site = pd.Categorical.from_codes(site_codes, categories=["north", "south", "west", "unused"])
    model = ah.models.mixed_poisson(df, Y["poisson"], {"herd": herd, "site": site})
    assert model.labels == ("beta[const]", "beta[age]", "sd_herd", "sd_site")
    assert model.random_names == {"herd": tuple(f"h{c}" for c in range(G)), "site": ("north", "south", "west")}
    assert not model.laplace.structure.block_diagonal

    def crossed(p, d):
        eta = d["X"] @ p["beta"] + p["herd"][d["herd"]] + p["site"][d["site"]]
        return jpoisson.logpmf(d["y"], jnp.exp(eta))

    hand = ah.Model(
        crossed, {"X": X, "y": Y["poisson"], "herd": CODES, "site": site_codes},
        {"beta": jnp.zeros(2), "sd_herd": ah.Positive(1.0), "sd_site": ah.Positive(1.0)},
        random={"herd": ah.Normal(sd="sd_herd", groups="herd"), "site": ah.Normal(sd="sd_site", groups="site")},
    )
    p = _f64({"beta": [0.3, 0.4], "sd_herd": 0.7, "sd_site": 0.3})
    assert model.loglik(p) == pytest.approx(hand.loglik(p), rel=1e-10)


# -- mixed_linear vs statsmodels MixedLM (ML) ------------------------------------------------------
@pytest.mark.slow  # one Laplace fit: ~10 s of compilation on a 2-core CPU
def test_mixed_linear_random_slope_matches_statsmodels_mixedlm():
    """Random intercept and slope, 18 subjects x 10 (a sleepstudy-sized design), ML.

    statsmodels' own estimates are limited by its optimiser's tolerance (measured: sd 3e-5,
    rho 1e-4 relative; its bse_fe 2e-5), so the comparison is made at identical parameters:
    statsmodels' log-likelihood at our estimates equals our llf (1e-10: Laplace is exact for a
    Gaussian LMM and both are closed forms in other operation orders), its analytic score there
    is zero (our estimate is its MLE; |score| * SE < 1e-6 against O(1) away from it), and its
    analytic Hessian there gives our SEs (1e-6 relative: the inverse of statsmodels' profile
    Hessian in (beta, vech(D) / sigma^2) is the same block of the full inverse Hessian, which we
    map with the delta method; exact in theory, rounding and our 1e-8-level gradient aside).
    Its fitted values agree to 1e-3 SE."""
    sm = pytest.importorskip("statsmodels.api")
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    rng = np.random.default_rng(1)
    g, n = 18, 10
    codes = np.repeat(np.arange(g), n)
    x = np.tile(np.arange(n, dtype=float), g)
    Xs = np.column_stack([np.ones(g * n), x])
    B = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.12], [0.12, 0.16]], g)
    y = Xs @ [2.0, 0.5] + np.sum(Xs * B[codes], axis=1) + 0.8 * rng.standard_normal(g * n)

    # pandas Z and subject labels: the coefficient and level names reach res.random
    pd = pytest.importorskip("pandas")
    subjects = pd.Categorical.from_codes(codes, categories=[f"s{k:02d}" for k in range(g)])
    res = ah.fit(ah.models.mixed_linear(Xs, y, subjects, Z=pd.DataFrame(Xs, columns=["Intercept", "x"])))
    assert res.converged
    r = res.random["b"]
    assert r.levels == tuple(f"s{k:02d}" for k in range(g)) and r.coefficients == ("Intercept", "x")
    frame = r.to_frame()
    assert frame.index.names == ["level", "coefficient"] and frame.shape == (2 * g, 7)
    np.testing.assert_array_equal(frame.loc[("s03", "x"), "mode"], np.asarray(r.mode)[3, 1])
    assert "2-variate normal of Intercept, x" in res.summary()
    beta, sd, rho, sigma = (np.asarray(res.params[k]) for k in ("beta", "sd", "rho", "sigma"))
    D = np.array([[sd[0] ** 2, rho * sd[0] * sd[1]], [rho * sd[0] * sd[1], sd[1] ** 2]])

    smm = sm.MixedLM(y, Xs, groups=codes, exog_re=Xs)
    fit = smm.fit(reml=False, method="lbfgs")  # also sets up smm.loglike (its penalty attributes)
    at_ours = MixedLMParams.from_components(fe_params=beta, cov_re=D / sigma**2)
    assert smm.loglike(at_ours, profile_fe=False) == pytest.approx(res.llf, rel=1e-10)

    def psi(p):
        s, s2 = p["sd"], p["sigma"] ** 2
        return jnp.concatenate([p["beta"], jnp.stack([s[0] ** 2, p["rho"] * s[0] * s[1], s[1] ** 2]) / s2])

    se_ours = np.asarray(ah.delta_method(res, psi).se)
    assert np.all(np.abs(smm.score(at_ours, profile_fe=False)) * se_ours < 1e-6)
    hess, _ = smm.hessian(at_ours)
    se_sm = np.sqrt(np.diag(np.linalg.inv(-hess)))
    np.testing.assert_allclose(se_ours, se_sm, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(res.bse["beta"]), se_sm[:2], rtol=1e-6)

    np.testing.assert_allclose(fit.fe_params, beta, atol=1e-3 * se_sm[:2].min())
    assert np.sqrt(fit.scale) == pytest.approx(sigma, abs=1e-3 * float(res.bse["sigma"]))
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov_re)), sd, atol=1e-3 * float(np.min(res.bse["sd"])))


# -- mixed_logistic vs an independent numpy Laplace ---------------------------------------------
def _numpy_laplace(y, n, eta0, Zm, codes, cov):
    """Laplace log marginal of a binomial GLMM by plain Newton per group (numpy, float64),
    ``log C(n, y)`` included (what lme4's ``logLik`` reports for ``cbind(y, n - y)``)."""
    from math import lgamma

    q = Zm.shape[1]
    prec = np.linalg.inv(cov)
    logdet_cov = np.linalg.slogdet(cov)[1]
    total = sum(lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1) for a, b in zip(n, y))
    for gr in np.unique(codes):
        i = codes == gr
        Zg, yg, ng, eg = Zm[i], y[i], n[i], eta0[i]
        u = np.zeros(q)
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-(eg + Zg @ u)))
            grad = Zg.T @ (yg - ng * p) - prec @ u
            H = -(Zg.T * (ng * p * (1 - p))) @ Zg - prec
            u = u - np.linalg.solve(H, grad)
        e = eg + Zg @ u
        p = 1.0 / (1.0 + np.exp(-e))
        H = -(Zg.T * (ng * p * (1 - p))) @ Zg - prec
        j = np.sum(yg * e - ng * np.logaddexp(0.0, e)) - 0.5 * (u @ prec @ u + logdet_cov + q * np.log(2 * np.pi))
        total += j + 0.5 * q * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(-H)[1]
    return total


def test_mixed_logistic_llf_matches_an_independent_numpy_laplace():
    """Binomial with trials and an offset (random intercept), and Bernoulli with correlated
    random coefficients on [1, x, x^2], at fixed parameters. 1e-10 relative: both Newton iterations
    converge to rounding and the Laplace formula has no other approximation."""
    p = P["logistic"]
    eta0 = X @ np.asarray(p["beta"]) + OFFSET
    ref = _numpy_laplace(Y["logistic"], TRIALS, eta0, np.ones((N, 1)), CODES, np.array([[p["sd"] ** 2]]))
    assert zoo("logistic").loglik(p) == pytest.approx(ref, rel=1e-10)

    # the correlation matrix from canonical partial correlations, written out for q = 3
    # (Lewandowski, Kurowicka & Joe 2009): rows of a unit-row-norm Cholesky factor
    sd, (z10, z20, z21) = np.asarray(P_SLOPE["sd"]), np.asarray(P_SLOPE["rho"])
    L = np.array([
        [1.0, 0.0, 0.0],
        [z10, np.sqrt(1 - z10**2), 0.0],
        [z20, z21 * np.sqrt(1 - z20**2), np.sqrt((1 - z20**2) * (1 - z21**2))],
    ])
    cov = (sd[:, None] * sd[None, :]) * (L @ L.T)
    yb = (Y["logistic"] > 0).astype(float)
    ref = _numpy_laplace(yb, np.ones(N), X @ np.asarray(P_SLOPE["beta"]), ZX, CODES, cov)
    assert slope_logistic().loglik(P_SLOPE) == pytest.approx(ref, rel=1e-10)


@pytest.mark.slow  # one Laplace fit: ~9 s of compilation on a 2-core CPU
def test_mixed_logistic_fits_lme4_cbpp():
    """lme4's ``glmer`` example (``cbpp``, binomial with trials, random herd intercept), against
    lme4's own test suite (tests/glmer-1.R: fixef, theta = sd, deviance = -2 logLik =
    184.052674598026; current lme4 prints logLik -92.02657 for the same fit).

    Same objective (Laplace with log C(size, incidence)), so the estimates agree to lme4's
    optimiser tolerance: measured |diff| <= 3.5e-5 (sd), asserted 1e-4 (< 1e-3 SE). Our llf is
    the higher of the two (measured -92.0262819, 5.5e-5 above lme4's, lme4's PIRLS stopping
    short of the mode); asserted within 1e-6 relative and never below. lme4's printed SEs
    (0.2312, 0.3032, 0.3228, 0.4220: a finite-difference Hessian) are ~1% below these exact ones
    and are not compared."""
    d = laplace_reference.cbpp()
    # herds given by text labels (sorted as text: herd1, herd10, ..., herd2, ...: codes in
    # another order than the integer ones, which leaves every number below unchanged)
    labels = np.char.add("herd", (np.asarray(d["herd"]) + 1).astype(str))
    model = ah.models.mixed_logistic(d["X"], d["y"], labels, trials=d["n"])
    res = ah.fit(model)
    assert res.converged
    # the level names label the modes, in code order: level k is the herd whose observations
    # carry code k in the model's data
    r = res.random["b"]
    assert r.levels == tuple(sorted(set(labels)))
    codes = np.asarray(model.data["groups"])
    assert all(set(labels[codes == k]) == {name} for k, name in enumerate(r.levels))
    assert "15 groups of data['groups'] (levels herd1, herd10, herd11, ..., herd8, herd9)" in res.summary()
    lme4_fixef = [-1.39854982537216, -0.992335519118859, -1.12867532780426, -1.58030423764517]
    np.testing.assert_allclose(np.asarray(res.params["beta"]), lme4_fixef, rtol=0, atol=1e-4)
    assert float(res.params["sd"]) == pytest.approx(0.642226809144453, abs=1e-4)
    lme4_llf = -184.052674598026 / 2
    assert res.llf == pytest.approx(lme4_llf, rel=1e-6)
    assert res.llf >= lme4_llf


# -- simulate: draws with the right moments ------------------------------------------------------
R = 2000


def _moments(family, p):
    """Closed-form (Gauss-Hermite for the binomial) mean and variance of each y_i with the
    random intercept b ~ N(0, sd^2) integrated out; and Cov(y_i, y_j) within a group
    (linear: sd^2)."""
    sd = p["sd"]
    eta = X @ np.asarray(p["beta"]) + (OFFSET if family != "linear" else 0.0)
    m1, m2 = np.exp(eta + sd**2 / 2), np.exp(2 * eta + 2 * sd**2)  # E mu_b, E mu_b^2
    if family == "linear":
        return eta, np.full(N, sd**2 + p["sigma"] ** 2)
    if family == "logistic":
        z, w = np.polynomial.hermite_e.hermegauss(60)
        w = w / w.sum()
        prob = 1.0 / (1.0 + np.exp(-(eta[:, None] + sd * z[None, :])))
        ey = TRIALS * (prob @ w)
        n = TRIALS[:, None]
        ey2 = (n * prob * (1 - prob) + n**2 * prob**2) @ w
        return ey, ey2 - ey**2
    if family == "poisson":
        return m1, m1 + m2 - m1**2
    if family == "negative_binomial":
        return m1, m1 + (1 + p["alpha"]) * m2 - m1**2
    keep = 1.0 - 1.0 / (1.0 + np.exp(-float(p["beta_zero"][0])))
    return keep * m1, keep * (m1 + m2) - (keep * m1) ** 2


@pytest.mark.parametrize("family", list(Y))
def test_simulate_draws_have_the_marginal_moments(family):
    """Law of large numbers over R = 2000 draws: every observation's mean and variance within
    5 Monte-Carlo SEs of its closed form (the variance's SE estimated from the draws, as the SD
    of the squared deviations / sqrt(R): the lognormal-Poisson mixtures have heavy tails, so a
    fixed relative tolerance would be either loose or flaky). 40 observations: a 5-SE miss has
    probability ~2e-5 under a correct simulate (measured max |z| at R = 40000: 2.7 for the
    means, 2.5 for the variances); drawing without the random effects moves the Poisson means
    by exp(sd^2/2) = 1.38, dozens of SEs. The data's other entries are carried over and
    log_y_factorial / log_binom recomputed."""
    model, p = zoo(family), P[family]
    draws = jax.jit(jax.vmap(lambda k: model.simulate(k, p)))(jax.random.split(jax.random.key(7), R))
    y = np.asarray(draws["y"])
    mean, var = _moments(family, p)
    z = (y.mean(0) - mean) / (y.std(0) / np.sqrt(R))
    assert np.max(np.abs(z)) < 5, (family, np.max(np.abs(z)))
    se_var = np.std((y - y.mean(0)) ** 2, axis=0) / np.sqrt(R)
    z_var = (y.var(0) - var) / se_var
    assert np.max(np.abs(z_var)) < 5, (family, np.max(np.abs(z_var)))
    np.testing.assert_array_equal(np.asarray(draws["groups"][0]), CODES)
    if "log_y_factorial" in draws:
        np.testing.assert_allclose(draws["log_y_factorial"], gammaln(y + 1.0), rtol=1e-12)
    if family == "logistic":
        n = TRIALS
        logchoose = gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)
        np.testing.assert_allclose(draws["log_binom"], logchoose, rtol=1e-12, atol=1e-12)
    if family == "linear":
        # the random intercept is shared within a group: Cov(y_i, y_j) = sd^2 for i != j in one
        # group, 0 across groups (one pair's MC SE ~ (sd^2 + sigma^2) / sqrt(R) = 0.02; the
        # averages over 8 independent groups' pairs measured 0.633-0.641 and -0.003-0.002)
        c = np.cov(y, rowvar=False)
        same = (CODES[:, None] == CODES[None, :]) & ~np.eye(N, dtype=bool)
        assert np.mean(c[same]) == pytest.approx(p["sd"] ** 2, abs=0.03)
        assert abs(np.mean(c[CODES[:, None] != CODES[None, :]])) < 0.03


# -- bad input ----------------------------------------------------------------------------------
def test_mixed_models_bad_input_is_named():
    y = Y["poisson"]
    with pytest.raises(ValueError, match=r"groups has 39 entries but X has 40 rows"):
        ah.models.mixed_poisson(X, y, CODES[:-1])
    with pytest.raises(ValueError, match=r"X has 40 rows but y has 39"):
        ah.models.mixed_poisson(X, y[:-1], CODES)
    with pytest.raises(ValueError, match=r"Z has 39 rows but X has 40"):
        ah.models.mixed_linear(X, y, CODES, Z=ZX[:-1])
    with pytest.raises(TypeError, match=r"integer group codes.*whole numbers stored as floats.*astype\(int\)"):
        ah.models.mixed_poisson(X, y, CODES.astype(float))
    with pytest.raises(TypeError, match=r"integer group codes.*entry 3 is 0\.5"):
        ah.models.mixed_poisson(X, y, np.where(np.arange(N) == 3, 0.5, CODES))
    with pytest.raises(ValueError, match=r"negative codes \(first -1 at observation 2\)"):
        ah.models.mixed_poisson(X, y, np.where(np.arange(N) == 2, -1, CODES))
    with pytest.raises(ValueError, match=r"groups must be one code per observation.*shape \(40, 1\)"):
        ah.models.mixed_poisson(X, y, CODES[:, None])
    with pytest.raises(ValueError, match=r"missing labels \(None / NaN; first at observation 1\)"):
        ah.models.mixed_poisson(X, y, np.array(["a", None] + ["b"] * (N - 2), dtype=object))
    with pytest.raises(ValueError, match=r"grouping factor 'y' clashes with a name the model uses"):
        ah.models.mixed_poisson(X, y, {"y": CODES})
    with pytest.raises(TypeError, match=r"keys of groups .* identifiers"):
        ah.models.mixed_poisson(X, y, {"my herd": CODES})
    with pytest.raises(ValueError, match=r"Z= \(random coefficients\) takes one grouping factor, got 2"):
        ah.models.mixed_poisson(X, y, {"herd": CODES, "site": CODES % 2}, Z=ZX)
    with pytest.raises(ValueError, match=r"non-negative integer counts; 1 entries are not"):
        ah.models.mixed_poisson(X, np.where(np.arange(N) == 0, 1.5, y), CODES)
    with pytest.raises(ValueError, match=r"y must be 0 or 1 \(or give trials="):
        ah.models.mixed_logistic(X, Y["logistic"], CODES)
    with pytest.raises(ValueError, match=r"y must be at most trials \(successes out of trials\); 1 entries are not \(first at index 0"):
        ah.models.mixed_logistic(X, np.where(np.arange(N) == 0, 9.0, Y["logistic"]), CODES, trials=TRIALS)
    with pytest.raises(ValueError, match=r"trials has shape \(39,\), expected \(40,\)"):
        ah.models.mixed_logistic(X, Y["logistic"], CODES, trials=TRIALS[:-1])
    with pytest.raises(ValueError, match=r"trials must be positive integers"):
        ah.models.mixed_logistic(X, 0 * Y["logistic"], CODES, trials=np.zeros(N))
    with pytest.raises(ValueError, match=r"offset has shape \(39,\), expected \(40,\)"):
        ah.models.mixed_negative_binomial(X, y, CODES, offset=OFFSET[:-1])
    with pytest.raises(ValueError, match=r"X_zero has shape \(39, 1\), expected \(40, k\)"):
        ah.models.mixed_zip(X, y, CODES, X_zero=np.ones(N - 1))


def test_support_hooks_name_the_condition_per_batch_member():
    """The hooks ``fit_batch`` applies per member: a binomial member with y > trials or a wrong
    log_binom, a count member with a non-integer y, and a group code beyond G (the core's check),
    each named; the model's own data pass."""
    model = zoo("logistic")
    good = dict(model.data)
    bad = {**good, "y": good["y"].at[3].set(good["trials"][3] + 1.0)}
    wrong_constant = {**good, "log_binom": good["log_binom"] + 1.0}
    beyond = {**good, "groups": good["groups"].at[0].set(G)}
    batch = jax.tree_util.tree_map(lambda *a: jnp.stack(a), good, bad, wrong_constant, beyond)
    masks = model.support_masks(batch)
    counts = masks["y must be integer successes 0..trials out of integer trials >= 1"]
    constant = masks["log_binom must equal log C(trials, y)"]
    codes = masks[f"data['groups'] must hold codes 0..{G - 1} (the levels of random effect 'b')"]
    assert counts.all(axis=1).tolist() == [True, False, True, True]
    assert constant.all(axis=1).tolist() == [True, True, False, True]
    assert codes.all(axis=1).tolist() == [True, True, True, False]
    count_masks = zoo("zip").support_masks(jax.tree_util.tree_map(lambda a: a[None], {
        **zoo("zip").data, "y": zoo("zip").data["y"].at[1].set(0.5)}))
    assert not count_masks["y must be non-negative integer counts"].all()
