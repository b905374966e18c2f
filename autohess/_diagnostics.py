"""Is the Hessian at the estimate fit for inference? Numbers first (pure JAX), words later.

Everything here is computed from the natural-scale Hessian ``H`` and gradient ``g`` of the
negative log-likelihood. ``H`` is first scaled to unit diagonal, ``Ht = D^-1/2 H D^-1/2`` with
``D = |diag H|``: its eigenvalues do not depend on the units of the parameters, so "flat" and
"saddle" mean the same for a rate in 1/s and in 1/day.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from ._solver import ESCAPE_RATIO, after, escape_test, newton_decrement

__all__ = [
    "Diagnostics", "compute_diagnostics", "Escape", "escape_info", "no_escape", "FLAT_CONDITION",
    "ILL_CONDITION", "AFFECTED_LOADING",
]

#: scaled condition number above which a direction counts as flat (unidentified); standard
#: errors along it are set to NaN. 1e12 leaves ~4 correct digits in float64 inverses.
FLAT_CONDITION = 1e12
#: scaled condition number above which the report warns (standard errors still computed).
ILL_CONDITION = 1e8
#: loading (of a unit-diagonal scaled direction) above which a parameter takes part in a flat,
#: negative-curvature or escaping direction; its standard error is then NaN.
AFFECTED_LOADING = 1e-3
#: a transformed parameter closer to its bound than this many marginal standard deviations
#: sits on the boundary: Wald inference there is not valid.
BOUNDARY_SDS = 1e-2
#: multiple of ``eps * (1 + |objective|)`` below which a parameter's own curvature, over a move
#: of ``1 + |x_i|``, is rounding: the objective cannot tell it apart from 0 (an empty latent
#: class's mean: 7e-14 in a log-likelihood of 199, 1.6 eps). A real but weak parameter stays
#: far above: a standard error 1000 times ``1 + |x_i|`` in a log-likelihood of 1e4 is 1e-6.
NULL_CURVATURE = 1e2


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Numerical health of the Hessian at the estimate (all arrays; batchable).

    Attributes:
        gradient_max: ``max |g|`` of the negative log-likelihood (natural scale).
        newton_decrement: ``g' H^-1 g`` (``inf`` if ``H`` is not positive definite); about twice
            the log-likelihood still to gain.
        positive_definite: Cholesky of ``H`` succeeded.
        eigenvalues: eigenvalues of the unit-diagonal scaled Hessian, ascending; parameters
            ``at_boundary`` are held fixed (their rows and columns read as the identity).
        eigenvectors: matching eigenvectors, mapped back to parameter units and normalised
            (columns), so column 0 is the flattest or most negative direction.
        condition_number: ``max|eig| / min|eig|`` of the scaled Hessian.
        nonpositive_diagonal: ``H_ii <= 0`` (a parameter with no curvature of its own).
        no_curvature: ``|H_ii| (1 + |x_i|)^2`` at rounding level, below ``NULL_CURVATURE * eps *
            (1 + |objective|)``: the objective does not resolve this parameter's curvature. It
            is a flat direction by itself (unit vector, eigenvalue 0), judged before any
            scaling, its standard error is NaN, and it is never "at a bound" unless it has
            reached one.
        at_boundary: transformed parameters sitting on a bound of their domain (within 0.01
            marginal standard deviations, counting a gradient that pushes outwards), or
            heading there along the solver's last steps.
        bad_directions: eigen-directions that are flat (relative eigenvalue below
            ``1/FLAT_CONDITION``) or negative.
        escape_ratio: curvature along the solver's last Newton step, after over before the step
            (``_solver.escape_test``); near 1 at a finite optimum, about ``exp(-1)`` on a ridge
            rising towards infinity; NaN where not measured (``evaluate``, a fit that
            converged quadratically).
        escape_direction: that Newton step on the unconstrained scale, unit length (zeros where
            not measured).
        unbounded: parameters taking part in a ridge towards infinity (no finite maximum);
            their standard errors are NaN.
        flagged: any boundary, flat or negative direction, ill-conditioning or ridge: the
            report has something to say even if the solver converged.
    """

    gradient_max: jax.Array
    newton_decrement: jax.Array
    positive_definite: jax.Array
    eigenvalues: jax.Array
    eigenvectors: jax.Array
    condition_number: jax.Array
    nonpositive_diagonal: jax.Array
    no_curvature: jax.Array
    at_boundary: jax.Array
    bad_directions: jax.Array
    escape_ratio: jax.Array
    escape_direction: jax.Array
    unbounded: jax.Array
    flagged: jax.Array


jax.tree_util.register_dataclass(
    Diagnostics,
    data_fields=[f.name for f in dataclasses.fields(Diagnostics)],
    meta_fields=[],
)


class Escape(NamedTuple):
    """What ``_solver.escape_test`` found at the end of a solve (see ``escape_info``)."""

    ratio: jax.Array  # scalar curvature ratio, NaN if not measured
    direction: jax.Array  # unit Newton step, unconstrained scale
    unbounded: jax.Array  # (p,) parameters on a ridge towards an infinite end of their domain
    to_bound: jax.Array  # (p,) parameters on a ridge towards a finite bound of their domain


def no_escape(x: jax.Array) -> Escape:
    """Nothing measured (a fit that did not come from the trust-region solver)."""
    flags = jnp.zeros(x.shape, bool)
    return Escape(jnp.asarray(jnp.nan, x.dtype), jnp.zeros_like(x), flags, flags)


def escape_info(
    fun: Callable, u: jax.Array, grad_u: jax.Array, hess_u: jax.Array, value: jax.Array,
    lower: jax.Array, upper: jax.Array, ridge: jax.Array | bool = False, ridge_step: jax.Array | None = None,
    unit: jax.Array | float = 1.0, hess_fn: Callable | None = None,
) -> tuple[jax.Array, Escape]:
    """``escape_test`` on the solver's unconstrained scale, read per parameter.

    Transforms are increasing, so a coordinate moving up heads to its upper bound. If the
    coordinate moving most heads to an infinite end of its domain, there is no finite maximum
    (``unbounded``: the returned flag, and the parameters loading on the step); if it heads to a
    finite bound (a variance creeping to 0 on the log scale), the maximum is on that boundary
    and the parameters heading to finite bounds are marked ``to_bound``.

    ``ridge`` (from the solver: its last accepted Newton steps repeated each other at a
    negligible gain) is the same finding from the solve's history; it also holds where the
    last Hessian is singular to rounding or mixes a decaying and a constant part (quasi-complete
    separation), which the one-step curvature test can miss. ``ridge_step`` is then the
    direction. ``unit``: as for ``_solver.trust_region_newton`` (``fun``'s resolution near 0).
    ``hess_fn``: ``fun``'s Hessian at a point, used instead of JAX's derivatives of ``fun``
    (``escape_test``).
    """
    both = None if hess_fn is None else _HessianAhead(hess_fn, u + (jnp.zeros_like(u) if ridge_step is None else ridge_step))
    escaping, ratio, d = escape_test(fun, u, grad_u, hess_u, value, unit, both)
    replaced = jnp.zeros((), bool)
    if ridge_step is not None:
        replaced = ridge & ~escaping
        d = jnp.where(replaced, ridge_step, d)
    escaping = escaping | ridge
    heads_to_inf = jnp.where(d > 0, jnp.isinf(upper), jnp.isinf(lower))
    loading = jnp.abs(d) * jnp.sqrt(jnp.abs(jnp.diag(hess_u)))
    # both in curvature-weighted and in plain terms: near a bound the unconstrained curvature
    # of the parameters heading there vanishes, and the weighted test alone then counted a
    # bystander moving by 1e-8 of the step (GARCH alpha = 0.056 while nu and omega ran off)
    involved = (
        escaping
        & (loading > AFFECTED_LOADING * jnp.max(loading))
        & (jnp.abs(d) > AFFECTED_LOADING * jnp.max(jnp.abs(d)))
    )
    # Parameters whose information fades along the ridge are on it too, however little they
    # move: a zero-inflated Poisson on data without excess zeros runs the inflation intercept
    # to -inf, and the inflation slope's curvature (~ pi (1 - pi)) decays with it, so its
    # "standard error" is an arbitrary point on a path to infinity (70848 measured). Read
    # from the Hessian's diagonal one step further along the ridge, computed only when the
    # test fired (a single fit skips it; under vmap both sides of the cond run).
    curv = jnp.diag(hess_u)
    if both is None:
        ahead = lax.cond(escaping, lambda: jnp.diag(jax.hessian(fun)(u + d)), lambda: curv)
    else:
        ahead = jnp.where(escaping, jnp.diag(jnp.where(replaced, both.at_other, both.at_test)), curv)
    fading = escaping & (curv > 0) & (ahead < ESCAPE_RATIO * curv)
    involved = involved | fading
    to_infinity = escaping & heads_to_inf[jnp.argmax(jnp.abs(d))]
    norm = jnp.linalg.norm(d)
    direction = jnp.where(norm > 0, d / jnp.where(norm > 0, norm, 1.0), 0.0)
    return to_infinity, Escape(ratio, direction, involved & to_infinity, involved & ~to_infinity & ~heads_to_inf)


class _HessianAhead:
    """``hess_fn`` as ``escape_test`` calls it (at its point one step ahead), evaluated there
    and at ``other`` (``u`` plus the solver's ridge step, where ``escape_info`` may look
    instead) in one ``vmap``-ed call: the program then holds one copy of ``hess_fn`` (the
    one-factor Laplace marginal's Hessian, an inner Newton loop included), not two. The two
    Hessians are kept as ``at_test`` and ``at_other`` for ``escape_info``'s fading test."""

    def __init__(self, hess_fn: Callable, other: jax.Array):
        self.hess_fn, self.other = hess_fn, other
        self.at_test = self.at_other = None

    def __call__(self, y: jax.Array) -> jax.Array:
        H = jax.vmap(self.hess_fn)(jnp.stack([y, self.other]))
        self.at_test, self.at_other = H[0], H[1]
        return H[0]


def compute_diagnostics(
    grad: jax.Array, hess: jax.Array, x: jax.Array, lower: jax.Array, upper: jax.Array,
    escape: Escape | None = None, value: jax.Array | float = 0.0, unit: jax.Array | float = 1.0,
) -> Diagnostics:
    """Diagnostics at natural-scale parameters ``x`` with domain bounds ``lower``/``upper``
    (``-inf``/``inf`` where unbounded); ``escape`` from ``escape_info`` where the solver
    measured it; ``value`` the objective (negative log-likelihood) there, which sets the
    rounding level of the curvatures, ``unit`` the objective's unit (the mean frequency weight
    times ``min(1, objective scale)``, ``_problem._objective_scale``: ``unit + |value|`` instead of
    ``1 + |value|``, so that weights ``c w`` and ``w``, and a log-likelihood times ``c``, are
    judged alike; with every weight 1e-100, or ``1e-100 * loglik``, each curvature read as
    rounding and every parameter as one the log-likelihood "does not depend on")."""
    if escape is None:
        escape = no_escape(x)
    diag = jnp.diag(hess)
    eps = jnp.finfo(hess.dtype).eps
    # A curvature is only as good as the objective it comes from: the unit-diagonal scaling
    # below divides by sqrt|H_ii|, so a rounding-level H_ii (an empty latent class's mean,
    # 7e-14) turned its honest off-diagonal terms into scaled curvatures of -7e6 and a
    # "boundary" for a parameter nowhere near one. Such parameters are judged here, before any
    # scaling: no curvature of their own.
    resolution = NULL_CURVATURE * eps * (unit + jnp.abs(jnp.asarray(value, hess.dtype)))
    span2 = (1.0 + jnp.abs(x)) ** 2
    null = jnp.abs(diag) * span2 <= resolution
    # At a bound: the nearest bound is within reach, i.e. moving there changes the negative
    # log-likelihood (second-order model along the parameter alone) by less than it does 0.01
    # marginal standard deviations away from an interior optimum. Unit-free (a sigma of 1e-9
    # 20 SDs from 0 is not at its bound); it counts a gradient pushing outwards, also against
    # negative curvature. A parameter with neither positive curvature nor an outward gradient
    # (unused, unidentified) has nothing to judge by: the flat finding names it instead (it
    # used to be "at the boundary" at any distance). A two-sided interval's bound counts too
    # when reached to rounding relative to its width. Parameters on a ridge towards infinity
    # are that, not at their other bound (all-censored Weibull: shape -> 0 while scale -> inf).
    # Curvature and outward gradient count only above rounding (``null``): an unidentified
    # transition probability of 0.95 read "at the boundary 1" off a curvature of 1e-16.
    lower_near = (x - lower) <= (upper - x)
    dist = jnp.where(lower_near, x - lower, upper - x)
    outward = jnp.where(lower_near, grad, -grad)  # > 0: the NLL falls towards the bound
    reach = -outward * dist + 0.5 * diag * dist**2
    informative = ((diag > 0) & ~null) | (outward * jnp.sqrt(span2) > resolution)
    bounded = jnp.isfinite(lower) | jnp.isfinite(upper)
    width = upper - lower
    reached = jnp.isfinite(width) & (dist <= jnp.sqrt(eps) * width)
    boundary = bounded & (((jnp.abs(reach) < 0.5 * BOUNDARY_SDS**2) & informative) | reached)
    boundary = (boundary & ~escape.unbounded) | escape.to_bound
    d = jnp.sqrt(jnp.where(diag > 0, diag, jnp.abs(diag)))
    d = jnp.where((d > 0) & ~null, d, 1.0)
    # a parameter without curvature of its own is a flat direction by itself: its row and
    # column are 0 (not its rounding-level terms blown up by the scaling)
    free = ~null | boundary
    scaled = jnp.where(free[:, None] & free[None, :], hess / jnp.outer(d, d), 0.0)
    # Curvature is judged on the face the estimate lies on: parameters at a bound are held
    # there (rows and columns replaced by the identity). At a boundary optimum the full Hessian
    # need not be positive definite along directions that leave the face, so a full-matrix
    # eigen-decomposition reported saddles and NaN standard errors for free parameters.
    # Parameters on a path towards an edge of the domain with no finite maximum (the solver's
    # finding: a component's sd at 1e-15) are held likewise: the curvature left there says
    # nothing about the others (it read as a saddle along the other component). A ridge to
    # infinity keeps the full face: its flat directions are findings of their own.
    lead = jnp.argmax(jnp.abs(escape.direction))
    to_edge = jnp.where(escape.direction[lead] > 0, jnp.isfinite(upper[lead]), jnp.isfinite(lower[lead]))
    held = boundary | (escape.unbounded & to_edge & jnp.any(escape.direction != 0))
    face = jnp.where(held[:, None] | held[None, :], jnp.eye(x.shape[0], dtype=hess.dtype), scaled)
    lam, vec = jnp.linalg.eigh(after(face, escape.ratio))  # after the solve's escape test
    raw = vec / d[:, None]
    raw = raw / jnp.linalg.norm(raw, axis=0, keepdims=True)
    top = jnp.max(jnp.abs(lam))
    tiny = jnp.finfo(hess.dtype).tiny
    cond = top / jnp.maximum(jnp.min(jnp.abs(lam)), tiny)
    bad = lam <= top / FLAT_CONDITION
    dec, pd = newton_decrement(grad, after(hess, lam, vec))  # one LAPACK call at a time
    return Diagnostics(
        gradient_max=jnp.max(jnp.abs(grad)),
        newton_decrement=dec,
        positive_definite=pd & jnp.all(jnp.isfinite(hess)),
        eigenvalues=lam,
        eigenvectors=raw,
        condition_number=cond,
        nonpositive_diagonal=diag <= 0,
        no_curvature=null & ~boundary,
        at_boundary=boundary,
        bad_directions=bad,
        escape_ratio=escape.ratio,
        escape_direction=escape.direction,
        unbounded=escape.unbounded,
        flagged=jnp.any(boundary) | jnp.any(bad) | ~(cond <= ILL_CONDITION) | jnp.any(escape.unbounded),
    )
