"""The programs that run after a solve: value, gradient, Hessian and scores at the estimate
(``_inference_program``, where the solver did not leave them), and the covariance and
diagnostics program (one covariance per ``cov_type`` after the diagnostics' factorisations),
compiled once per signature.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._covariance import covariance, face_pseudo_inverse, restricted_inverse
from ._config import compiler_options
from ._diagnostics import AFFECTED_LOADING, compute_diagnostics
from ._model import Model
from ._problem import _objective_scale, _value_grad_hess_fn, _weight_unit
from ._programs import stored
from ._solver import after



def _inference_program(model: Model, what: str) -> Callable:
    """``what="all"``: value, gradient, Hessian and scores; ``"hessian"``: no scores;
    ``"scores"``: per-observation scores only (the rest came from the solver)."""
    spec = model.spec
    mode = model.hessian_mode

    def scores_at(x, data):
        contrib = lambda t: model._loglik(spec.unflatten(t), data)  # noqa: E731
        return jax.jacfwd(contrib)(x)

    def run(x, data, weights):
        model.trace_counts["inference"] += 1
        if what == "scores":
            return scores_at(x, data)
        f = lambda t: model.negloglik_flat(t, data, weights)  # noqa: E731
        value, grad, hess = _value_grad_hess_fn(f, mode)(x)
        # the objective's scale where no solve measured it (``evaluate``): at these parameters
        scale = _objective_scale(model, x, data, weights)
        return value, grad, hess, (scores_at(x, data) if what == "all" else None), scale

    return jax.jit(run, compiler_options=compiler_options())


def _covariance_and_diagnostics_fn(x, value, grad, hess, lower, upper, scores, weights, groups, escape, cov_types, n_groups, df_correction, scale=1.0):
    """Diagnostics once, then one covariance per name in ``cov_types`` (a tuple). ``value``:
    the negative log-likelihood at ``x``; ``escape``: an ``Escape`` from the solve, or ``None``;
    ``scale``: the objective's scale (``_objective_scale``; its ``1`` is ``min(1, scale)``)."""
    unit = (1.0 if weights is None else _weight_unit(weights)) * jnp.minimum(1.0, scale)
    diag = compute_diagnostics(grad, hess, x, lower, upper, escape, value, unit)
    # the scale of the diagnostics' unit-diagonal Hessian (1 for a parameter without curvature
    # of its own: its rounding-level sqrt(H_ii) once made rounding-level terms of the flat
    # direction load on every parameter, and every standard error was NaN)
    scale = jnp.where(diag.no_curvature, 1.0, jnp.sqrt(jnp.abs(jnp.diag(hess))))
    loadings = jnp.abs(diag.eigenvectors) * scale[:, None]
    loadings = loadings / jnp.maximum(jnp.linalg.norm(loadings, axis=0, keepdims=True), jnp.finfo(x.dtype).tiny)
    affected = jnp.any((loadings > AFFECTED_LOADING) & diag.bad_directions[None, :], axis=1)
    keep = ~affected & ~diag.at_boundary & ~diag.nonpositive_diagonal & ~diag.no_curvature & ~diag.unbounded
    # with flat or negative directions: the pseudo-inverse without them (unconditional
    # variances of the estimable parameters); otherwise the plain inverse of the kept block
    # (conditional on parameters at a bound)
    pinv = face_pseudo_inverse(hess, keep, diag.eigenvalues, diag.eigenvectors, diag.bad_directions)
    h_inv = None
    covs = []
    for cov_type in cov_types:
        # each inverse only after the diagnostics' factorisations and the previous inverse
        # (see ``_solver.after``)
        deps = (diag.newton_decrement, diag.positive_definite, diag.eigenvalues, *covs)
        h = after(hess, *deps)
        s = after(scores, *deps) if cov_type != "hessian" else None  # OPG inverts the meat, not h
        if h_inv is None and cov_type not in ("opg", "gauss-newton"):
            h_inv = jnp.where(jnp.any(diag.bad_directions), pinv, restricted_inverse(h, keep))
        covs.append(covariance(h, keep, cov_type, s, weights, groups, n_groups, df_correction, hess_inverse=h_inv))
    return tuple(covs), diag


_COV_STATIC = ("cov_types", "n_groups", "df_correction")
#: as traced inside another program (``_batch``: that program's options apply)
_covariance_and_diagnostics = jax.jit(_covariance_and_diagnostics_fn, static_argnames=_COV_STATIC)


def _covariance_diagnostics_and_se_fn(*args, **kwargs):
    """``_covariance_and_diagnostics_fn`` and the square root of the first covariance's diagonal
    (the standard errors: ``_remember_se``)."""
    covs, diag = _covariance_and_diagnostics_fn(*args, **kwargs)
    return covs, diag, jnp.sqrt(jnp.diagonal(covs[0]))


@functools.cache
def _covariance_program() -> Callable:
    """``_covariance_and_diagnostics`` as ``fit``/``evaluate`` run it, once per fit, with the
    standard errors: compiled with ``compiler_options(once=True)`` (its compilation was a third
    of a first logistic fit's on the CPU; built at the first fit, when JAX's backend is known)."""
    jitted = jax.jit(_covariance_diagnostics_and_se_fn, static_argnames=_COV_STATIC,
                     compiler_options=compiler_options(once=True))
    # autohess's code alone: keyed by its arguments' shapes and the static options
    return stored(jitted, "covariance", lambda *_, **__: (compiler_options(once=True),), static=_COV_STATIC)
