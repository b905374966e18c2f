"""Exact Hessians through linear predictors (``autohess/_rowwise.py``, issue #16 part 1).

Reference for every numeric check: the forward-over-reverse Hessian of the same function
(``jax.hessian`` of the summed contributions; ``test_exact_hessian.py`` checks that path against
closed forms). Both are exact; they differ only in the order of rounding (``helpers.EXACT``).
Small N so that each case compiles two small programs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import EXACT, rel_err
from jax.scipy.special import log_ndtr, logsumexp
from jax.scipy.stats import norm

import autohess as ah
from autohess import _problem
from autohess._rowwise import rowwise_value_grad_hess

N = 60


def _data(seed=0, n=N, l=4):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, l - 1))])
    return rng, X


def tobit(params, data):
    xb, s = data["X"] @ params["beta"], params["sigma"]
    return jnp.where(data["y"] <= 0.0, log_ndtr(-xb / s), norm.logpdf(data["y"], xb, s))


def mnlogit(params, data):
    eta = data["X"] @ params["B"].T
    eta = jnp.concatenate([jnp.zeros((eta.shape[0], 1)), eta], axis=1)
    return jnp.take_along_axis(eta, data["y"][:, None], axis=1)[:, 0] - logsumexp(eta, axis=1)


def hetero(params, data):  # two predictors: the mean and the log sd, each its own design
    mu = data["X"] @ params["beta"]
    log_sd = data["Z"] @ params["gamma"]
    return -0.5 * ((data["y"] - mu) * jnp.exp(-log_sd)) ** 2 - log_sd


def shared(params, data):  # beta[1] in the product and again directly (a per-observation penalty)
    eta = data["X"] @ params["beta"] + params["alpha"]
    return data["y"] * eta - jnp.logaddexp(0.0, eta) - 0.01 * params["beta"][1] ** 2


def probit(params, data):  # one predictor, a long elementwise chain (log_ndtr)
    eta = data["X"] @ params["beta"]
    return jnp.where(data["y"] > 0, norm.logcdf(eta), norm.logcdf(-eta))


def _cases():
    rng, X = _data()
    y_tobit = np.maximum(X @ np.array([0.2, 0.5, -0.4, 0.3]) + rng.standard_normal(N), 0.0)
    y_class = rng.integers(0, 3, N)
    Z = X[:, :2]
    y_h = X @ np.array([1.0, 0.5, 0.0, -0.3]) + np.exp(0.3 * X[:, 1]) * rng.standard_normal(N)
    y_bin = (rng.random(N) < 0.5).astype(float)
    return {
        "tobit": (tobit, {"X": X, "y": y_tobit}, {"beta": jnp.array([0.1, 0.3, -0.2, 0.1]), "sigma": ah.Positive(1.3)}, 2),
        "mnlogit": (mnlogit, {"X": X, "y": y_class}, {"B": 0.1 * jnp.arange(8.0).reshape(2, 4)}, 2),
        "hetero": (hetero, {"X": X, "Z": Z, "y": y_h}, {"beta": jnp.array([0.9, 0.4, 0.1, -0.2]), "gamma": jnp.array([0.1, 0.2])}, 2),
        "shared": (shared, {"X": X, "y": y_bin}, {"beta": jnp.array([0.1, -0.2, 0.3, 0.05]), "alpha": jnp.asarray(0.2)}, None),
        "probit": (probit, {"X": X, "y": y_bin}, {"beta": jnp.array([0.1, -0.2, 0.3, 0.05])}, 1),
    }


def _reference(model, x, weights=None):
    def f(x):
        c = model._loglik(model.spec.unflatten(x), model.data)
        return -jnp.sum(c if weights is None else weights * c)

    return f(x), jax.grad(f)(x), jax.hessian(f)(x)


@pytest.mark.parametrize("name", ["tobit", "mnlogit", "hetero", "shared", "probit"])
def test_rowwise_equals_forward_over_reverse(name):
    loglik, data, params, q = _cases()[name]
    model = ah.Model(loglik, data, params)
    x = model.spec.flatten(model.init_params, model.dtype)
    p = x.shape[0]
    # weights once (the Tobit): they multiply each row's derivatives
    w = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, N)) if name == "tobit" else None
    for weights in (w,):
        fn = rowwise_value_grad_hess(lambda t: model._loglik(model.spec.unflatten(t), model.data), p, N, model.dtype,
                                     weights)
        assert fn is not None, f"{name}: a regression's structure not recognised"
        got = jax.jit(fn)(x)
        ref = _reference(model, x, weights)
        for a, b in zip(got, ref):
            assert rel_err(a, b) < EXACT, name  # two exact derivatives: rounding only


def _declined(loglik, data, params):
    model = ah.Model(loglik, data, params, independent=False)
    x = model.spec.flatten(model.init_params, model.dtype)
    return rowwise_value_grad_hess(lambda t: model._loglik(model.spec.unflatten(t), model.data), x.shape[0],
                                   model.nobs, model.dtype)


def test_short_single_predictor_keeps_forward_over_reverse():
    """The README's logistic (one predictor holding every parameter, 12 operations on its rows,
    under ``_rowwise.FEW_OPS``): forward-over-reverse with the basis folded is already the
    closed form's work, and measured as fast inside the solver; the structure is not used."""
    rng, X = _data(4)
    y = (rng.random(N) < 0.5).astype(float)

    def logistic(params, data):
        eta = data["X"] @ params["beta"]
        return data["y"] * eta - jnp.logaddexp(0.0, eta)

    model = ah.Model(logistic, {"X": X, "y": y}, {"beta": jnp.zeros(4)})
    assert rowwise_value_grad_hess(lambda t: model._loglik(model.spec.unflatten(t), model.data), 4, N,
                                   model.dtype) is None


@pytest.mark.parametrize("which", ["lag", "centred", "cumsum", "roll", "not a selection", "scan"])
def test_row_mixing_or_nonlinear_predictors_are_declined(which):
    """Each of these breaks "row i depends on its own predictor only" (or the predictor is not a
    product of data with a selection of the parameters); the ones-tangent would give a wrong
    Hessian, so the structure must be refused and the caller falls back."""
    rng, X = _data(2)
    y = rng.standard_normal(N)

    def make(transform):
        def loglik(params, data):
            eta = transform(data["X"] @ params["beta"], params)
            return -0.5 * (data["y"] - eta) ** 2
        return loglik

    transforms = {
        "lag": lambda eta, p: jnp.concatenate([eta[:1], eta[1:] + 0.5 * eta[:-1]]),
        "centred": lambda eta, p: eta - jnp.mean(eta),
        "cumsum": lambda eta, p: 0.1 * jnp.cumsum(eta),
        "roll": lambda eta, p: jnp.roll(eta, 1),
        "scan": lambda eta, p: jax.lax.scan(lambda c, e: (0.5 * c + e, 0.5 * c + e), 0.0, eta)[1],
    }
    if which == "not a selection":
        def loglik(params, data):
            return -0.5 * (data["y"] - data["X"] @ jnp.exp(params["beta"])) ** 2
    else:
        loglik = make(transforms[which])
    assert _declined(loglik, {"X": X, "y": y}, {"beta": 0.1 * jnp.ones(4)}) is None


def test_fit_through_predictors_equals_forward_over_reverse(monkeypatch):
    """A Tobit fit (Positive sigma: the chain rule to the solver's scale) through the predictors
    = the same fit with the structure not used (the path before issue #16's change): same
    optimum to 1e-10 of max(|estimate|, SE), SEs 1e-10 relative; and the solver's derivative
    program does at most 3/4 of the arithmetic (XLA's own flop count, not a time: the Tobit
    pass measured 0.61x, the 36-parameter multinomial logit 0.44x)."""
    rng, X = _data(3, n=400, l=5)
    y = np.maximum(X @ np.array([0.3, 0.5, -0.4, 0.2, 0.1]) + 1.5 * rng.standard_normal(400), 0.0)
    params = {"beta": jnp.zeros(5), "sigma": ah.Positive(1.0)}
    new = ah.Model(tobit, {"X": X, "y": y}, params)
    old = ah.Model(tobit, {"X": X, "y": y}, params)

    def flops(model):
        u = model.spec.to_unconstrained(model.spec.flatten(model.init_params, model.dtype))
        prog = jax.jit(lambda u, d: _problem._unconstrained_value_grad_hess(model, d, None, None, "fwd-rev")(u))
        return prog.lower(u, model.data).compile().cost_analysis()["flops"]

    r_new, f_new = ah.fit(new), flops(new)
    monkeypatch.setattr(_problem, "_rowwise_fn", lambda *a, **k: None)
    r_old, f_old = ah.fit(old), flops(old)
    assert r_new.converged and r_old.converged
    scale = np.maximum(np.abs(np.asarray(r_old.params_flat)), np.asarray(r_old.bse_flat))
    assert np.max(np.abs(np.asarray(r_new.params_flat - r_old.params_flat)) / scale) < 1e-10
    assert rel_err(r_new.bse_flat, r_old.bse_flat) < 1e-10
    assert f_new <= 0.75 * f_old, (f_new, f_old)
