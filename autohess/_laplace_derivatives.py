"""The block-diagonal Laplace marginal's exact value, gradient and Hessian, assembled per group
from directional derivatives of the joint density.

For one grouping factor the marginal is a sum over groups, ``L(theta) = sum_g w_g L_g`` with

    L_g = j_g(u_g, theta) + (q/2) log 2 pi - 1/2 log det K_g,    K_g = -d2 j_g / du_g du_g,

at the group's mode ``u_g = u_hat_g(theta)``. ``Laplace.marginal`` differentiates this by JAX
through the implicit-function ``custom_jvp`` of the mode: the Hessian is reverse mode over the
mode's rule (itself second derivatives of ``j``), forward mode over that, through the
Cholesky factor twice. Here the same exact derivatives come from the implicit function theorem
written out (per group; the group index is dropped, ``a, b`` index ``theta``):

* ``u_a = K^-1 j_ua`` (the mode's derivative) and the total direction ``T_a = (e_a, u_a)``:
  moving ``theta_a`` with the mode following it;
* with ``K^-1 = C C'`` (``C = L^-T`` from the Cholesky factor ``K = L L'``, columns ``c_m``),
  ``M_a[m, n] = -D3 j[c_m, c_n, T_a]`` (``C' (dK/dtheta_a) C``), ``s_ab = D3 j[c, T_a, T_b]``
  (so ``u_ab = C s_ab``) and ``v_n = sum_m D3 j[c_m, c_m, c_n]``;
* ``dL/dtheta_a = j_a - 1/2 tr M_a`` (the envelope theorem: ``j_u = 0`` at the mode), and

      d2L/dtheta_a dtheta_b = D2 j[T_a, T_b] + 1/2 (sum_m D4 j[c_m, c_m, T_a, T_b] + s_ab . v)
                              + 1/2 tr(M_a M_b).

Every ``D^k j[...]`` is a directional derivative of the joint density along directions that
act on every group at once (the ``theta`` part shared, the ``u`` part one row per group): group
``g``'s entry depends on its own row alone, so one nested ``jvp`` gives every group's
derivative. All of them come from one nested pass: ``j`` differentiated along two directions
``Z_A, Z_B`` from ``{T_1..T_p, c_1..c_q}``, then twice along ``c_m`` in ``u`` alone
(``q (p+q)(p+q+1)/2`` lanes of ``vmap``), plus one first pass for ``j_a`` and ``j_ua``.

Why: the program holds one fourth-order pass of the user's log-likelihood instead of JAX's
derivatives of the mode's rule, of the Cholesky factor and of the solves (XLA compiled the
value + gradient + Hessian of NB2's marginal in 2.1-2.3 s instead of 3.6-4.4, sleepstudy's in
2.0-2.4 instead of 2.6-3.4; loaded VM), and the ``u``-only derivatives innermost-outermost keep
terms in ``theta`` alone (NB2's ``lgamma(y + 1/alpha)``) out of the third and fourth orders.
Equal to the AD Hessian to rounding (tests/test_laplace_derivatives.py). Used by ``fit``'s
solver (``_problem._unconstrained_value_grad_hess``), the batch members' solver and escape test
(``_batch.member_fit``, ``_fit._escape_hessian``) and the profile's refits; the marginal itself,
its scores and the random-effect SEs keep ``Laplace.marginal``. Tried and not kept: the ``u``
directions innermost with ``D2 j[T_a, T_b]`` from a separate fixed-mode Hessian (no faster,
15-25% more to compile).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._laplace import Laplace, _WARM_START

__all__ = ["block_value_grad_hess"]

_LOG_2PI = math.log(2.0 * math.pi)


def _replayed(fn: Callable, *args) -> Callable:
    """``fn`` traced once to a jaxpr at ``args``' shapes and replayed: the nested derivative
    passes below then run JAX's rules on its primitives, not the user's Python (``jnp``'s
    argument checks and promotions) again at every level (NB2: 1.06 -> 0.68 s of tracing)."""
    from jax.extend.core import jaxpr_as_fun

    closed = jax.make_jaxpr(fn)(*args)
    replay = jaxpr_as_fun(closed)
    return lambda *a: replay(*a)[0]


def block_value_grad_hess(lap: Laplace, unflatten: Callable, data: Any, weights: Optional[jax.Array] = None,
                          scale: Any = None) -> Callable:
    """``x -> (f, grad f, Hessian)`` of the negative Laplace log marginal (block-diagonal
    ``lap``) at natural-scale parameters ``x`` (flat; ``unflatten(x)`` the dict ``loglik``
    sees), per-group ``weights`` (already divided by their mean) and divided by ``scale``: the
    same function as ``-sum(weights * lap.marginal(unflatten(x), data)) / scale`` and its
    derivatives, to rounding. A group whose inner maximum was not found makes the value NaN."""
    s = lap.structure
    if not s.block_diagonal:  # pragma: no cover - guarded by the caller
        raise ValueError("block_value_grad_hess needs the block-diagonal structure")
    G, q = s.n_levels, s.q

    def fun(x):
        dtype = x.dtype
        p = x.shape[0]
        x = jax.lax.stop_gradient(x)
        params = unflatten(x)
        res = _WARM_START.get()
        if res is None:
            res = lap.inner(params, data)
        u = jax.lax.stop_gradient(res.u)
        j = _replayed(lambda y, v: lap.joint(v, unflatten(y), data), x, u)

        # K = -H_uu per group, its Cholesky factor and C = L^-T (K^-1 = C C')
        _, H = lap.grad_hess(u, params, data)
        chol = jnp.linalg.cholesky(-H)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        C = jnp.swapaxes(jnp.linalg.inv(chol), -1, -2)  # q x q per group: inv of a triangle
        cdirs = jnp.moveaxis(C, -1, 0)  # (q, G, q): direction c_m, one row per group
        eye_p = jnp.eye(p, dtype=dtype)
        units = jnp.broadcast_to(jnp.eye(q, dtype=dtype)[:, None, :], (q, G, q))

        def du(y, v, c):  # D j[(0, c)]: u alone moves
            return jax.jvp(lambda w: j(y, w), (v,), (c,))[1]

        # first pass: j_a and j_ia (lanes a, i)
        def first(unit, e):
            (_, _), (ja, jia) = jax.jvp(lambda y: (j(y, u), du(y, u, unit)), (x,), (e,))
            return ja, jia

        ja, jua = jax.vmap(lambda unit: jax.vmap(lambda e: first(unit, e))(eye_p))(units)  # (q, p, G)
        ja = ja[0]  # (p, G): the same for every i
        jua = jnp.transpose(jua, (2, 0, 1))  # (G, q, p)
        u_a = jnp.einsum("gim,gjm,gjp->gip", C, C, jua)  # K^-1 j_ua: the modes' derivatives

        # directions Z: T_1..T_p (theta_a with the modes following), then c_1..c_q (u alone)
        zx = jnp.concatenate([eye_p, jnp.zeros((q, p), dtype)])  # (P, p)
        zu = jnp.concatenate([jnp.moveaxis(u_a, -1, 0), cdirs])  # (P, G, q)
        P = p + q
        ia, ib = np.triu_indices(P)

        def lane(c, xa, ua, xb, ub):
            def second(y, v):
                inner = lambda y2, v2: jax.jvp(j, (y2, v2), (xa, ua))  # noqa: E731
                (_, da), (_, dab) = jax.jvp(inner, (y, v), (xb, ub))
                return dab

            once = lambda v: jax.jvp(lambda w: second(x, w), (v,), (c,))  # noqa: E731
            (dab, dcab), (_, dccab) = jax.jvp(once, (u,), (c,))
            return dab, dcab, dccab

        pairs = (zx[ia], zu[ia], zx[ib], zu[ib])
        d2, d3, d4 = jax.vmap(lambda c: jax.vmap(lane, in_axes=(None, 0, 0, 0, 0))(c, *pairs))(cdirs)  # (q, pairs, G)

        def full(t):  # (..., pairs, G) -> (G, ..., P, P), symmetric
            m = jnp.zeros(t.shape[:-2] + (P, P, G), dtype).at[..., ia, ib, :].set(t).at[..., ib, ia, :].set(t)
            return jnp.moveaxis(m, -1, 0)

        D2, D3, D4 = full(d2[0]), full(d3), full(d4)  # (G, P, P), (G, q, P, P), (G, q, P, P)
        M = -jnp.transpose(D3[:, :, :p, p:], (0, 2, 1, 3))  # (G, p, q, q): M_a[m, n]
        v = jnp.einsum("gmmn->gn", D3[:, :, p:, p:])  # (G, q)
        sab = D3[:, :, :p, :p]  # (G, q, p, p)

        w = jnp.ones(G, dtype) if weights is None else jnp.broadcast_to(weights, (G,)).astype(dtype)
        contrib = j(x, u) + 0.5 * q * _LOG_2PI - 0.5 * logdet
        contrib = jnp.where(res.converged, contrib, jnp.nan)
        trM = jnp.trace(M, axis1=-2, axis2=-1)  # (G, p)
        value = jnp.sum(w * contrib)
        grad = jnp.einsum("g,ag->a", w, ja) - 0.5 * jnp.einsum("g,ga->a", w, trM)
        hess_g = (D2[:, :p, :p] + 0.5 * jnp.sum(D4[:, :, :p, :p], axis=1) + 0.5 * jnp.einsum("gmab,gm->gab", sab, v)
                  + 0.5 * jnp.einsum("gamn,gbnm->gab", M, M))
        hess = jnp.einsum("g,gab->ab", w, hess_g)
        hess = 0.5 * (hess + hess.T)
        if scale is not None:
            value, grad, hess = value / scale, grad / scale, hess / scale
        return -value, -grad, -hess

    return fun
