"""Regression models with independent observations: logistic, Poisson, NB2, normal linear."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .._model import Model
from .._transforms import Positive
from ._checks import beta_names, coef, design, support, vector, with_support

__all__ = [
    "logistic",
    "logistic_loglik",
    "poisson",
    "poisson_loglik",
    "negative_binomial",
    "negative_binomial_loglik",
    "linear",
    "linear_loglik",
]


# Reverse-over-reverse puts the p directions on the major axis, so the final X' W X contraction
# runs along contiguous rows: for the logistic model (N=1500, p=12, 2-core CPU) the compiled
# Hessian alone measured 28 us against 37 us forward-over-reverse. With ah.hessian's default
# finiteness check (which also evaluates the log-likelihood) both modes measured ~43 us.
# NB2 and Weibull measured faster with forward-over-reverse and keep the Model default.
_GLM_MODE = "rev-rev"


@jax.custom_jvp
def softplus(x):
    """``log(1 + exp(x))`` without overflow, with derivative ``sigmoid(x)``.

    ``jnp.logaddexp`` is just as accurate, but its derivative rules carry infinity-handling
    selects into every order of differentiation; with this rule the compiled logistic Hessian
    program (N=1500, p=12, reverse-over-reverse, no finiteness check) measured 27 us instead of
    41 us on a 2-core CPU.
    """
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return softplus(x), jax.nn.sigmoid(x) * dx


def _eta(params, data):
    return data["X"] @ params["beta"] + data["offset"]


def _offset(offset: Optional[Any], n: int, model: str) -> np.ndarray:
    return vector(offset, n, model, "offset", "one per observation")


# -- starts (``Model.start_fn``, evaluated inside the compiled solve) ------------------------
def _weighted_least_squares(X, w, z):
    """``(b, ok)``: ``b = (X' W X)^-1 X' W z`` by Cholesky of the unit-diagonal scaled normal
    matrix; ``ok`` False where that matrix is singular or nearly so (smallest pivot share below
    ``sqrt(eps)``: collinear columns), so that such designs keep the zero start (a point on a
    flat valley depends on the start; from zero it is the one fits gave before)."""
    # contracted over the rows as matrix products (``Xw.T @ X`` transposed ``Xw`` first); no
    # weights (the linear start): no ``N x p`` product by ones. ~10 us of the linear start's
    # ~50 (N = 1500, p = 13)
    Xw = X if w is None else X * w[:, None]
    A = jax.lax.dot_general(Xw, X, (((0,), (0,)), ((), ())))
    r = jax.lax.dot_general(Xw, z[:, None], (((0,), (0,)), ((), ())))[:, 0]
    d = jnp.sqrt(jnp.diag(A))
    d = jnp.where(d > 0, d, 1.0)
    L = jnp.linalg.cholesky(A / jnp.outer(d, d))
    ok = jnp.all(jnp.isfinite(L)) & (jnp.min(jnp.diag(L)) ** 2 > jnp.sqrt(jnp.finfo(X.dtype).eps))
    L = jnp.where(ok, L, jnp.eye(A.shape[0], dtype=A.dtype))
    b = jax.scipy.linalg.cho_solve((L, True), r / d) / d
    return b, ok


def _glm_start(data, mu, eta, deta_dmu):
    """One iteratively reweighted least-squares step from fitted means ``mu`` near the data (the
    classical GLM start, as R's ``glm`` ``mustart``), canonical link: working response
    ``z = eta(mu) - offset + (y - mu) deta/dmu``, weights ``dmu/deta`` (= the variance). It is
    the Fisher-scoring step from a point whose linear predictor already follows ``y``, so the
    Newton solve starts near the optimum: 4 iterations instead of 5-6 (logistic), 5 instead of
    7 (Poisson) on the bench_models data, each saving one Hessian."""
    z = eta - data["offset"] + (data["y"] - mu) * deta_dmu
    return _weighted_least_squares(data["X"], 1.0 / deta_dmu, z)


def _logistic_start(data):
    mu = (data["y"] + 0.5) / 2.0  # 1/4 or 3/4: the logit is finite
    beta, ok = _glm_start(data, mu, jnp.log(mu / (1.0 - mu)), 1.0 / (mu * (1.0 - mu)))
    return {"beta": beta}, ok


def _poisson_start(data):
    mu = data["y"] + 0.1  # positive for a count of 0
    beta, ok = _glm_start(data, mu, jnp.log(mu), 1.0 / mu)
    # a start whose means overflow (an extreme design) is no start
    ok = ok & jnp.all(jnp.isfinite(jnp.exp(_eta({"beta": beta}, data))))
    return {"beta": beta}, ok


# -- support hooks (``Model(support=)``): the constructors' checks, in jax.numpy, so that
# ``fit_batch`` can apply them to every member of a data batch --------------------------------
def _binary_support(data):
    y = data["y"]
    return {"y must be 0 or 1": (y == 0) | (y == 1)}


def _is_count(y):
    return (y >= 0) & (y == jnp.round(y))


def _count_support(data):
    return {"y must be non-negative integer counts": _is_count(data["y"])}


#: a supplied ``log_y_factorial`` must equal ``gammaln(y + 1)`` to this many units in the last
#: place (relative, 2.2e-12 in float64): gammaln implementations (scipy, jax, math.lgamma)
#: agree to a few ulps, and a difference below this moves the log-likelihood by less than that
#: fraction, whereas a wrong derived leaf (zeros, ``gammaln(y)``) is off by O(1)
LOG_Y_FACTORIAL_ULPS = 1e4


def _poisson_support(data):
    y, lyf = data["y"], data["log_y_factorial"]
    counts = _is_count(y)
    exact = gammaln(jnp.where(counts, y, 0.0) + 1.0)
    tol = LOG_Y_FACTORIAL_ULPS * jnp.finfo(lyf.dtype).eps * (1.0 + jnp.abs(exact))
    return {
        "y must be non-negative integer counts": counts,
        # only judged where y is a count (elsewhere the condition above already fails)
        "log_y_factorial must equal gammaln(y + 1)": ~counts | (jnp.abs(lyf - exact) <= tol),
    }


# -- logistic -----------------------------------------------------------------------------------
def logistic_loglik(params, data):
    """``y*eta - log(1 + exp(eta))`` per observation, ``eta = X @ beta + offset``."""
    eta = _eta(params, data)
    return data["y"] * eta - softplus(eta)


def _logistic_simulate(key, params, data):
    prob = jax.nn.sigmoid(_eta(params, data))
    y = jax.random.bernoulli(key, prob).astype(prob.dtype)
    return {**data, "y": y}


def logistic(X: Any, y: Any, *, beta: Optional[Any] = None, offset: Optional[Any] = None) -> Model:
    """Logistic regression (binary ``y`` in {0, 1}), parameters ``{"beta": (p,)}``.

    Example:
        >>> model = ah.models.logistic(X, y)
        >>> ah.hessian(model).matrix      # X' diag(p(1-p)) X at beta = 0
    """
    names = beta_names(X)
    X, y = design(X, y, "logistic")
    support(y, (y == 0) | (y == 1), "logistic", "y", "0 or 1")
    data = {"X": X, "y": y, "offset": _offset(offset, len(y), "logistic")}
    model = Model(
        logistic_loglik, data, {"beta": coef(beta, X.shape[1], "logistic")},
        simulate=_logistic_simulate, name="logistic", hessian_mode=_GLM_MODE, names=names,
    )
    if beta is None:  # a start of the user's own is kept
        model.start_fn = _logistic_start
    return with_support(model, _binary_support)


# -- Poisson -------------------------------------------------------------------------------------
def poisson_loglik(params, data):
    """``y*eta - exp(eta) - log(y!)`` per observation, ``eta = X @ beta + offset``."""
    eta = _eta(params, data)
    return data["y"] * eta - jnp.exp(eta) - data["log_y_factorial"]


def _poisson_simulate(key, params, data):
    mu = jnp.exp(_eta(params, data))
    y = jax.random.poisson(key, mu).astype(mu.dtype)
    return {**data, "y": y, "log_y_factorial": gammaln(y + 1.0)}


def _check_counts(y: np.ndarray, model: str) -> None:
    yf = y.astype(np.float64)
    support(yf, (yf >= 0) & (yf == np.round(yf)), model, "y", "non-negative integer counts")


def poisson(X: Any, y: Any, *, beta: Optional[Any] = None, offset: Optional[Any] = None) -> Model:
    """Poisson regression with log link (``offset`` = log exposure), parameters ``{"beta"}``.

    Its data are ``{"X", "y", "offset", "log_y_factorial"}``; ``log_y_factorial`` is
    ``gammaln(y + 1)``, computed once here. A ``fit_batch`` data batch must supply it too
    (``jax.scipy.special.gammaln(ys + 1)``): a member whose values disagree with its ``y`` (or
    whose ``y`` are not counts) gets status ``NONFINITE`` with the reason in ``status``.
    """
    names = beta_names(X)
    X, y = design(X, y, "poisson")
    _check_counts(y, "poisson")
    data = {
        "X": X,
        "y": y,
        "offset": _offset(offset, len(y), "poisson"),
        # log(y!) does not depend on the parameters: computed once here, not in every call.
        "log_y_factorial": np.asarray(gammaln(np.asarray(y, np.float64) + 1.0)),
    }
    model = Model(
        poisson_loglik, data, {"beta": coef(beta, X.shape[1], "poisson")},
        simulate=_poisson_simulate, name="poisson", hessian_mode=_GLM_MODE, names=names,
    )
    if beta is None:  # a start of the user's own is kept
        model.start_fn = _poisson_start
    return with_support(model, _poisson_support)


# -- negative binomial (NB2) -----------------------------------------------------------------
def negative_binomial_loglik(params, data):
    """NB2: ``Var(y) = mu + alpha * mu**2``, ``mu = exp(X @ beta + offset)``.

    Written with ``log(mu)`` and ``log1p`` so that neither a small ``alpha`` nor a large ``mu``
    forms ``1 + alpha*mu`` and loses digits.
    """
    y, alpha = data["y"], params["alpha"]
    eta = _eta(params, data)
    inv = 1.0 / alpha
    log_alpha_mu = jnp.log(alpha) + eta
    log1p_alpha_mu = softplus(log_alpha_mu)  # log(1 + alpha*mu)
    return (
        _lgamma_ratio(y, inv) - gammaln(y + 1.0)
        - inv * log1p_alpha_mu + y * (log_alpha_mu - log1p_alpha_mu)
    )


#: ``r`` above which ``_lgamma_ratio`` uses its Stirling form (at ``r = 1e3`` the direct
#: difference is still good to ~1e-12 absolute, the Stirling remainder to ~1e-15 y)
_STIRLING_R = 1e3


def _lgamma_ratio(y: jax.Array, r: jax.Array) -> jax.Array:
    """``lgamma(y + r) - lgamma(r)`` without cancellation for large ``r`` (small NB2 ``alpha``).

    The direct difference of two numbers near ``r log r`` loses ``eps r log r`` absolutely:
    5e-5 per observation at ``alpha = 1e-10``, and far more in its derivatives, which made the
    NB2 Hessian noise as ``alpha`` went to 0 (its bound on Poisson-like data). For
    ``r > _STIRLING_R``, Stirling's series for both terms with ``t = y / r``:
    ``y log r + r (log1p(t) - t) + (y - 1/2) log1p(t) - y/(12 r (r+y)) + (1/r^3 - 1/(r+y)^3)/360``,
    every term small or exact in floating point.
    """
    big = r > _STIRLING_R
    rb = jnp.where(big, r, _STIRLING_R)  # each branch only sees arguments it is accurate for
    t = y / rb
    stirling = (
        y * jnp.log(rb) + rb * (jnp.log1p(t) - t) + (y - 0.5) * jnp.log1p(t)
        - y / (12.0 * rb * (rb + y)) + (1.0 / rb**3 - 1.0 / (rb + y) ** 3) / 360.0
    )
    rs = jnp.where(big, _STIRLING_R, r)
    direct = gammaln(y + rs) - gammaln(rs)
    return jnp.where(big, stirling, direct)


def _negative_binomial_simulate(key, params, data):
    mu = jnp.exp(_eta(params, data))
    alpha = params["alpha"]
    k_gamma, k_pois = jax.random.split(key)
    # Gamma-Poisson mixture: rate ~ Gamma(shape 1/alpha, scale alpha*mu) has mean mu.
    rate = jax.random.gamma(k_gamma, 1.0 / alpha, mu.shape, dtype=mu.dtype) * alpha * mu
    return {**data, "y": jax.random.poisson(k_pois, rate).astype(mu.dtype)}


def negative_binomial(
    X: Any, y: Any, *, beta: Optional[Any] = None, alpha: float = 1.0, offset: Optional[Any] = None
) -> Model:
    """Negative binomial regression, NB2 (statsmodels' ``NegativeBinomial`` default).

    Parameters ``{"alpha": Positive, "beta": (p,)}``; labels list ``alpha`` first because JAX
    orders dict keys alphabetically.
    """
    names = beta_names(X)
    X, y = design(X, y, "negative_binomial")
    _check_counts(y, "negative_binomial")
    data = {"X": X, "y": y, "offset": _offset(offset, len(y), "negative_binomial")}
    params = {"beta": coef(beta, X.shape[1], "negative_binomial"), "alpha": Positive(alpha)}
    return with_support(Model(
        negative_binomial_loglik, data, params,
        simulate=_negative_binomial_simulate, name="negative_binomial", names=names,
    ), _count_support)


# -- normal linear regression ----------------------------------------------------------------
def linear_loglik(params, data):
    """``log N(y | X @ beta, sigma**2)`` per observation."""
    # residuals times 1/sigma, not divided by sigma: the division's derivatives in sigma are
    # per observation, the reciprocal's one scalar, and the compiled value + gradient + Hessian
    # (N = 1500, p = 13, reverse-over-reverse) measured 107 us instead of 188 us; the same
    # range as before (no r^2 that could overflow), values equal to rounding
    z = (data["y"] - data["X"] @ params["beta"]) * (1.0 / params["sigma"])
    return -0.5 * jnp.log(2.0 * jnp.pi) - jnp.log(params["sigma"]) - 0.5 * z * z


def _linear_simulate(key, params, data):
    mean = data["X"] @ params["beta"]
    return {**data, "y": mean + params["sigma"] * jax.random.normal(key, mean.shape, mean.dtype)}


def _linear_start(data):
    """The maximum-likelihood estimate itself, where the design has full rank: least squares
    and ``sigma = sqrt(RSS / N)``; the solve then only confirms it (one Hessian instead of ten
    from ``beta = 0, sigma = 1``). An exact fit (``sigma`` 0 to rounding, no finite maximum)
    keeps the initial values, as before."""
    X, y = data["X"], data["y"]
    beta, ok = _weighted_least_squares(X, None, y)
    sigma = jnp.sqrt(jnp.mean((y - X @ beta) ** 2))
    ok = ok & (sigma > 1e3 * jnp.finfo(y.dtype).eps * jnp.sqrt(jnp.mean(y * y)))
    return {"beta": beta, "sigma": sigma}, ok


def linear(X: Any, y: Any, *, beta: Optional[Any] = None, sigma: Optional[float] = None) -> Model:
    """Normal linear regression with unknown error SD, parameters ``{"beta", "sigma": Positive}``.

    The MLE of ``sigma`` divides by ``N`` (not ``N - p`` as OLS does). ``init_params`` are
    ``beta`` (default 0) and ``sigma`` (default 1); with neither given, ``ah.fit`` starts from
    the least-squares estimate (``model.start_fn``), where it converges at once.
    """
    names = beta_names(X)
    X, y = design(X, y, "linear")
    model = Model(
        linear_loglik, {"X": X, "y": y},
        {"beta": coef(beta, X.shape[1], "linear"), "sigma": Positive(1.0 if sigma is None else sigma)},
        simulate=_linear_simulate, name="linear", hessian_mode=_GLM_MODE, names=names,
    )
    if beta is None and sigma is None:  # a start of the user's own is kept
        model.start_fn = _linear_start
    return model
