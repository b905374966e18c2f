"""GARCH(1,1) with Student-t (or normal) innovations: a recursive model (a linear recurrence in
the variance, evaluated by ``lax.scan`` or, parallel in time, ``lax.associative_scan``)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .._model import Model
from .._recurrence import linear_recurrence
from .._sampling import gamma
from .._transforms import Interval, Positive
from ._checks import with_support

__all__ = ["garch11", "garch11_loglik", "garch11_variance"]

_RECURSIONS = ("scan", "associative")
_DISTS = ("t", "normal")


def garch11_variance(omega, alpha, beta, e, h1, recursion: str = "scan"):
    """Conditional variances ``h_t = omega + alpha*e_{t-1}**2 + beta*h_{t-1}``, ``h_1`` given.

    A linear recurrence in ``h`` (``ah.linear_recurrence``): ``recursion="scan"`` runs the
    textbook sequential loop, ``"associative"`` the parallel-in-time ``lax.associative_scan``.
    The latter is meant for GPUs: on a 2-core CPU its Hessian measured about twice as slow as
    the scan's (~330 vs ~160 us at N=1500) and took 2-3.5 s to compile instead of 0.7 s. The
    scan body stays one multiply-add (the drive ``omega + alpha*e**2`` is formed outside),
    which is what keeps the differentiated scan fast.
    """
    if recursion not in _RECURSIONS:
        raise ValueError(f"recursion must be one of {_RECURSIONS}, got {recursion!r}")
    drive = omega + alpha * e[:-1] ** 2
    rest = linear_recurrence(beta, drive, h1, method=recursion)
    return jnp.concatenate([h1[None], rest])


def garch11_loglik(params, data, *, dist: str = "t", recursion: str = "scan"):
    """Per-period log-likelihood of ``y_t = mu + e_t``, ``e_t = sqrt(h_t) z_t``.

    ``z_t`` is standardised Student-t with ``nu > 2`` degrees of freedom (unit variance) or
    standard normal. The presample variance ``h_1`` is the sample mean of ``(y - mu)**2``.
    """
    e = data["y"] - params["mu"]
    h1 = jnp.mean(e * e)
    h = garch11_variance(params["omega"], params["alpha"], params["beta"], e, h1, recursion)
    if dist == "normal":
        return -0.5 * (jnp.log(2.0 * jnp.pi) + jnp.log(h) + e * e / h)
    nu = params["nu"]
    const = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * jnp.log(jnp.pi * (nu - 2.0))
    return const - 0.5 * jnp.log(h) - 0.5 * (nu + 1.0) * jnp.log1p(e * e / ((nu - 2.0) * h))


def _garch_simulate(key, params, data, *, dist: str, recursion: str = "scan", burn: int = 500):
    n = data["y"].shape[0]
    dtype = data["y"].dtype
    omega, alpha, beta = params["omega"], params["alpha"], params["beta"]
    k_z, k_chi = jax.random.split(key)
    z = jax.random.normal(k_z, (n + burn,), dtype)
    if dist == "t":
        nu = params["nu"]
        # (``_sampling.gamma``, not ``jax.random.gamma``: that one draws element after element,
        # and cost a bootstrap replicate more than its fit)
        chi2 = 2.0 * gamma(k_chi, 0.5 * nu, (n + burn,), dtype, at_least_one=True)
        z = z * jnp.sqrt((nu - 2.0) / chi2)  # Student-t scaled to unit variance
    persistence = alpha + beta
    h0 = jnp.where(persistence < 1.0, omega / jnp.maximum(1.0 - persistence, 1e-8), jnp.var(data["y"]))
    # e_t = sqrt(h_t) z_t makes the path linear in h too: h_t = omega + (alpha z_{t-1}^2 + beta) h_{t-1}
    # (z_0 = 0), so simulation runs through the same (possibly parallel-in-time) recurrence.
    z_prev = jnp.concatenate([jnp.zeros((1,), dtype), z[:-1]])
    h = linear_recurrence(alpha * z_prev**2 + beta, jnp.full((n + burn,), omega, dtype), h0, method=recursion)
    return {**data, "y": params["mu"] + (jnp.sqrt(h) * z)[burn:]}


def _garch_support(data):
    """The constructor's variance check as a ``Model(support=)`` hook (one flag per series)."""
    y = data["y"]
    return {"y must vary (a constant series has no volatility to model)": jnp.any(y != y[0])}


def garch11(
    y: Any,
    *,
    dist: str = "t",
    recursion: str = "scan",
    mu: Optional[float] = None,
    omega: Optional[float] = None,
    alpha: float = 0.05,
    beta: float = 0.90,
    nu: float = 8.0,
    hessian_mode: str = "fwd-rev",
) -> Model:
    """GARCH(1,1) model for a return series ``y`` (shape ``(T,)``).

    Parameters: ``mu`` (Real), ``omega`` (Positive), ``alpha`` and ``beta`` (Interval(0, 1)),
    and for ``dist="t"`` ``nu`` (Interval(2, 500)). Defaults start at the sample mean, an
    ``omega`` matching the sample variance, ``alpha=0.05``, ``beta=0.9``, ``nu=8``.

    The model is declared ``independent=False`` (each ``h_t`` depends on all earlier data), so
    chunked Hessians are refused. The scan body is kept to one multiply-add (the drive term
    ``omega + alpha*e_{t-1}**2`` is formed outside the loop): per-iteration work inside a
    differentiated ``lax.scan`` is what dominates its cost (measured 10x). Forward-over-reverse
    is the default ``hessian_mode``; ``benchmarks/bench_hessian.py`` compares the modes.
    """
    if dist not in _DISTS:
        raise ValueError(f"garch11: dist must be one of {_DISTS}, got {dist!r}")
    if recursion not in _RECURSIONS:
        raise ValueError(f"garch11: recursion must be one of {_RECURSIONS}, got {recursion!r}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] < 3:
        raise ValueError(f"garch11: y must be a 1-D series of at least 3 returns, got shape {y.shape}")
    with np.errstate(invalid="ignore"):
        mean, var = float(np.mean(y)), float(np.var(y))
    if var == 0.0:
        raise ValueError(f"garch11: y has zero variance (all {y.shape[0]} returns equal {y[0]:g}): there is no volatility to model")
    params = {
        "mu": mean if mu is None else mu,
        "omega": Positive(var * (1.0 - alpha - beta) if omega is None else omega),
        "alpha": Interval(0.0, 1.0, alpha),
        "beta": Interval(0.0, 1.0, beta),
    }
    if dist == "t":
        params["nu"] = Interval(2.0, 500.0, nu)
    model = Model(
        functools.partial(garch11_loglik, dist=dist, recursion=recursion),
        {"y": y},
        params,
        independent=False,
        simulate=functools.partial(_garch_simulate, dist=dist, recursion=recursion),
        hessian_mode=hessian_mode,
        name=f"garch11_{dist}",
    )
    return with_support(model, _garch_support)
