"""Minimisers of a negative log-likelihood on the unconstrained scale, as pure JAX loops.

``trust_region_newton`` uses the exact Hessian inside one ``lax.while_loop``; every branch is a
``jnp.where``, so the whole solve can be ``jit``-ed and ``vmap``-ed over thousands of data sets.
``lbfgs`` wraps ``optax.lbfgs`` in the same loop shape, preconditioned by the exact Hessian at
the start, for models with many parameters.

Status codes are data (an ``int32`` array), not exceptions: ``Status`` says what each means.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "Status", "SolverResult", "trust_region_newton", "lbfgs", "lbfgs_preconditioner", "newton_decrement", "newton_step", "after",
    "escape_test", "ESCAPE_RATIO",
]


def after(x, *deps):
    """``x``, but computed only once ``deps`` are: orders independent LAPACK calls.

    jaxlib's CPU LAPACK kernels (Cholesky, eigh, LU) split a batch (a ``vmap``-ed call) over
    XLA's intra-op thread pool and block until their pieces finish. XLA may start two
    independent kernels at once, each on a pool thread; on a 2-core machine both pool threads
    then wait for pieces no thread is left to run: a deadlock (seen in batched fits, every
    thread idle). Chaining every factorisation in a program after the previous one means at
    most one kernel blocks at a time. The chain must be a real data dependency (XLA's CPU
    runtime orders work by data flow; an ``optimization_barrier`` did not order it): ``x`` gets
    ``0 * |d|``-like terms added that are exactly 0 whatever ``d`` is (``min(|d|, 0)`` with NaN
    mapped to 0), so values are unchanged.
    """
    if not deps:
        return x
    tie = jnp.zeros((), x.dtype)
    for d in deps:
        first = jnp.ravel(jnp.asarray(d))[0].astype(x.dtype)
        zero = jnp.minimum(jnp.abs(first), jnp.zeros((), x.dtype))
        tie = tie + jnp.where(jnp.isnan(zero), jnp.zeros((), x.dtype), zero)
    return x + tie


class Status(enum.IntEnum):
    """Why a solve stopped. ``Status(code).message`` is the readable reason."""

    RUNNING = -1
    CONVERGED = 0
    MAX_ITERATIONS = 1
    NONFINITE = 2
    STALLED = 3
    NOT_RUN = 4
    SINGULAR = 5
    UNBOUNDED = 6
    APPROXIMATE = 7

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.RUNNING: "running",
    Status.CONVERGED: "converged: the Newton decrement is below tolerance and the Hessian is "
    "positive definite on the solver's unconstrained scale (a parameter that converged to a bound "
    "of its domain is named in the diagnostics)",
    Status.MAX_ITERATIONS: "not converged: the maximum number of iterations was reached; raise "
    "maxiter or start closer to the optimum",
    Status.NONFINITE: "failed: the log-likelihood or its derivatives are not finite at the "
    "current point; check the data and the starting values",
    Status.STALLED: "not converged: no step reduces the negative log-likelihood any further "
    "although the optimality test fails (a saddle point, a flat direction or a non-smooth "
    "likelihood; see the diagnostics)",
    Status.NOT_RUN: "not optimised: results evaluated at the given parameters",
    Status.SINGULAR: "stopped at a stationary point whose Hessian is not positive definite "
    "(a flat, unidentified direction); see the diagnostics",
    Status.UNBOUNDED: "no finite maximum: the log-likelihood keeps increasing as parameters move "
    "off towards infinity or an edge of their domain (e.g. complete or quasi-complete separation, a "
    "category with only zero counts, a variance collapsing onto one observation); the estimates are "
    "arbitrary points on that path, see the diagnostics",
    Status.APPROXIMATE: "not converged: stopped early by rtol at an approximate optimum (the "
    "remaining gain g' H^-1 g / 2 fell below rtol * (1 + |llf|), 1 in the log-likelihood's own unit); the estimates are not the maximum "
    "likelihood estimates; lower rtol or leave it at its default (None) for the optimum",
}

#: relative size of a Newton step at which ``trust_region_newton`` stops (10^4 ulps: parameters
#: agree to ~12 digits whatever the start)
XTOL = 1e-12

#: remaining gain (relative to 1 + |objective|) below which repeated Newton steps count as a ridge
RIDGE_GAIN = 1e-6

#: consecutive repeated Newton steps (at a negligible remaining gain) that make a ridge
RIDGE_STEPS = 3

#: share of the largest coordinate move above which a coordinate counts as moved by a step
#: (as ``_diagnostics.AFFECTED_LOADING``)
AFFECTED_LOADING = 1e-3

#: curvature ratio (along the last Newton step, after / before) below which the objective is
#: flattening out towards infinity rather than approaching a finite minimum (see ``escape_test``)
ESCAPE_RATIO = 0.5

#: scaled curvature along the last Newton step below which ``escape_test`` does not judge (the
#: direction is flat to rounding: ``_diagnostics.FLAT_CONDITION``'s 1e-12)
ESCAPE_MIN_CURVATURE = 1e-12

#: largest move of one transformed coordinate (log or logit scale) in one step: a factor e^3
#: ~ 20 in a scale parameter, a probability from 0.5 to 0.95. The trust region is scaled by
#: sqrt|H_ii|, which at a strange point can be tiny (0.03 for a component's log-sd whose
#: component sits on one observation), so the region alone allowed 90-unit jumps in a log
#: scale, far beyond what the quadratic model resolves: the component's mean, moved by a step
#: sized for the old sd, lost its observation (e^5 already did).
MAX_TRANSFORMED_STEP = 3.0

#: distance (unconstrained units) that one transformed coordinate travels, in one direction,
#: over consecutive accepted steps whose gains do not fall off (each at least half the
#: previous), before the objective is taken to fall without bound along that path: a
#: likelihood growing like a power of a scale heading to 0 (a variance collapsing onto one
#: observation) gains the same at every unit of log scale, while a finite limit approached on
#: the log scale (a random-effect variance -> 0) gains a factor e^-1 or less per unit. 20
#: units is a factor 5e8 in a scale: no start sensible for the data is that far away (and a
#: collapse onto an observation of size 1 started at 1e-3 reaches the rounding of that
#: observation, and stalls, 26 units further down).
EDGE_TRAVEL = 20.0

#: growth of some coordinate's curvature over such a run, also required (and naming the
#: coordinates tied to the collapse: a component's mean pinned to the observation its
#: variance collapses onto has curvature ~ 1/s^2)
EDGE_CURVATURE_GROWTH = 1e4


class SolverResult(NamedTuple):
    x: jax.Array  # unconstrained parameters at the end
    value: jax.Array  # objective (negative log-likelihood) there
    grad: jax.Array
    hess: jax.Array
    iterations: jax.Array
    status: jax.Array  # Status code, int32
    # stopped by a Newton step below XTOL at a well-conditioned Hessian: a finite optimum
    # reached quadratically (``escape_test`` cannot fire there and is skipped)
    resolved: jax.Array
    # the last accepted points repeated their Newton step (same direction and length) with a
    # negligible gain left: a ridge running off to infinity on this scale; ``ridge_step`` is
    # the last such Newton step (unscaled)
    ridge: jax.Array
    ridge_step: jax.Array
    # status UNBOUNDED from the solver itself (a transformed coordinate carried ``EDGE_TRAVEL``
    # units by steps whose gains did not fall off): the last such step, and the coordinates
    # taking part (moved by it, or curvature grown ``EDGE_CURVATURE_GROWTH``-fold over the run)
    edge_step: jax.Array
    edge_involved: jax.Array
    # ``fun``'s carry at the last accepted point (``aux0``; ``None`` without): a random-effects
    # fit's conditional modes there, which ``FitResult`` keeps so its SEs start from them
    aux: Any = None


class Stage:
    """A trace-time request (``staged``) to run the next ``trust_region_newton`` in a stage.

    ``iterations``: loop passes this stage may run (the first pass of a fresh solve evaluates the
    start); ``state``: the ``_TRState`` a previous stage ended with (``None``: start fresh).
    After tracing, ``final`` holds the state the stage ended with: a member whose status is
    still ``RUNNING`` there is resumed by passing ``final`` (gathered) to the next stage, with
    the same inputs, so its iterations are the total over stages and its result is that of one
    uninterrupted loop (``_batch.run_members``: compaction of unfinished members).
    ``iterations=None``: no stage limit (the loop runs until every member stops);
    ``iterations=0`` with a ``state`` in which the member stopped: no loop at all, the solver
    returns that state's result (a results-only program: the stages before it need not
    compute what follows the solve, see ``_batch._run_compacted``).

    ``axis_name``: the ``vmap`` axis the solve is batched over, if any. A ``lax.cond`` on a
    per-member predicate becomes a select under ``vmap`` and runs both branches for every
    member; the trust-region subproblem (an eigendecomposition and 48 bisection steps) is then
    paid in every iteration although near the optimum every Newton step fits its region. With
    the axis named, the loop asks (``psum`` over the batch) whether any running member needs the
    subproblem and runs it only in iterations where one does: each member's step is the same.

    ``solve_only``: the solver raises ``StageEnd`` once ``final`` is set, so nothing the
    caller computes from the solve (Hessian, covariances, diagnostics) is traced: a stage whose
    members mostly keep running needs only their states (``staged`` catches it).
    """

    def __init__(self, iterations: Any, state: Any = None, axis_name: Any = None, solve_only: bool = False):
        self.iterations = None if iterations is None else int(iterations)
        self.state, self.axis_name, self.solve_only = state, axis_name, bool(solve_only)
        self.final: Any = None
        self.used = False


class StageEnd(BaseException):
    """Raised by ``trust_region_newton`` at trace time to end a ``solve_only`` stage (a
    ``BaseException``: a member's own ``except Exception`` must not swallow it)."""


# the innermost ``staged`` request (a stack: traces do not nest stages, but are re-entrant)
_STAGES: list = []


@contextlib.contextmanager
def staged(iterations: Any, state: Any = None, axis_name: Any = None, solve_only: bool = False):
    """While tracing inside this context, the first ``trust_region_newton`` call (only that one:
    a solver called later, or inside ``fun``, runs as usual) starts from ``state`` when given and
    stops after ``iterations`` loop passes; yields the ``Stage`` whose ``final`` it sets. With
    ``solve_only`` the code after that call is not traced (the context ends there, see
    ``Stage``); the solver must then be called in the context's own trace (not inside a
    transformation of it), as ``final`` is read there."""
    stage = Stage(iterations, state, axis_name, solve_only)
    _STAGES.append(stage)
    try:
        yield stage
    except StageEnd:
        pass
    finally:
        _STAGES.pop()


class _TRState(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    hess: jax.Array
    radius: jax.Array
    scale: jax.Array  # D: trust region is ||D s|| <= radius (More's diagonal scaling)
    iterations: jax.Array
    status: jax.Array
    step: jax.Array  # trial step proposed from this state, evaluated next iteration
    predicted: jax.Array  # reduction the quadratic model predicts for ``step``
    decrement: jax.Array  # diagonally preconditioned gradient measure at x (see the loop)
    resolved: jax.Array  # stopped by the small-Newton-step test
    expand: jax.Array  # multiple of the Newton step proposed in ``step`` (1: an ordinary step)
    newton: jax.Array  # the (scaled) Newton step at x, to recognise a ridge at the next point
    ridge_count: jax.Array  # consecutive accepted points with the ridge signature
    ridge_step: jax.Array
    edge_lead: jax.Array  # transformed coordinate that moved most in the current run (-1: none)
    edge_travel: jax.Array  # signed distance it travelled over the run (sustained gains)
    edge_gain: jax.Array  # the gain of the last accepted step
    edge_step: jax.Array  # the last step of the run
    edge_diag: jax.Array  # |diag H| where the run began
    aux: Any = None  # what ``fun`` carries from the last accepted point (``aux0``), else None


def newton_decrement(grad: jax.Array, hess: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(g' H^-1 g, H positive definite)`` via Cholesky; the decrement is ``inf`` if not PD."""
    dec, pd, _ = newton_step(grad, hess)
    return dec, pd


def newton_step(grad: jax.Array, hess: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(g' H^-1 g, H positive definite, -H^-1 g)`` from one Cholesky factorisation.

    Where ``H`` is not positive definite the decrement is ``inf`` and the step is zero.
    """
    return _cholesky_newton(grad, hess)[:3]


def _cholesky_newton(grad, hess):
    """``newton_step`` plus ``min_i L_ii^2 / H_ii``: the smallest share of a coordinate's
    curvature not explained by the coordinates before it (``~1/condition`` of the scaled
    Hessian; rounding level for an exactly singular ``H`` that Cholesky still passes)."""
    chol = jnp.linalg.cholesky(hess)
    pd = jnp.all(jnp.isfinite(chol))
    safe = jnp.where(pd, chol, jnp.eye(hess.shape[0], dtype=hess.dtype))
    half = jax.scipy.linalg.solve_triangular(safe, grad, lower=True)
    step = -jax.scipy.linalg.solve_triangular(safe, half, lower=True, trans=1)
    diag = jnp.abs(jnp.diag(hess))
    pivot = jnp.min(jnp.diag(safe) ** 2 / jnp.where(diag > 0, diag, 1.0))
    return jnp.where(pd, jnp.dot(half, half), jnp.inf), pd, jnp.where(pd, step, 0.0), jnp.where(pd, pivot, 0.0)


def _pseudo_newton_step(grad: jax.Array, hess: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(d, g' H^+ g, H >= 0 to rounding)``: the Newton step on the directions of the scaled
    Hessian whose eigenvalue is resolved (above ``ESCAPE_MIN_CURVATURE`` of the largest)."""
    diag = jnp.abs(jnp.diag(hess))
    scale = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    lam, V = jnp.linalg.eigh(hess / jnp.outer(scale, scale))
    top = jnp.max(jnp.abs(lam))
    keep = lam > ESCAPE_MIN_CURVATURE * top
    gt = V.T @ (grad / scale)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    d = (V @ (-gt * inv)) / scale
    psd = lam[0] > -jnp.sqrt(jnp.finfo(hess.dtype).eps) * top
    return d, jnp.sum(gt * gt * inv), psd & jnp.all(jnp.isfinite(lam))


def escape_test(
    fun: Callable[[jax.Array], jax.Array], x: jax.Array, grad: jax.Array, hess: jax.Array, value: jax.Array,
    unit: jax.Array | float = 1.0, hess_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Is ``x`` a finite minimum, or a point on a ridge that keeps descending towards infinity?

    At a regular minimum the Newton step ``d = -H^-1 g`` is tiny and the curvature along it,
    ``c(t) = d' H(x + t d) d``, hardly changes over the step. Where the minimum lies at infinity
    (complete separation: ``f ~ exp(-t)``), the objective, its gradient and its curvature all
    decay together, the Newton step stays of unit size however long the solver runs, and
    ``c(1) / c(0) ~ exp(-1)``: the quadratic model never becomes valid. Flagged when the
    remaining gain ``g' H^-1 g / 2`` is negligible (below ``RIDGE_GAIN (unit + |f|)``: the
    Newton step is then a small fraction of a standard error, over which a regular likelihood's
    curvature hardly changes, so a slowly converging fit is not mistaken for it) and the ratio is below
    ``ESCAPE_RATIO``. Costs one forward-over-forward directional derivative, or one call of
    ``hess_fn`` (``fun``'s Hessian at a point, where the caller has a cheaper one than JAX's
    derivatives of ``fun``: the one-factor Laplace marginal's written out per group).

    Returns:
        ``(escaping, ratio, d)``: a bool, ``c(1) / c(0)`` (NaN where ``H`` is not positive
        semi-definite or the curvature along ``d`` is not resolved) and the Newton step (on
        the resolved directions where ``H`` is singular).
    """
    dec, pd, d = newton_step(grad, hess)
    # An exactly singular H (a duplicated separating column: a flat direction beside the
    # ridge) has no Cholesky factor; the step on its resolved directions (pseudo-inverse) still
    # shows the ridge. Only where H is positive semi-definite to rounding: a clearly negative
    # direction is a saddle, not a ridge.
    d, dec, pd = lax.cond(
        pd, lambda: (d, dec, pd), lambda: _pseudo_newton_step(grad, after(hess, dec))
    )
    c0 = jnp.dot(d, hess @ d)

    def slope(y):
        return jax.jvp(fun, (y,), (d,))[1]

    c1 = jax.jvp(slope, (x + d,), (d,))[1] if hess_fn is None else jnp.dot(d, hess_fn(x + d) @ d)
    # The curvature along d must be resolved, not rounding: along an exactly flat direction
    # (collinear regressors) H d is cancellation noise and c(1)/c(0) a ratio of two noises
    # (5e-15 measured, which read as a ridge). Unit-free: the Rayleigh quotient of the
    # unit-diagonal scaled Hessian along d, whose largest eigenvalue is at least 1.
    d_scaled = d * jnp.sqrt(jnp.abs(jnp.diag(hess)))
    resolved = c0 > ESCAPE_MIN_CURVATURE * jnp.dot(d_scaled, d_scaled)
    ratio = jnp.where(pd & resolved, c1 / jnp.where(c0 > 0, c0, 1.0), jnp.nan)
    negligible = 0.5 * dec <= RIDGE_GAIN * (unit + jnp.abs(value))
    escaping = pd & resolved & negligible & (ratio < ESCAPE_RATIO)
    return escaping, ratio, d


def _subproblem(g: jax.Array, H: jax.Array, radius: jax.Array) -> jax.Array:
    """Solve min g's + s'Hs/2 subject to ||s|| <= radius exactly, via an eigendecomposition.

    The solution is ``s(mu) = -(H + mu I)^-1 g`` with the smallest ``mu >= max(0, -lambda_min)``
    giving ``||s|| <= radius``; ``||s(mu)||`` decreases in ``mu``, so ``mu`` is found by bisection
    on a log scale (a fixed number of steps keeps the loop vmappable; 48 halvings of a log-range
    below ``ln(1e300)`` leave ``mu`` within 3e-12 relative, far inside what a trust region
    needs). In the "hard case" (``g`` orthogonal to the most negative eigenvector) the step is
    completed along that eigenvector.
    """
    lam, V = jnp.linalg.eigh(H)
    gt = V.T @ g
    dtype = g.dtype
    tiny = jnp.finfo(dtype).tiny
    eps = jnp.finfo(dtype).eps

    def step_norm(mu):
        return jnp.sqrt(jnp.sum((gt / (lam + mu)) ** 2))

    lam_min = lam[0]
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), tiny)
    lo = jnp.maximum(0.0, -lam_min) + eps * scale  # smallest admissible shift
    newton_ok = (lam_min > eps * scale) & (step_norm(0.0) <= radius)
    hi = jnp.maximum(lo, 0.0) + jnp.linalg.norm(g) / radius + scale  # ||s(hi)|| <= radius

    def bisect(_, bounds):
        a, b = bounds
        mid = jnp.sqrt(jnp.maximum(a, tiny) * b)
        too_long = step_norm(mid) > radius
        return jnp.where(too_long, mid, a), jnp.where(too_long, b, mid)

    a, b = lax.fori_loop(0, 48, bisect, (lo, hi))
    mu = jnp.where(step_norm(lo) <= radius, lo, b)
    mu = jnp.where(newton_ok, 0.0, mu)
    s_t = -gt / (lam + mu)
    s_t = jnp.where(jnp.isfinite(s_t), s_t, 0.0)
    # hard case: the shifted step is shorter than the radius at the smallest shift; fill up the
    # remaining length along the eigenvector of the most negative eigenvalue.
    short = radius**2 - jnp.sum(s_t**2)
    hard = (~newton_ok) & (lam_min < 0.0) & (short > 0.0)
    s_t = s_t.at[0].add(jnp.where(hard, jnp.sqrt(jnp.maximum(short, 0.0)), 0.0))
    return V @ s_t


def trust_region_newton(
    fun: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    x0: jax.Array,
    *,
    maxiter: int = 200,
    rtol: float | None = None,
    max_step: jax.Array | None = None,
    unit: jax.Array | float = 1.0,
    aux0: Any = None,
    newton_start: bool = True,
) -> SolverResult:
    """Minimise with exact Newton steps inside a trust region, to machine precision.

    Args:
        fun: ``x -> (value, grad, hess)`` of the objective (one compiled evaluation).
        x0: ``Float[Array, "p"]`` starting point.
        maxiter: maximum number of trust-region iterations (each one ``fun`` evaluation).
        rtol: optional early stop: once half the squared Newton decrement ``g' H^-1 g / 2``
            (the objective still to gain, by the quadratic model) is below
            ``rtol * (1 + |value|)`` at a positive-definite Hessian, the solve stops with status
            ``APPROXIMATE`` (not ``CONVERGED``: the point is ``sqrt(g' H^-1 g)`` standard errors
            from the optimum, 0.6 for ``rtol=1e-3`` on a log-likelihood of -200), unless the
            regular tests end it at the same iteration.
        max_step: optional ``(p,)`` largest move of each coordinate in one step (``inf`` where
            none; ``MAX_TRANSFORMED_STEP`` for log/logit coordinates). A longer trial step is
            shortened along its direction (the quadratic model still predicts a gain there).
            Accepted steps whose gains do not fall off (each at least half the previous),
            carrying one such coordinate ``EDGE_TRAVEL`` units in one direction while some
            curvature grew ``EDGE_CURVATURE_GROWTH``-fold, stop the solve with status
            ``UNBOUNDED``: the objective falls without bound along that path (``edge_step``).
        aux0: optional pytree carried from accepted point to accepted point: with it ``fun`` is
            ``(x, aux) -> (value, grad, hess, aux_new)``, called with the ``aux`` of the last
            accepted point (``aux0`` at the start), and ``aux_new`` is kept where the trial
            point is accepted. A Laplace marginal carries its random effects' modes this way, so
            each inner maximisation starts from the previous outer iterate's (``_laplace``).
        unit: the ``1`` of every ``1 + |value|`` below (the objective's resolution where it is
            near 0), in ``fun``'s units: 1 for a log-likelihood on its own scale; the caller's
            objective scale where it has divided ``fun`` by one (``_problem._objective_scale``:
            ``1e-100 * loglik`` solved as ``loglik``, its tests as ``1e-100 (1 + |loglik|)``
            would be, so the fit neither stops at the start nor crawls).
        newton_start: at a start where ``H`` is positive definite, try the whole Newton step
            first (the initial region is widened to hold it); False keeps the default region
            of ``sqrt(p)`` marginal SDs (``fit``'s Levenberg-Marquardt stage, see there).

    Returns:
        ``SolverResult``; ``status`` is a ``Status`` code.

    Far from the optimum, steps whose actual reduction is below 1e-4 of the predicted one are
    rejected and the region shrinks, so indefinite Hessians (saddles) and wild regions are
    handled; a non-finite trial value is a rejection, not a failure. Near the optimum the
    predicted reduction falls below what the objective can resolve, so the ratio test is
    noise: a step is then accepted when it cuts the gradient measure ``sum(g_i^2/|H_ii|)/2``
    tenfold (Newton's quadratic convergence does, by far), and the solve stops when no step
    does (the rounding floor): ``CONVERGED`` if the Hessian is positive definite and
    ``g' H^-1 g / 2 <= 1e4 * eps * (1 + |value|)`` there, ``SINGULAR`` if the gradient is at
    rounding level but the Hessian is singular (a flat valley of optima), ``STALLED``
    otherwise. Regular problems thus end with the gradient at rounding level; most stop one
    step earlier, once the Newton step would move no coordinate by more than ``XTOL`` of its
    size at a well-conditioned Hessian (``resolved``).

    Where the minimum lies at infinity on the unconstrained scale (separation, a variance
    creeping to 0 on the log scale), Newton steps repeat themselves along a ridge; such steps
    are lengthened (doubled, up to where the rounding floor is expected) and the ridge is
    reported in ``SolverResult.ridge`` for ``_diagnostics.escape_info``.
    """
    dtype = x0.dtype
    eps = jnp.finfo(dtype).eps
    floor_tol = 1e4 * eps
    p = x0.shape[0]
    stage = _STAGES[-1] if _STAGES and not _STAGES[-1].used else None
    if stage is not None:
        stage.used = True

    def finite(value, grad, hess):
        return jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(hess))

    def early(value, dec, pd):
        if rtol is None:
            return jnp.zeros((), bool)
        return pd & (0.5 * dec <= rtol * (unit + jnp.abs(value)))

    # ``fun`` appears once in the loop body and nowhere else, so it is compiled once: the first
    # pass evaluates the starting point (a zero "step" that is accepted unconditionally).
    zero = jnp.zeros((), dtype)
    state = _TRState(
        x=x0, value=jnp.asarray(jnp.inf, dtype), grad=jnp.zeros_like(x0),
        hess=jnp.eye(p, dtype=dtype), radius=jnp.asarray(jnp.sqrt(p), dtype),
        scale=jnp.ones_like(x0), iterations=jnp.asarray(-1, jnp.int32),
        status=jnp.asarray(Status.RUNNING, jnp.int32), step=jnp.zeros_like(x0),
        predicted=zero, decrement=jnp.asarray(jnp.inf, dtype), resolved=jnp.zeros((), bool),
        expand=jnp.ones((), dtype), newton=jnp.zeros_like(x0),
        ridge_count=jnp.zeros((), jnp.int32), ridge_step=jnp.zeros_like(x0),
        edge_lead=jnp.asarray(-1, jnp.int32), edge_travel=zero, edge_gain=zero,
        edge_step=jnp.zeros_like(x0), edge_diag=jnp.zeros_like(x0), aux=aux0,
    )
    # no finite cap (every parameter on its own scale): the program is the uncapped one
    cap = None
    if max_step is not None and np.isfinite(np.asarray(max_step)).any():
        cap = jnp.broadcast_to(jnp.asarray(max_step, dtype), x0.shape)

    if stage is not None and stage.state is not None:
        state = stage.state  # resumed where the previous stage stopped (aux included)
    limit = None if stage is None or stage.iterations is None else state.iterations + stage.iterations
    axis_name = None if stage is None else stage.axis_name

    def cond(s):
        if limit is None:
            return s.status == Status.RUNNING
        return (s.status == Status.RUNNING) & (s.iterations < limit)

    def gradient_measure(grad, hess):
        # 0.5 * sum(g_i^2 / |H_ii|): the decrement with a diagonal preconditioner. Unlike
        # g' H^-1 g it stays meaningful where H is singular, e.g. along a flat valley.
        d = jnp.abs(jnp.diag(hess))
        return 0.5 * jnp.sum(grad**2 / jnp.where(d > 0, d, 1.0))

    def body(s):
        first = s.iterations < 0
        if aux0 is None:
            v1, g1, h1 = fun(s.x + s.step)
        else:
            v1, g1, h1, a1 = fun(s.x + s.step, s.aux)
        ok1 = finite(v1, g1, h1)
        m_new = gradient_measure(g1, h1)
        rho = jnp.where(ok1 & (s.predicted > 0), (s.value - v1) / s.predicted, -jnp.inf)
        near = jnp.abs(s.predicted) <= 1e3 * eps * (unit + jnp.abs(s.value))
        # Near the optimum Newton's method converges quadratically; a step that cuts the
        # gradient measure by less than 10x is crawling (e.g. a variance creeping towards its
        # bound at 0), and further steps would only spend iterations: treat it as the floor.
        improves = ok1 & (m_new < 0.1 * s.decrement)
        # an expanded step along a ridge (see below) lies beyond the quadratic model's minimum,
        # so the ratio test does not apply: it is accepted if it lowers the objective at all
        expanded = s.expand > 1.0
        accept = first | jnp.where(
            expanded, ok1 & (v1 < s.value), jnp.where(near, improves, rho > 1e-4)
        )
        znorm = jnp.linalg.norm(s.scale * s.step)
        # A step cut short by the region whose predicted gain is below what f resolves, far from
        # stationarity (an extreme start, e.g. a Poisson coefficient of 50: curvature exp(50),
        # so one marginal SD is 1e-22): the trial says nothing, and shrinking the region further
        # would stall. Widen it. (Near an optimum the gradient measure is at rounding level.)
        blind = (~first & (znorm >= 0.99 * s.radius) & near
                 & (s.decrement > 1e-6 * (unit + jnp.abs(s.value))))
        radius = jnp.where(
            blind,
            1e4 * s.radius,
            jnp.where(
            first | expanded | (accept & near),
            s.radius,
            jnp.where(
                rho < 0.25,
                0.25 * jnp.minimum(znorm, s.radius),
                jnp.where((rho > 0.75) & (znorm > 0.99 * s.radius), 3.0 * s.radius, s.radius),
            ),
        ))
        x = jnp.where(accept, s.x + s.step, s.x)
        value = jnp.where(accept, v1, s.value)
        grad = jnp.where(accept, g1, s.grad)
        hess = jnp.where(accept, h1, s.hess)
        measure = jnp.where(accept, m_new, s.decrement)
        dec, pd, newton, pivot = _cholesky_newton(grad, hess)
        new_scale = jnp.sqrt(jnp.abs(jnp.diag(hess)))
        D = jnp.where(first, jnp.maximum(new_scale, jnp.sqrt(eps)), jnp.maximum(s.scale, new_scale))
        D = jnp.where(jnp.isfinite(D), D, s.scale)
        it = s.iterations + 1
        resolution = unit + jnp.abs(value)
        # Rounding floor: near the optimum and no step lowers the gradient measure, or the
        # region has shrunk below the resolution of x.
        floor = ~first & ~blind & (
            (near & ~accept) | (radius < 10 * eps * (1.0 + jnp.linalg.norm(D * x))) | (measure == 0)
        )
        at_optimum = pd & (0.5 * dec <= floor_tol * resolution)
        # The Newton step would move no coordinate by more than XTOL of its size (or of its
        # marginal scale 1/sqrt(H_ii) near 0): x is already that close to the optimum, so stop
        # without the polishing steps the rounding-floor test needs. Only for a Hessian that is
        # clearly nonsingular (scaled condition below ~1e12); otherwise the floor test decides
        # between CONVERGED and SINGULAR as before.
        # (a marginal SD per ``unit`` of the objective: for a rescaled objective, per unit of
        # the caller's log-likelihood; 1/sqrt(H_ii) of an objective divided by a poor start's
        # 1e75 was 1e36 "SDs", and the test passed at once, 60 units from the optimum)
        marginal = jnp.sqrt(unit) / jnp.maximum(new_scale, jnp.finfo(dtype).tiny)
        resolved = (
            ok1 & pd & (pivot > 1e-12) & jnp.all(jnp.abs(newton) <= XTOL * (jnp.abs(x) + marginal))
        )
        stationary = measure <= floor_tol * resolution
        # A run of accepted steps, gains not falling off, that carries one transformed
        # coordinate ever further in one direction: the objective decreases without bound
        # along the path (see ``EDGE_TRAVEL``).
        edge = jnp.zeros((), bool)
        edge_lead, edge_travel, edge_gain = s.edge_lead, s.edge_travel, s.edge_gain
        edge_step, edge_diag = s.edge_step, s.edge_diag
        if cap is not None:
            moved = accept & ~first
            gain = s.value - v1
            move = jnp.where(jnp.isfinite(cap), s.step, 0.0)
            lead = jnp.argmax(jnp.abs(move)).astype(jnp.int32)
            along = move[lead]
            sustained = (
                moved & (gain >= 0.5 * s.edge_gain) & (gain > RIDGE_GAIN * resolution) & (lead == s.edge_lead)
                & (along * s.edge_travel > 0)
            )
            fresh = moved & ~sustained
            edge_lead = jnp.where(moved, lead, s.edge_lead)
            edge_travel = jnp.where(sustained, s.edge_travel + along, jnp.where(fresh, along, s.edge_travel))
            edge_gain = jnp.where(moved, gain, s.edge_gain)
            edge_step = jnp.where(moved, s.step, s.edge_step)
            edge_diag = jnp.where(fresh, jnp.abs(jnp.diag(s.hess)), s.edge_diag)
            # (a curvature of exactly 0 at the run's start does not make any later one "grown")
            floor_diag = jnp.maximum(edge_diag, eps * jnp.max(edge_diag))
            grown = jnp.any(jnp.abs(jnp.diag(hess)) > EDGE_CURVATURE_GROWTH * floor_diag)
            # (or half that where the solve hits the rounding floor on the way: the collapse
            # has reached the rounding of the data, e.g. a sd of 1e-15 at an observation of 1)
            edge = grown & (
                (jnp.abs(edge_travel) >= EDGE_TRAVEL) | (floor & (jnp.abs(edge_travel) >= 0.5 * EDGE_TRAVEL))
            )
        status = jnp.where(
            first & ~ok1,
            Status.NONFINITE,
            jnp.where(
                edge,
                Status.UNBOUNDED,
                jnp.where(
                (floor & at_optimum) | resolved,
                Status.CONVERGED,
                jnp.where(
                early(value, dec, pd),
                Status.APPROXIMATE,
                jnp.where(
                    floor,
                    jnp.where(stationary, Status.SINGULAR, Status.STALLED),
                    jnp.where(
                        it >= maxiter,
                        jnp.where(maxiter <= 0, Status.NOT_RUN, Status.MAX_ITERATIONS),
                        Status.RUNNING,
                    ),
                ),
            ))),
        )
        # the next trial step, from the trust-region subproblem in scaled variables z = D s
        gz, Hz = grad / D, hess / jnp.outer(D, D)
        # The Newton step solves the subproblem when H is positive definite and the step fits
        # the region (most iterations near the optimum); only otherwise is an eigendecomposition
        # needed. Under ``vmap`` the ``cond`` becomes a select and both branches run.
        z_newton = D * newton
        # At a start where H is positive definite the first trial is the whole Newton step
        # (Dennis & Schnabel's initial radius: the Newton step's length), not one cut to the
        # default region of sqrt(p) marginal SDs: from beta = 0 a regression's Newton step is
        # many SDs long (its t-statistics), and growing the region 3x per iteration from
        # sqrt(p) cost 3 extra Hessians on a 36-parameter multinomial logit (9 iterations
        # instead of 6) and one on the zoo's logistic. A poor step is rejected by the ratio
        # test as before (the region then shrinks to a quarter of it); ``max_step`` still
        # caps transformed coordinates.
        if newton_start:
            radius = jnp.where(first & pd, jnp.maximum(radius, jnp.linalg.norm(z_newton)), radius)
        fits = pd & (jnp.linalg.norm(z_newton) <= radius)
        if axis_name is None:
            z = lax.cond(
                fits,
                lambda: z_newton,
                lambda: _subproblem(gz, after(Hz, dec, pd), radius),  # eigh after the Cholesky: see ``after``
            )
        else:  # batched: the subproblem only in iterations where some running member needs it (``Stage``)
            need = lax.psum((cond(s) & ~fits).astype(jnp.int32), axis_name) > 0
            z = lax.cond(
                need,
                lambda: jnp.where(fits, z_newton, _subproblem(gz, after(Hz, dec, pd), radius)),
                lambda: z_newton,
            )
        z = jnp.where(jnp.all(jnp.isfinite(z)), z, 0.0)
        if cap is not None:
            over = jnp.max(jnp.abs(z / D) / cap)
            z = jnp.where(over > 1.0, z / jnp.where(over > 1.0, over, 1.0), z)
        # Ridge: where the minimum lies at infinity or on a bound at infinity of the
        # unconstrained scale (separation; a variance -> 0 on the log scale), the objective
        # decays like exp(-t) along a line, every Newton step has the same length and direction,
        # and each removes only a fixed share (1 - 1/e) of what is left: ~30 iterations to
        # reach the rounding floor. Once the remaining gain is negligible (1e-6 of the
        # objective) and an accepted point's Newton step repeats the previous one (cosine >
        # 0.99, length within 2x; regular convergence shrinks it quadratically), the next trial
        # is that step doubled, then doubled again while this continues, but never longer than
        # the ridge model (a factor e per step) says the floor is away: stopping near where
        # plain Newton steps would have stopped keeps the last Hessian informative.
        prev = jnp.where(accept & ~first, s.newton, jnp.zeros_like(z))
        n_now, n_prev = jnp.linalg.norm(z_newton), jnp.linalg.norm(prev)
        cosine = jnp.dot(z_newton, prev) / jnp.maximum(n_now * n_prev, jnp.finfo(dtype).tiny)
        to_floor = jnp.log(jnp.maximum(0.5 * dec, jnp.finfo(dtype).tiny) / (1e3 * eps * resolution))
        signature = (
            pd & (cosine > 0.99) & (n_now > 0.5 * n_prev) & (n_now < 2.0 * n_prev)
            & (0.5 * dec <= RIDGE_GAIN * resolution)
        )
        ridge = signature & fits & (to_floor >= 2.0)
        moved = accept & ~first
        ridge_count = jnp.where(moved, jnp.where(signature, s.ridge_count + 1, 0), s.ridge_count)
        ridge_step = jnp.where(moved & signature, newton, s.ridge_step)
        expand = jnp.where(
            ridge, jnp.minimum(2.0 * jnp.where(expanded & accept, s.expand, 1.0), to_floor), 1.0
        )
        z = jnp.where(ridge, expand * z_newton, z)
        predicted = -(jnp.dot(gz, z) + 0.5 * jnp.dot(z, Hz @ z))
        predicted = jnp.where(ridge, 0.5 * dec, predicted)  # what the Newton step itself offers
        return _TRState(
            x, value, grad, hess, radius, D, it, jnp.asarray(status, jnp.int32), z / D, predicted, measure,
            resolved & (status == Status.CONVERGED), expand, jnp.where(accept, z_newton, s.newton),
            ridge_count, ridge_step, edge_lead, edge_travel, edge_gain, edge_step, edge_diag,
            None if aux0 is None else jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), a1, s.aux),
        )

    if stage is not None and stage.iterations == 0 and stage.state is not None:
        # a results-only stage (``Stage``): the state comes from a stage in which the member
        # stopped, so the loop would run no pass; without it the program holds no loop body
        final = state
    else:
        final = lax.while_loop(cond, body, state)
    if stage is not None:
        stage.final = final
        if stage.solve_only:
            raise StageEnd
    unbounded = final.status == Status.UNBOUNDED
    moved = jnp.abs(final.edge_step) > AFFECTED_LOADING * jnp.max(jnp.abs(final.edge_step))
    grown = jnp.abs(jnp.diag(final.hess)) > EDGE_CURVATURE_GROWTH * jnp.maximum(
        final.edge_diag, eps * jnp.max(final.edge_diag))
    return SolverResult(
        final.x, final.value, final.grad, final.hess, final.iterations, final.status, final.resolved,
        final.ridge_count >= RIDGE_STEPS, final.ridge_step, jnp.where(unbounded, final.edge_step, 0.0),
        unbounded & (moved | grown), final.aux,
    )


def lbfgs_preconditioner(hess: jax.Array) -> jax.Array:
    """``P`` with ``P' H P = I`` for a positive-definite ``H`` (``P = L^-T``, ``H = L L'``);
    else the diagonal ``1 / sqrt|H_ii|`` (1 where ``H_ii`` is 0 or not finite).

    L-BFGS on ``z`` with ``x = x0 + P z`` sees the start's Hessian as the identity: one unit of
    ``z`` is one standard error (at the start's curvature) in every direction, so its first
    step is a Newton step and its curvature pairs need not learn the parameters' scales. Without
    it, covariates in their own units (age in years, income in thousands) give a scaled
    condition of ~1e5 and L-BFGS crawls (a 36-parameter multinomial logit: 1000 iterations and
    0.5 log-likelihood units short; preconditioned, 12 iterations, tests/test_messages.py allows 50).
    """
    p = hess.shape[0]
    eye = jnp.eye(p, dtype=hess.dtype)
    chol = jnp.linalg.cholesky(hess)
    pd = jnp.all(jnp.isfinite(chol))
    safe = jnp.where(pd, chol, eye)
    full = jax.scipy.linalg.solve_triangular(safe, eye, lower=True).T  # L^-T
    diag = jnp.abs(jnp.diag(hess))
    ok = (diag > 0) & jnp.isfinite(diag)
    scale = jnp.where(ok, 1.0 / jnp.sqrt(jnp.where(ok, diag, 1.0)), 1.0)
    return jnp.where(pd, full, jnp.diag(scale))


def lbfgs(
    value_and_grad: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    x0: jax.Array,
    *,
    maxiter: int = 1000,
    gtol: float | None = None,
    memory_size: int = 10,
    precondition: jax.Array | None = None,
    unit: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """L-BFGS (``optax.lbfgs`` with a zoom line search) in one ``lax.while_loop``.

    ``precondition``: a ``p x p`` matrix ``P`` (``lbfgs_preconditioner`` of the Hessian at
    ``x0``); L-BFGS then runs on ``z`` with ``x = x0 + P z``, and the gradient it sees and
    tests is ``P' grad``: per standard error where ``P' H P = I``, a unit-free test.
    Stops when ``max|P' grad| <= gtol * (unit + |value|)`` (``unit`` as in
    ``trust_region_newton``; default ``gtol``: ``sqrt(eps)``, about
    1.5e-8) or after ``maxiter`` iterations. Returns ``(x, value, iterations, status)``; the
    caller evaluates the exact Hessian at ``x`` for inference and the final optimality test.
    """
    dtype = x0.dtype
    gtol = jnp.sqrt(jnp.finfo(dtype).eps) if gtol is None else gtol
    P = jnp.eye(x0.shape[0], dtype=dtype) if precondition is None else precondition
    # imported here, not with autohess: optax and what it pulls in (absl, its contrib
    # optimisers) cost ~0.1 s of CPU in every fresh process, and only L-BFGS fits use it
    import optax

    opt = optax.lbfgs(memory_size=memory_size)

    def value_and_grad_z(z):
        v, g = value_and_grad(x0 + P @ z)
        return v, P.T @ g

    fun = lambda z: value_and_grad_z(z)[0]  # noqa: E731

    def small(value, grad):
        return jnp.max(jnp.abs(grad)) <= gtol * (unit + jnp.abs(value))

    z0 = jnp.zeros_like(x0)
    v0, g0 = value_and_grad_z(z0)
    init = (z0, opt.init(z0), v0, g0, jnp.asarray(0, jnp.int32))

    def cond(c):
        z, _, v, g, k = c
        return (k < maxiter) & ~small(v, g) & jnp.isfinite(v)

    def body(c):
        z, st, v, g, k = c
        updates, st = opt.update(g, st, z, value=v, grad=g, value_fn=fun)
        z = optax.apply_updates(z, updates)
        v, g = value_and_grad_z(z)
        return z, st, v, g, k + 1

    z, _, v, g, k = lax.while_loop(cond, body, init)
    status = jnp.where(
        ~jnp.isfinite(v), Status.NONFINITE, jnp.where(small(v, g), Status.CONVERGED, Status.MAX_ITERATIONS)
    )
    return x0 + P @ z, v, k, jnp.asarray(status, jnp.int32)
