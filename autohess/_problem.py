"""The objective as the solver sees it: a model's negative log-likelihood on the unconstrained
scale, divided by the mean frequency weight and by the objective's own scale, and its exact
value, gradient and Hessian (taken on the natural scale and mapped by the chain rule, whole or
in chunks of observations), with the way back to the objective's own units.

Shared by ``fit``, the batch members, ``evaluate`` and the profile, so that every solve sees
the same problem.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ._basis import fold_basis
from ._derivatives import _objective, _split_obs, _symmetrize
from ._laplace_derivatives import block_value_grad_hess
from ._model import Model
from ._rowwise import rowwise_value_grad_hess
from ._rules import with_cheap_rules



def _weight_unit(weights: Any) -> Any:
    """The mean frequency weight (1 without weights): the unit the solver divides out.

    The solver's tests compare gains with ``1 + |objective|`` (the ``1`` for an objective near
    0), which is not scale-free: with every weight 1e-100 the whole objective is ~1e-98, every
    predicted gain looked like rounding, and the fit stopped at its start as CONVERGED (7 SE
    from the optimum). Solving with weights divided by their mean makes weights ``c w`` and
    ``w`` the same problem for the solver, and leaves unweighted fits unchanged."""
    if weights is None:
        return None
    return jnp.mean(weights)


#: mean |log-likelihood contribution| per unit weight, at the start, inside which the
#: objective is taken to be a log-likelihood on its own scale (a "1" of it is one unit of
#: log-likelihood): a logistic model gives 0.69 at its default start (beta = 0), a tiny or
#: separated data set the same; poor starts (a Poisson coefficient of 50: 5e21) are harmless
#: above it, see ``_objective_scale``. Inside the band nothing is rescaled, so ordinary fits
#: are bit-for-bit unchanged.
SCALE_BAND = (1e-3, 1e3)


def _objective_scale(model: Model, flat: jax.Array, data: Any, weights: Any) -> jax.Array:
    """The objective's own scale ``U``, measured at natural-scale parameters ``flat``: the mean
    ``|contribution|`` per unit weight where that lies outside ``SCALE_BAND``, else 1.

    The solver's and the diagnostics' tests compare gains and curvatures with ``1 + |f|``,
    the ``1`` standing for the objective's resolution where ``f`` is near 0 (a perfect fit,
    a tiny data set). That ``1`` is a log-likelihood unit: a user's ``1e-100 * loglik`` has
    every gain below it, so the fit stopped at its start and every parameter was called flat;
    ``1e100 * loglik`` made the trust region (sized in units of sqrt(f)) 1e-50 wide at the start
    and the solve crawled (37 iterations instead of 6). Dividing by ``U`` makes both the
    unscaled problem. The tests' ``1`` then becomes ``min(1, U)`` in the caller's units
    (``_solver_unit``): for ``U < 1`` the rescaled objective's own unit; for ``U > 1`` the
    plain ``1`` as before, so a start whose contributions are huge only because it is poor
    (Poisson at a coefficient of 50: 5e21, 1 at the optimum) does not loosen the tests at the
    optimum; its trust region starts in the rescaled geometry (wider), which the region's
    ratio test adapts within a few steps. Measured at the start, not along the solve: a
    separated logistic's objective tends to 0 and must keep its unit. A total log-likelihood
    (``per_observation=False``) keeps ``U = 1``.

    A random-effects model's contributions are its Laplace marginal's, whose every evaluation
    runs the inner Newton loop: the fit's solve program then held a second copy of that loop
    (cbpp: ~0.45 s of its first call's compile). ``U`` only decides whether the mean lies
    outside a band six orders of magnitude wide, so its order of magnitude serves: it is taken
    from the log-likelihood at the random effects' mean, ``u = 0`` (``_laplace_proxy``). A
    scalar marginal (crossed and dense paths) keeps ``U = 1`` like any total log-likelihood.
    """
    if model.laplace is not None:
        contrib = _laplace_proxy(model, flat, data)
    else:
        contrib = jnp.abs(model._loglik(model.spec.unflatten(flat), data))
    if contrib.ndim == 0:
        # a total log-likelihood (per_observation=False, e.g. least squares' -(n/2) log RSS):
        # no contributions to take a typical size from, and the total grows with N and can
        # cross 0 at any start; solved on its own scale as before
        return jnp.ones((), contrib.dtype)
    if weights is None:
        m = jnp.mean(contrib)
    else:
        m = jnp.sum(weights * contrib) / jnp.sum(weights)
    lo, hi = SCALE_BAND
    rescale = jnp.isfinite(m) & (m > 0) & ((m < lo) | (m > hi))
    return jnp.where(rescale, m, jnp.ones_like(m))


def _laplace_proxy(model: Model, flat: jax.Array, data: Any) -> jax.Array:
    """``|sum_i loglik_i(theta, u = 0)|`` per group: a block-diagonal Laplace model's conditional
    log-likelihood at the random effects' mean, without their prior (a 0-d zero for a scalar
    marginal: ``U = 1`` without tracing it). The prior is left out because its normalising
    constant cancels against the marginal's ``(q/2) log 2 pi - 1/2 log det(-H_uu)`` (exactly
    where the data are uninformative): with it, a ``1e-6 * loglik`` gave ~1 against a mean
    |marginal| of 4.5e-6; without it both move by ``c``. The bench workloads' means, marginal
    vs proxy, at their starts and estimates: cbpp 8.8 vs 27 and 6.1 vs 6.6, sleepstudy 49 vs
    56 and 49 vs 59, NB2 43 vs 51 and 42 vs 44: inside the band either way. Where the proxy is
    not finite the inner Newton (which starts at ``u = 0``) fails and the marginal is NaN too:
    no rescale either way."""
    lap = model.laplace
    s = lap.structure
    if not s.block_diagonal:
        return jnp.zeros((), flat.dtype)
    zero = jnp.zeros((s.n_levels, s.q), flat.dtype)
    contrib = lap.loglik({**model.spec.unflatten(flat), **s.split(zero)}, data)
    return jnp.abs(jax.ops.segment_sum(contrib, data[s.groups], num_segments=s.n_levels))


def _solver_unit(scale: Any) -> Any:
    """The solver's ``unit`` (``trust_region_newton``) for an objective divided by ``scale``:
    ``min(1, 1/scale)`` of the rescaled objective, i.e. ``min(scale, 1)`` of the objective's
    own units (see ``_objective_scale``)."""
    return jnp.minimum(1.0, 1.0 / scale)


def _unconstrained(model: Model, data: Any, weights: Any, scale: Any = None) -> Callable:
    """``u -> negative log-likelihood`` on the unconstrained scale for these data and weights,
    divided by the mean weight (``_weight_unit``) and by ``scale`` (``_objective_scale``):
    multiply the solver's value, gradient and Hessian by both to get the objective's own."""
    if weights is not None:
        weights = weights / _weight_unit(weights)
    f = functools.partial(_objective(model, "unconstrained"), data=data, w=weights)
    if scale is None:
        return f
    return lambda u: f(u) / scale


def _unscale(unit: Any, value, grad, hess, scale: Any = None):
    """The solver's (mean-weight- and ``scale``-normalised) value, gradient and Hessian in the
    objective's units."""
    if scale is not None:
        unit = scale if unit is None else unit * scale
    if unit is None:
        return value, grad, hess
    return value * unit, grad * unit, hess * unit


def _unconstrained_value_grad_hess(model: Model, data: Any, weights: Any, scale: Any, mode: str,
                                   chunk: Optional[int] = None) -> Callable:
    """``u -> (f, grad f, Hessian)`` of ``_unconstrained(model, data, weights, scale)``, the
    derivatives taken on the natural scale and mapped by the chain rule (the transforms act
    elementwise: ``g_u = J g_x``, ``H_u = J H_x J + diag(K g_x)``, ``J = T'(u)``,
    ``K = T''(u)``).

    Why not differentiate on the unconstrained scale directly: there the tangent basis
    reaches the data through ``to_natural``'s concatenation of the transformed leaves, and
    ``fold_basis`` no longer sees that a ``Real`` leaf's block is a slice of the identity (the
    ``X @ I`` product stays: ~2x the closed form's arithmetic for a regression with a
    ``Positive`` scale, e.g. the normal linear model or a Tobit). On the natural scale every
    leaf's block folds; the map back costs ``O(p^2)``. Models whose parameters are all
    ``Real`` differentiate directly (the two are the same function).

    ``chunk``: the natural-scale derivatives summed over blocks of ``chunk`` observations in a
    compiled loop (``fit(chunk_size=...)``), so the ``N x p`` intermediates are ``chunk x p``."""
    spec = model.spec
    laplace = model.laplace
    if chunk is None and laplace is not None and not one_factor_laplace(model):
        # no fold: the marginal meets the parameters through the inner solve, not a product by
        # the data, and re-evaluating its jaxpr doubled the trace of the solve (cbpp 3.1 s)
        return _value_grad_hess_with_basis(_unconstrained(model, data, weights, scale), mode)
    raw_weights = weights
    if weights is not None:
        weights = weights / _weight_unit(weights)
    if chunk is None and laplace is not None:
        # one grouping factor: the implicit function theorem written out per group
        # (``_laplace_derivatives``) instead of JAX's derivatives through the inner solve
        on_natural = block_value_grad_hess(laplace, spec.unflatten, data, weights, scale)
        return _through_transforms(spec, on_natural)
    # through the linear predictors where the log-likelihood is a regression's (``_rowwise``:
    # one tangent per predictor column instead of one per parameter), else forward-over-reverse
    rows = None if chunk is not None else _rowwise_fn(model, data, weights, scale)
    if rows is not None and spec.all_real:
        return rows
    if chunk is None and rows is None and spec.all_real:
        return _value_grad_hess_fn(_unconstrained(model, data, raw_weights, scale), mode, rules=True)
    if rows is not None:
        on_natural = rows
    elif chunk is None:
        natural = functools.partial(model.negloglik_flat, data=data, weights=weights)
        on_natural = _value_grad_hess_fn(natural if scale is None else (lambda x: natural(x) / scale), mode, rules=True)
    else:
        on_natural = _chunked_value_grad_hess(model, data, weights, scale, mode, chunk)
        if spec.all_real:
            return on_natural
    return _through_transforms(spec, on_natural)


def one_factor_laplace(model: Model) -> bool:
    """A random-effects model on the block-diagonal path (one grouping factor), whose marginal's
    derivatives ``_laplace_derivatives`` writes out per group."""
    return model.laplace is not None and model.laplace.structure.block_diagonal


def _member_value_grad_hess(model: Model, data: Any, weights: Any, scale: Any, mode: str) -> Callable:
    """``u -> (f, grad f, Hessian)`` of ``_unconstrained(model, data, weights, scale)`` as batch
    members solve it: JAX's derivatives of it (``_value_grad_hess_fn``), except for a one-factor
    random-effects model, whose are written out per group as ``fit``'s (compiled in less time
    than JAX's through the inner solve)."""
    if one_factor_laplace(model):
        return _unconstrained_value_grad_hess(model, data, weights, scale, mode)
    return _value_grad_hess_fn(_unconstrained(model, data, weights, scale), mode)


def _through_transforms(spec, on_natural: Callable) -> Callable:
    """``u -> (f, grad f, Hessian)`` on the unconstrained scale from ``on_natural``'s
    natural-scale ones by the chain rule (see ``_unconstrained_value_grad_hess``)."""

    def fun(u):
        ones = jnp.ones_like(u)
        x, jac = jax.jvp(spec.to_natural, (u,), (ones,))
        curv = jax.jvp(lambda t: jax.jvp(spec.to_natural, (t,), (ones,))[1], (u,), (ones,))[1]
        value, grad, hess = on_natural(x)
        return value, jac * grad, _symmetrize(jac[:, None] * hess * jac[None, :] + jnp.diag(curv * grad))

    return fun


def _rowwise_fn(model: Model, data: Any, weights: Any, scale: Any) -> Optional[Callable]:
    """``x -> (f, grad f, Hessian)`` of the natural-scale negative log-likelihood (divided by
    ``scale``; ``weights`` already divided by their mean) through its linear predictors
    (``rowwise_value_grad_hess``), or None where its structure is not a regression's."""
    if not model.per_observation or model.nobs is None:
        return None
    spec = model.spec
    return rowwise_value_grad_hess(lambda x: model._loglik(spec.unflatten(x), data), int(spec.size), model.nobs, model.dtype,
                                   weights, scale)


def _chunked_value_grad_hess(model: Model, data: Any, weights: Any, scale: Any, mode: str, chunk: int) -> Callable:
    """``x -> (f, grad f, Hessian)`` of the natural-scale negative log-likelihood (divided by
    ``scale``; ``weights`` already divided by their mean) as sums over blocks of ``chunk``
    observations: a ``fori_loop`` of ``dynamic_slice``s reads each block in place, as
    ``ah.hessian(chunk_size=...)`` does."""
    n_full, rem = divmod(model.nobs, chunk)
    leaves, treedef, is_obs = _split_obs(model, data)

    def block(x, start, size):
        part = treedef.unflatten([
            jax.lax.dynamic_slice_in_dim(leaf, start, size) if obs else leaf for leaf, obs in zip(leaves, is_obs)
        ])
        w = None if weights is None else jax.lax.dynamic_slice_in_dim(weights, start, size)
        f = functools.partial(model.negloglik_flat, data=part, weights=w)
        return _value_grad_hess_fn(f if scale is None else (lambda t: f(t) / scale), mode, rules=True)(x)

    def fun(x):
        p = x.shape[0]
        add = lambda acc, start, size: jax.tree_util.tree_map(jnp.add, acc, block(x, start, size))  # noqa: E731
        total = (jnp.zeros((), x.dtype), jnp.zeros((p,), x.dtype), jnp.zeros((p, p), x.dtype))
        if n_full:
            total = jax.lax.fori_loop(0, n_full, lambda i, acc: add(acc, i * chunk, chunk), total)
        if rem:
            total = add(total, n_full * chunk, rem)
        return total

    return fun


def _value_grad_hess_fn(f: Callable, mode: str, rules: bool = False) -> Callable:
    """``u -> (f, grad f, Hessian)`` from one compiled derivative pass, without the products
    by the tangent basis (``fold_basis``: one ``N x p x p`` product fewer for a regression).
    ``rules``: ``jnp.logaddexp`` by its cheaper rule (``_rules``; the single fit's solve: ``f``
    is traced once more to find it, which batches, profiles and random-effects marginals skip)."""
    return fold_basis(_value_grad_hess_with_basis(with_cheap_rules(f) if rules else f, mode))


def _value_grad_hess_with_basis(f: Callable, mode: str) -> Callable:
    """``_value_grad_hess_fn`` before ``fold_basis`` (the tangent basis still multiplied in)."""
    if mode in ("fwd-rev", "rev-rev"):
        jac = jax.jacfwd if mode == "fwd-rev" else jax.jacrev

        def grad_with_aux(t):
            value, grad = jax.value_and_grad(f)(t)
            return grad, (value, grad)

        def fun(u):
            h, (value, grad) = jac(grad_with_aux, has_aux=True)(u)
            return value, grad, _symmetrize(h)

        return fun

    def fun(u):
        value, grad = jax.value_and_grad(f)(u)
        return value, grad, _symmetrize(jax.jacfwd(jax.jacfwd(f))(u))

    return fun


def _natural_derivatives(spec, u, value, grad_u, hess_u):
    """Natural-scale value, gradient and Hessian from the solver's unconstrained ones.

    The transforms act elementwise, ``x_i = T_i(u_i)``, so with ``J = T'(u)`` and
    ``K = T''(u)``: ``g_u = J g_x`` and ``H_u = J H_x J + diag(K g_x)``. Inverting this costs
    nothing to compile, unlike a second Hessian program. ``ok`` is False where ``J``
    underflows (a parameter pushed to ``exp(-745)``); the caller then differentiates directly
    on the natural scale.
    """
    ones = jnp.ones_like(u)
    x, jac = jax.jvp(spec.to_natural, (u,), (ones,))
    curv = jax.jvp(lambda t: jax.jvp(spec.to_natural, (t,), (ones,))[1], (u,), (ones,))[1]
    grad = grad_u / jac
    hess = (hess_u - jnp.diag(curv * grad)) / jnp.outer(jac, jac)
    ok = jnp.all(jnp.abs(jac) > 0) & jnp.all(jnp.isfinite(hess)) & jnp.all(jnp.isfinite(grad))
    return x, value, grad, _symmetrize(hess), ok
