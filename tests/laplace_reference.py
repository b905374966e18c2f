"""Independent references for the random-effects (Laplace) tests: numpy/scipy only, no JAX.

Everything here is written from the textbook formulas, not from autohess, so that the tests in
``test_random_effects.py`` compare two independent computations:

- data loaders for ``data/cbpp.csv``, ``data/sleepstudy.csv``, ``data/grouseticks.csv`` and the
  simulated NB2 set ``data/nb2_sites.csv`` (sources in ``data/README.md``);
- lme4's published maximum-likelihood values (sleepstudy ``lmer(REML = FALSE)``, cbpp
  ``glmer`` Laplace);
- the closed-form Gaussian LMM marginal log-likelihood (sleepstudy) and statsmodels ``MixedLM``;
- adaptive Gauss-Hermite quadrature (AGHQ) of a one-factor random-intercept GLMM marginal
  (binomial, Poisson, NB2): per group, the mode and curvature of the integrand by Newton, then
  a k-node Gauss-Hermite rule on the standardised variable. k = 1 IS the Laplace approximation;
  k = 25 is the marginal to ~1e-10 here (checked against k = 40 in the tests);
- a dense Laplace approximation for several crossed/nested random-intercept factors (Poisson);
- Richardson-extrapolated finite differences (gradient, Hessian, Jacobian) and a Newton polish
  built on them, so that reference optima are stationary to ~1e-9 and not just to an
  optimiser's default tolerance.

All log-likelihoods carry their full constants (binomial coefficient, log y!, 2 pi terms), so
they compare with lme4's ``logLik``.
"""

from __future__ import annotations

import pathlib

import numpy as np

DATA = pathlib.Path(__file__).parent / "data"
LOG2PI = float(np.log(2.0 * np.pi))

# ---------------------------------------------------------------------------------------------
# Published values
# ---------------------------------------------------------------------------------------------

#: lme4 ``lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)`` (Bates et al.
#: 2015, JSS 67(1), and ``summary()`` printed by lme4), to the digits printed.
LME4_SLEEPSTUDY_ML = {
    "beta": (251.405, 10.467),
    "sd": (23.780, 5.717),
    "corr": 0.081,
    "sigma": 25.592,
    "llf": -875.970,
}

#: lme4 ``glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)``,
#: default Laplace (lme4's ``?cbpp`` example / ``summary()``), to the digits printed; logLik
#: includes the binomial coefficients.
LME4_CBPP_LAPLACE = {
    "beta": (-1.3983, -0.9919, -1.1282, -1.5797),
    "bse": (0.2312, 0.3032, 0.3228, 0.4220),
    "sd": 0.6421,
    "llf": -92.0267,
}

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _read_csv(name: str) -> dict:
    raw = np.genfromtxt(DATA / name, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return {k: np.asarray(raw[k]) for k in raw.dtype.names}


def codes(x) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 in order of sorted level, and G."""
    levels, inv = np.unique(np.asarray(x), return_inverse=True)
    return inv.astype(np.int64), int(levels.size)


def gammaln(x):
    from scipy.special import gammaln as _g

    return _g(x)


def cbpp() -> dict:
    """lme4's cbpp: 56 herd-period counts, incidence of 'size' cattle, 15 herds, period 1-4."""
    r = _read_csv("cbpp.csv")
    y = r["incidence"].astype(float)
    n = r["size"].astype(float)
    period = r["period"].astype(int)
    X = np.c_[np.ones(y.size), period == 2, period == 3, period == 4].astype(float)
    herd, G = codes(r["herd"])
    logbinom = gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)
    return {"X": X, "y": y, "n": n, "logbinom": logbinom, "herd": herd, "G": G}


def sleepstudy() -> dict:
    """lme4's sleepstudy: reaction time (ms) of 18 subjects over 10 days of sleep deprivation."""
    r = _read_csv("sleepstudy.csv")
    y = r["Reaction"].astype(float)
    days = r["Days"].astype(float)
    subject, G = codes(r["Subject"])
    return {"X": np.c_[np.ones(y.size), days], "y": y, "days": days, "subject": subject, "G": G}


def grouseticks() -> dict:
    """lme4's grouseticks: ticks on 403 red grouse chicks; YEAR as a factor (95 reference),
    HEIGHT (altitude) centred and scaled by its SD (ddof 0), codes for INDEX (one per chick),
    BROOD (118) and LOCATION (63)."""
    r = _read_csv("grouseticks.csv")
    y = r["TICKS"].astype(float)
    year = r["YEAR"].astype(int)
    h = r["HEIGHT"].astype(float)
    hs = (h - h.mean()) / h.std()
    X = np.c_[np.ones(y.size), year == 96, year == 97, hs].astype(float)
    out = {"X": X, "y": y, "log_y_factorial": gammaln(y + 1)}
    for name in ("INDEX", "BROOD", "LOCATION"):
        out[name.lower()], out["G_" + name.lower()] = codes(r[name])
    return out


def nb2_sites() -> dict:
    """The simulated 23-site, 644-observation NB2 data (see ``simulate_nb2_sites``)."""
    r = _read_csv("nb2_sites.csv")
    y = r["count"].astype(float)
    site, G = codes(r["site"])
    X = np.c_[np.ones(y.size), r["mined"].astype(float), r["cover"].astype(float)]
    return {"X": X, "y": y, "site": site, "G": G, "log_y_factorial": gammaln(y + 1)}


#: the parameters ``simulate_nb2_sites`` draws from
NB2_SITES_TRUTH = {"beta": (-0.6, 1.1, 0.35), "sd": 0.7, "alpha": 1.4}


def simulate_nb2_sites(seed: int = 20260915) -> dict:
    """The NB2 stand-in for glmmTMB's Salamanders (no installable package ships it): 23 sites
    x 28 visits = 644 counts, a site-level binary 'mined' (12 of 23), an observation-level
    standardised 'cover', a site random intercept N(0, 0.7^2), NB2 counts with mean mu and
    variance mu + 1.4 mu^2 (gamma-Poisson mixture). ``data/nb2_sites.csv`` is this output."""
    rng = np.random.default_rng(seed)
    G, m = 23, 28
    site = np.repeat(np.arange(G), m)
    mined = np.repeat((np.arange(G) < 12).astype(float), m)
    cover = rng.normal(size=G * m)
    b = NB2_SITES_TRUTH["sd"] * rng.normal(size=G)
    beta = np.asarray(NB2_SITES_TRUTH["beta"])
    mu = np.exp(beta[0] + beta[1] * mined + beta[2] * cover + b[site])
    a = NB2_SITES_TRUTH["alpha"]
    lam = rng.gamma(shape=1.0 / a, scale=a * mu)
    count = rng.poisson(lam)
    return {"site": site + 1, "mined": mined.astype(int), "cover": np.round(cover, 6), "count": count}


# ---------------------------------------------------------------------------------------------
# Finite differences (Richardson) and a Newton polish
# ---------------------------------------------------------------------------------------------


def richardson_jacobian(f, x, h=1e-3, levels=3):
    """Jacobian of vector ``f`` at ``x`` by central differences, Richardson-extrapolated over
    steps h, h/2, h/4 (error O(h^6) from truncation, ~eps/h from rounding): ~1e-10 relative on
    smooth float64 functions of O(1) parameters."""
    x = np.asarray(x, dtype=float)
    f0 = np.atleast_1d(np.asarray(f(x), dtype=float))
    J = np.empty((f0.size, x.size))
    for j in range(x.size):
        table = []
        for k in range(levels):
            s = h / 2**k * max(1.0, abs(x[j]))
            e = np.zeros_like(x)
            e[j] = s
            table.append((np.atleast_1d(f(x + e)) - np.atleast_1d(f(x - e))) / (2 * s))
        # Richardson: central differences have even error terms h^2, h^4, ...
        for order in range(1, levels):
            table = [(4**order * table[k + 1] - table[k]) / (4**order - 1) for k in range(len(table) - 1)]
        J[:, j] = table[0]
    return J


def richardson_gradient(f, x, h=1e-3, levels=3):
    return richardson_jacobian(lambda z: np.atleast_1d(f(z)), x, h, levels)[0]


def richardson_hessian(f, x, h=1e-3, levels=3):
    """Hessian of scalar ``f`` as the Jacobian of its Richardson gradient (symmetrised)."""
    H = richardson_jacobian(lambda z: richardson_gradient(f, z, h, levels), x, h * 10, levels)
    return 0.5 * (H + H.T)


def newton_polish(f, x, iters=8, tol=1e-10, hessian=None):
    """Newton steps on scalar ``f`` (to be minimised) with a Richardson gradient and one
    Richardson Hessian taken at the start (from a point already close to the optimum the
    iteration contracts by ~|dH| / |H| per step, far below 1): turns an optimiser's approximate
    optimum into one stationary to finite-difference accuracy (~1e-10 in the gradient)."""
    x = np.asarray(x, dtype=float)
    H = richardson_hessian(f, x) if hessian is None else hessian
    for _ in range(iters):
        step = np.linalg.solve(H, richardson_gradient(f, x))
        x = x - step
        if np.max(np.abs(step) / np.maximum(1.0, np.abs(x))) < tol:
            break
    return x


def minimise(f, x0):
    """scipy BFGS from a good start (e.g. published values) to get close, then the Newton
    polish."""
    from scipy.optimize import minimize

    r = minimize(f, x0, method="BFGS", options={"gtol": 1e-6})
    return newton_polish(f, r.x)


# ---------------------------------------------------------------------------------------------
# Gaussian LMM: closed-form marginal and statsmodels MixedLM
# ---------------------------------------------------------------------------------------------


def _balanced(d):
    """Per-subject arrays (G, m): sleepstudy is balanced (10 days per subject, sorted)."""
    G = d["G"]
    order = np.argsort(d["subject"], kind="stable")
    m = d["y"].size // G
    assert np.all(np.bincount(d["subject"], minlength=G) == m)
    return d["y"][order].reshape(G, m), d["days"][order].reshape(G, m)


def _lmm_D(s1, s2, r):
    return np.array([[s1 * s1, r * s1 * s2], [r * s1 * s2, s2 * s2]])


def lmm_slope_loglik(theta, d) -> float:
    """Exact marginal log-likelihood of y_g ~ N(X_g beta, Z_g D Z_g' + sigma^2 I), Z_g = [1, days],
    D = [[s1^2, r s1 s2], [r s1 s2, s2^2]]; theta = (beta0, beta1, s1, s2, r, sigma) natural."""
    b0, b1, s1, s2, r, sigma = theta
    Y, T = _balanced(d)
    G, m = Y.shape
    Z = np.stack([np.ones_like(T), T], axis=-1)  # (G, m, 2)
    V = Z @ _lmm_D(s1, s2, r) @ np.swapaxes(Z, 1, 2) + sigma**2 * np.eye(m)
    e = Y - b0 - b1 * T
    _, logdet = np.linalg.slogdet(V)
    quad = np.einsum("gi,gi->g", e, np.linalg.solve(V, e[..., None])[..., 0])
    return float(np.sum(-0.5 * (m * LOG2PI + logdet + quad)))


def lmm_slope_modes(theta, d) -> tuple[np.ndarray, np.ndarray]:
    """Conditional modes (= means) of b_g given y and their conditional covariances
    (D^-1 + Z'Z / sigma^2)^-1, per subject in code order: shapes (G, 2) and (G, 2, 2)."""
    b0, b1, s1, s2, r, sigma = theta
    Y, T = _balanced(d)
    Z = np.stack([np.ones_like(T), T], axis=-1)
    e = Y - b0 - b1 * T
    C = np.linalg.inv(np.linalg.inv(_lmm_D(s1, s2, r)) + np.swapaxes(Z, 1, 2) @ Z / sigma**2)
    modes = (C @ (np.swapaxes(Z, 1, 2) @ e[..., None]))[..., 0] / sigma**2
    return modes, C


def fit_lmm_slope(d) -> dict:
    """ML fit of the sleepstudy model by the closed form, SEs from the Richardson Hessian of the
    log-likelihood in the natural parameters (beta0, beta1, s1, s2, r, sigma)."""
    f = lambda t: -lmm_slope_loglik(t, d)  # noqa: E731
    x = minimise(f, np.array([251.0, 10.0, 24.0, 6.0, 0.1, 25.0]))
    H = richardson_hessian(f, x)
    return {"theta": x, "llf": -f(x), "hessian": H, "bse": np.sqrt(np.diag(np.linalg.inv(H)))}


def mixedlm_sleepstudy() -> dict:
    """statsmodels MixedLM, ML (reml=False), correlated random intercept and slope."""
    import statsmodels.api as sm

    d = sleepstudy()
    model = sm.MixedLM(d["y"], d["X"], groups=d["subject"], exog_re=d["X"])
    r = model.fit(reml=False, method=["lbfgs"])
    cov_re = np.asarray(r.cov_re)
    sd = np.sqrt(np.diag(cov_re))
    return {
        "beta": np.asarray(r.fe_params),
        "bse_beta": np.asarray(r.bse_fe),
        "sd": sd,
        "corr": cov_re[0, 1] / (sd[0] * sd[1]),
        "sigma": float(np.sqrt(r.scale)),
        "llf": float(r.llf),
        "converged": bool(r.converged),
    }


# ---------------------------------------------------------------------------------------------
# One-factor random-intercept GLMM: adaptive Gauss-Hermite quadrature
# ---------------------------------------------------------------------------------------------


def family_terms(family: str, d: dict, eta, alpha=None):
    """Per-observation log-likelihood and its first two derivatives in eta (full constants)."""
    y = d["y"]
    if family == "binomial":
        n = d["n"]
        p = 1.0 / (1.0 + np.exp(-eta))
        ll = y * eta - n * np.logaddexp(0.0, eta) + d["logbinom"]
        return ll, y - n * p, -n * p * (1.0 - p)
    mu = np.exp(eta)
    if family == "poisson":
        return y * eta - mu - d["log_y_factorial"], y - mu, -mu
    if family == "nb2":
        a = alpha
        ll = (gammaln(y + 1.0 / a) - gammaln(1.0 / a) - d["log_y_factorial"]
              + y * (np.log(a * mu) - np.log1p(a * mu)) - np.log1p(a * mu) / a)
        return ll, (y - mu) / (1.0 + a * mu), -mu * (1.0 + a * y) / (1.0 + a * mu) ** 2
    raise ValueError(family)


def intercept_modes(family, d, groups, beta, sd, alpha=None, b0=None, tol=1e-13):
    """Per-group Newton for the mode of h_g(b) = sum_i ll_i(x_i beta + b) + log N(b; 0, sd^2);
    returns (modes, -h_g''(mode)). Every family here is concave in eta, so Newton from 0 is
    safe; the step is halved only to guard a wild first step at extreme parameters."""
    g = d[groups]
    G = int(g.max()) + 1
    fixed = d["X"] @ np.asarray(beta)
    b = np.zeros(G) if b0 is None else np.array(b0, dtype=float)
    for _ in range(200):
        _, d1, d2 = family_terms(family, d, fixed + b[g], alpha)
        grad = np.bincount(g, d1, G) - b / sd**2
        curv = np.bincount(g, d2, G) - 1.0 / sd**2
        step = -grad / curv
        step = np.clip(step, -5.0, 5.0)
        b = b + step
        if np.max(np.abs(step)) < tol:
            break
    _, _, d2 = family_terms(family, d, fixed + b[g], alpha)
    return b, -(np.bincount(g, d2, G) - 1.0 / sd**2)


def aghq_loglik(family, d, groups, beta, sd, k, alpha=None) -> float:
    """log of prod_g int exp(h_g(b)) db by a k-node adaptive Gauss-Hermite rule: with mode m_g
    and s_g = curvature^(-1/2), int exp(h) db = sqrt(2) s_g sum_j w_j exp(z_j^2) exp(h(m_g +
    sqrt(2) s_g z_j)). k = 1 (z = 0, w = sqrt(pi)) is exactly the Laplace approximation
    h(m) + (1/2) log(2 pi) - (1/2) log curvature."""
    from scipy.special import logsumexp

    g = d[groups]
    G = int(g.max()) + 1
    m, curv = intercept_modes(family, d, groups, beta, sd, alpha)
    s = 1.0 / np.sqrt(curv)
    z, w = np.polynomial.hermite.hermgauss(k)
    fixed = d["X"] @ np.asarray(beta)
    terms = np.empty((G, k))
    for j in range(k):
        bj = m + np.sqrt(2.0) * s * z[j]
        ll, _, _ = family_terms(family, d, fixed + bj[g], alpha)
        h = np.bincount(g, ll, G) - 0.5 * LOG2PI - np.log(sd) - 0.5 * (bj / sd) ** 2
        terms[:, j] = np.log(w[j]) + z[j] ** 2 + h
    return float(np.sum(np.log(np.sqrt(2.0) * s) + logsumexp(terms, axis=1)))


def _unpack(theta, p, family):
    beta, sd = theta[:p], theta[p]
    alpha = theta[p + 1] if family == "nb2" else None
    return beta, sd, alpha


def fit_aghq(family, d, groups, k, start, with_se=True) -> dict:
    """Maximise the k-node AGHQ marginal over theta = (beta, sd[, alpha]) (natural scale; the
    search runs on log sd / log alpha, the Hessian is taken in natural parameters, the scale
    autohess reports). Returns theta, llf, Hessian of -llf, SEs, modes and curvatures."""
    p = d["X"].shape[1]
    nat = lambda u: np.r_[u[:p], np.exp(u[p:])]  # noqa: E731
    f_nat = lambda t: -aghq_loglik(family, d, groups, *_unpack(t, p, family)[:2], k, alpha=_unpack(t, p, family)[2])  # noqa: E731
    u0 = np.r_[start[:p], np.log(start[p:])]
    from scipy.optimize import minimize

    # BFGS on the log scale gets close; the Newton polish in natural parameters does the rest
    u = minimize(lambda u: f_nat(nat(u)), u0, method="BFGS", options={"gtol": 1e-6}).x
    theta = nat(u)
    H = richardson_hessian(f_nat, theta)
    theta = newton_polish(f_nat, theta, hessian=H)
    if with_se:
        H = richardson_hessian(f_nat, theta)
    beta, sd, alpha = _unpack(theta, p, family)
    m, curv = intercept_modes(family, d, groups, beta, sd, alpha)
    return {"theta": theta, "llf": -f_nat(theta), "hessian": H if with_se else None,
            "bse": np.sqrt(np.diag(np.linalg.inv(H))) if with_se else None,
            "mode": m, "curvature": curv, "grad": richardson_gradient(f_nat, theta)}


def mode_jacobian(family, d, groups, theta, p):
    """d mode / d theta (natural scale) by Richardson differences of the Newton modes."""
    f = lambda t: intercept_modes(family, d, groups, *_unpack(t, p, family))[0]  # noqa: E731
    return richardson_jacobian(f, np.asarray(theta, dtype=float))


# ---------------------------------------------------------------------------------------------
# Several random-intercept factors: dense Laplace (Poisson)
# ---------------------------------------------------------------------------------------------


def multi_intercept_laplace(d, factors, beta, sds, u0=None, return_modes=False, tol=1e-12):
    """Laplace log-marginal of a Poisson GLMM eta = X beta + sum_f u_f[code_f], u_f ~ N(0, sd_f^2)
    independent: with u = all random effects stacked (q of them, factor by factor in the order
    given), H = Z' diag(mu) Z + diag(1/sd^2), l = sum ll(u_hat) + sum log N(u_hat) +
    (q/2) log 2 pi - (1/2) log det H.

    H is built block by block from the codes (Z is never formed) and solved by eliminating the
    first factor's block: any single factor's block Z_f' diag(mu) Z_f is diagonal (one level per
    observation), so det H = det A * det(C - B' A^-1 B) with A diagonal and the Schur complement
    only as large as the other factors together (181 x 181 for grouseticks, not 584 x 584).
    ``u0`` warm-starts the inner Newton; ``return_modes`` adds (u_hat, H)."""
    y, X = d["y"], d["X"]
    cs = [np.asarray(d[f]) for f in factors]
    sizes = [int(c.max()) + 1 for c in cs]
    offs = np.cumsum([0] + sizes)
    q = int(offs[-1])
    prior_var = np.concatenate([np.full(G, sd**2) for G, sd in zip(sizes, sds)])
    k = sizes[0]

    def hessian(mu):
        H = np.diag(1.0 / prior_var)
        for i, ci in enumerate(cs):
            for j, cj in enumerate(cs):
                blk = np.zeros((sizes[i], sizes[j]))
                np.add.at(blk, (ci, cj), mu)
                H[offs[i]:offs[i + 1], offs[j]:offs[j + 1]] += blk
        return H

    def parts(H):
        a = np.diag(H)[:k].copy()  # the first factor's block is diagonal
        B, C = H[:k, k:], H[k:, k:]
        return a, B, C - (B.T / a) @ B

    def Zt(r):
        return np.concatenate([np.bincount(c, r, G) for c, G in zip(cs, sizes)])

    def Zu(u):
        return sum(u[offs[i]:offs[i + 1]][c] for i, c in enumerate(cs))

    fixed = X @ np.asarray(beta)
    u = np.zeros(q) if u0 is None else np.array(u0, dtype=float)
    for _ in range(100):
        mu = np.exp(fixed + Zu(u))
        r = Zt(y - mu) - u / prior_var
        a, B, S = parts(hessian(mu))
        x2 = np.linalg.solve(S, r[k:] - B.T @ (r[:k] / a))
        step = np.clip(np.r_[(r[:k] - B @ x2) / a, x2], -5.0, 5.0)
        u = u + step
        if np.max(np.abs(step)) < tol:
            break
    eta = fixed + Zu(u)
    mu = np.exp(eta)
    H = hessian(mu)
    a, B, S = parts(H)
    logdet = np.sum(np.log(a)) + np.linalg.slogdet(S)[1]
    ll = np.sum(y * eta - mu - d["log_y_factorial"])
    lp = np.sum(-0.5 * LOG2PI - 0.5 * np.log(prior_var) - 0.5 * u**2 / prior_var)
    val = float(ll + lp + 0.5 * q * LOG2PI - 0.5 * logdet)
    if return_modes:
        return val, u, H
    return val
