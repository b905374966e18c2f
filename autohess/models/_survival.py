"""Weibull regression for right-censored survival times."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._model import Model
from .._transforms import Positive
from ._checks import beta_names, coef, design, support, with_support

__all__ = ["weibull", "weibull_loglik"]


def weibull_loglik(params, data):
    """Right-censored Weibull log-likelihood per observation.

    ``T_i ~ Weibull(shape k, scale lambda_i = exp(X_i @ beta))`` (accelerated failure time form;
    the proportional-hazards coefficients are ``-k * beta``). An event contributes the log
    density ``log k + (k-1) log t - k log lambda - (t/lambda)^k``, a censored time the log
    survival ``-(t/lambda)^k``.
    """
    k = params["shape"]
    log_lam = data["X"] @ params["beta"]
    log_t = jnp.log(data["time"])
    z = k * (log_t - log_lam)  # log((t/lambda)^k), kept on the log scale until exp
    return data["event"] * (jnp.log(k) - log_t + z) - jnp.exp(z)


def _weibull_support(data):
    """The constructor's checks as a ``Model(support=)`` hook (applied to ``fit_batch`` members)."""
    d = data["event"]
    return {"time must be positive": data["time"] > 0, "event must be 0 or 1": (d == 0) | (d == 1)}


def _weibull_simulate(key, params, data):
    X = data["X"]
    lam = jnp.exp(X @ params["beta"])
    u = jax.random.uniform(key, lam.shape, lam.dtype, minval=jnp.finfo(lam.dtype).tiny)
    t = lam * (-jnp.log(u)) ** (1.0 / params["shape"])
    c = data["censor_time"]
    return {**data, "time": jnp.minimum(t, c), "event": (t <= c).astype(lam.dtype)}


def weibull(
    X: Any,
    time: Any,
    event: Any,
    *,
    censor_time: Optional[Any] = None,
    beta: Optional[Any] = None,
    shape: float = 1.0,
) -> Model:
    """Weibull AFT regression with right censoring, parameters ``{"beta", "shape": Positive}``.

    Args:
        X: ``(N, p)`` covariates (include a column of ones for an intercept).
        time: ``(N,)`` positive observed times (event or censoring).
        event: ``(N,)`` 1 where the event was observed, 0 where the time is censored.
        censor_time: ``(N,)`` potential censoring times used by ``simulate`` (administrative
            censoring); default: the largest observed time for everyone.
    """
    names = beta_names(X)
    X, t = design(X, time, "weibull", "time")
    _, d = design(X, event, "weibull", "event")
    t = t.astype(np.float64)
    support(t, t > 0, "weibull", "time", "positive")
    support(d.astype(np.float64), (d == 0) | (d == 1), "weibull", "event", "0 or 1")
    if censor_time is None:
        c = np.full_like(t, np.nanmax(t) if np.isfinite(t).any() else 1.0)
    else:
        c = np.asarray(censor_time, dtype=np.float64)
        if c.shape != t.shape:
            raise ValueError(f"weibull: censor_time has shape {c.shape}, time has {t.shape}")
    data = {"X": X, "time": t, "event": d, "censor_time": c}
    return with_support(Model(
        weibull_loglik, data,
        {"beta": coef(beta, X.shape[1], "weibull"), "shape": Positive(shape)},
        simulate=_weibull_simulate, name="weibull", names=names,
    ), _weibull_support)
