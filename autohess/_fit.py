"""``fit``: maximum likelihood with exact derivatives, covariance and diagnostics.

The optimiser runs on the unconstrained scale inside one compiled ``lax.while_loop``
(``_solver.trust_region_newton``); inference (Hessian, scores, covariance, diagnostics) is then
computed on the natural scale in a second compiled program. Results are immutable pytrees.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import norm

from ._basis import fold_basis
from ._covariance import COV_TYPES, covariance, face_pseudo_inverse, restricted_inverse, scaled_eigenvectors
from ._config import compiler_options
from ._derivatives import (
    Hessian,
    _check_separable,
    _model_params,
    _model_weights,
    _objective,
    _raise_nonfinite_model,
    _split_obs,
    _symmetrize,
    hessian,
)
from ._diagnostics import AFFECTED_LOADING, Diagnostics, Escape, compute_diagnostics, escape_info
from ._model import Model
from ._pandas import is_pandas, require_pandas
from ._report import AT_OPTIMUM_SE, DiagnosticReport, InferenceWarning, summary
from ._params import Labels, element_labels, path_name
from ._solver import (
    MAX_TRANSFORMED_STEP,
    SolverResult,
    Status,
    after,
    lbfgs,
    lbfgs_preconditioner,
    trust_region_newton,
)
from ._validation import UNTRACEABLE, not_traceable

__all__ = ["FitResult", "fit", "evaluate", "delta_method", "DeltaResult", "InferenceWarning"]

METHODS = ("trust-region", "lbfgs", "gauss-newton")


def _sqrt_diag(cov: jax.Array) -> jax.Array:
    if isinstance(cov, jax.core.Tracer):
        return jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
    # on the host: as a compiled program, p square roots cost 40-100 ms of compilation in every
    # fresh process (the first ``res.bse``); a negative or NaN variance gives NaN, as jnp.sqrt
    d = np.diagonal(np.asarray(cov), axis1=-2, axis2=-1)
    return jax.device_put(np.where(d >= 0, np.sqrt(np.abs(d)), np.nan))


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Maximum-likelihood estimate with covariance and diagnostics (natural scale).

    Statsmodels-style views: ``params``, ``bse``, ``tvalues``, ``pvalues`` are pytrees shaped
    like the model's parameters; ``*_flat`` are the same in ``labels`` order;
    ``cov_params()`` is the ``p x p`` covariance; ``conf_int(alpha)`` gives Wald intervals.
    ``status`` is a readable reason, ``status_code`` the ``Status`` code.
    """

    params_flat: jax.Array
    cov: jax.Array
    llf: jax.Array
    gradient: jax.Array  # of the negative log-likelihood, natural scale
    hessian_matrix: jax.Array  # of the negative log-likelihood, natural scale
    status_code: jax.Array
    iterations: jax.Array
    diagnostics_data: Diagnostics
    model: Model
    cov_type: str
    method: str
    weights: Optional[jax.Array] = None  # the frequency weights of the fit, if any
    status_note: str = ""  # a batch member refused before fitting: why (see BatchResult.member)
    #: random-effects fits on the crossed and dense paths: the conditional modes ``(G, q)`` at
    #: ``params_flat`` as the solve found them, where ``random`` starts its inner solve
    #: (``None``: from 0)
    random_modes: Optional[jax.Array] = None

    # -- statsmodels-style views --------------------------------------------------------------
    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    @property
    def nobs(self) -> Optional[int]:
        """Number of observations (rows of data; with random effects, not the groups)."""
        return self.model.n_observations

    @property
    def random(self) -> dict:
        """Random-effects models: ``{name: RandomEffectEstimate}``, the conditional modes of each
        random effect at the estimate with ``se`` (including the parameters' uncertainty, as
        TMB's ``sdreport``) and ``se_conditional`` (given the parameters), shaped like it."""
        if self.model.laplace is None:
            raise AttributeError(f"model {self.model.name!r} has no random effects (declare them with ah.Model(..., random=...))")
        from ._laplace import random_effects

        return random_effects(self.model, self.params_flat, self.cov, self.random_modes)

    @property
    def df_modelwc(self) -> int:
        """Number of estimated parameters (statsmodels' name: model degrees of freedom with
        the constant), the ``k`` of ``aic`` and ``bic``."""
        return len(self.model.labels)

    @property
    def nobs_effective(self) -> float:
        """Sample size for ``bic`` and ``df_resid``: the number of observations, or the sum of
        the frequency weights (a row with weight 2 counts as two rows, as if repeated)."""
        if self.weights is not None and self.model.laplace is not None:
            # weights per group: a group of n_g rows with weight w counts as w n_g rows
            codes = np.asarray(self.model.data[self.model.laplace.structure.groups])
            sizes = np.bincount(codes, minlength=self.model.nobs)
            return float(np.sum(np.asarray(self.weights) * sizes))
        if self.weights is not None:
            return float(np.sum(np.asarray(self.weights)))
        if self.nobs is None:
            raise ValueError(
                "the number of observations is unknown: this Model's loglik returns a scalar "
                "(per_observation=False), so bic and df_resid are not defined; aic is"
            )
        return float(self.nobs)

    @property
    def df_resid(self) -> float:
        """``nobs_effective - df_modelwc``."""
        return self.nobs_effective - self.df_modelwc

    @property
    def aic(self) -> float:
        """Akaike information criterion ``-2 llf + 2 k`` (``k = df_modelwc``)."""
        return -2.0 * float(np.asarray(self.llf)) + 2.0 * self.df_modelwc

    @property
    def bic(self) -> float:
        """Bayesian information criterion ``-2 llf + k log(n)`` (``n = nobs_effective``)."""
        return -2.0 * float(np.asarray(self.llf)) + self.df_modelwc * float(np.log(self.nobs_effective))

    @property
    def converged(self) -> bool:
        return bool(np.asarray(self.status_code) == Status.CONVERGED)

    @property
    def status(self) -> str:
        if self.status_note:
            return self.status_note
        return Status(int(np.asarray(self.status_code))).message

    @property
    def hessian(self) -> Hessian:
        return Hessian(self.hessian_matrix, self.model.labels)

    @property
    def params(self) -> Any:
        return self.model.spec.unflatten(self.params_flat)

    @property
    def bse_flat(self) -> jax.Array:
        return _sqrt_diag(self.cov)

    @property
    def bse(self) -> Any:
        return self.model.spec.unflatten(self.bse_flat)

    @property
    def tvalues_flat(self) -> jax.Array:
        return self.params_flat / self.bse_flat

    @property
    def tvalues(self) -> Any:
        return self.model.spec.unflatten(self.tvalues_flat)

    @property
    def pvalues_flat(self) -> jax.Array:
        return 2.0 * norm.sf(jnp.abs(self.tvalues_flat))

    @property
    def pvalues(self) -> Any:
        return self.model.spec.unflatten(self.pvalues_flat)

    def cov_params(self, *, frame: bool = False) -> Any:
        """``p x p`` covariance of the estimate, rows/columns in ``labels`` order; with
        ``frame=True`` a pandas DataFrame whose index and columns are the labels
        (``beta[age]``; needs pandas)."""
        if not frame:
            return self.cov
        pd = require_pandas("cov_params(frame=True)", "cov_params() (an array, rows and columns in res.labels order)")
        labels = list(self.labels)
        return pd.DataFrame(np.asarray(self.cov, dtype=np.float64), index=labels, columns=labels)

    def summary_frame(self, alpha: float = 0.05) -> Any:
        """The coefficient table as a pandas DataFrame indexed by label: ``coef``, ``std err``,
        ``z``, ``P>|z|`` and the Wald interval ``[alpha/2`` / ``1-alpha/2]`` (needs pandas)."""
        pd = require_pandas("summary_frame()", "summary() (a text table) or params_flat / bse_flat with res.labels")
        ci = np.asarray(self.conf_int(alpha, flat=True), dtype=np.float64)
        return pd.DataFrame(
            {
                "coef": np.asarray(self.params_flat, dtype=np.float64),
                "std err": np.asarray(self.bse_flat, dtype=np.float64),
                "z": np.asarray(self.tvalues_flat, dtype=np.float64),
                "P>|z|": np.asarray(self.pvalues_flat, dtype=np.float64),
                f"[{alpha / 2:g}": ci[:, 0],
                f"{1 - alpha / 2:g}]": ci[:, 1],
            },
            index=list(self.labels),
        )

    def conf_int(self, alpha: float = 0.05, *, flat: bool = False, scale: str = "natural", frame: bool = False) -> Any:
        """Wald intervals: ``(p, 2)`` if ``flat``, a pandas DataFrame indexed by label with
        columns ``lower`` and ``upper`` if ``frame`` (needs pandas), else a pytree whose leaves
        have a trailing axis of 2 (lower, upper).

        ``scale="natural"`` (default, as statsmodels): ``params -/+ z_{1-alpha/2} * bse``; for a
        parameter near a bound of its domain this can leave the domain (a variance interval
        reaching below 0). ``scale="unconstrained"``: the Wald interval of the unconstrained
        parameter ``u`` (standard error ``bse / |dx/du|``, the same delta method backwards)
        mapped through the transform, so it stays inside the domain: ``x exp(-/+ z bse / x)``
        for ``Positive``, a logit-scale interval for ``Interval``; ``Real`` parameters are
        unchanged. For likelihood-based intervals use ``ah.profile``.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if scale not in ("natural", "unconstrained"):
            raise ValueError(f"scale must be 'natural' or 'unconstrained', got {scale!r}")
        z = norm.ppf(1.0 - alpha / 2.0)
        if scale == "natural":
            lo, hi = self.params_flat - z * self.bse_flat, self.params_flat + z * self.bse_flat
        else:
            spec = self.model.spec
            u = spec.to_unconstrained(self.params_flat)
            dxdu = jax.jvp(spec.to_natural, (u,), (jnp.ones_like(u),))[1]  # elementwise transforms
            se_u = self.bse_flat / jnp.abs(dxdu)
            a, b = spec.to_natural(u - z * se_u), spec.to_natural(u + z * se_u)
            lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
        if frame:
            pd = require_pandas("conf_int(frame=True)", "conf_int(flat=True) (a (p, 2) array in res.labels order)")
            return pd.DataFrame(
                {"lower": np.asarray(lo, dtype=np.float64), "upper": np.asarray(hi, dtype=np.float64)},
                index=list(self.labels),
            )
        if flat:
            return jnp.stack([lo, hi], axis=-1)
        spec = self.model.spec
        return jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b], axis=-1), spec.unflatten(lo), spec.unflatten(hi))

    @property
    def diagnostics(self):
        """What the Hessian says about this estimate: numbers, problems found, suggestions."""
        return DiagnosticReport.from_result(self)

    def _warn(self) -> None:
        """``diagnostics.warn()``, skipping the report where a cheap check finds nothing."""
        if DiagnosticReport.may_have_problems(self):
            self.diagnostics.warn(stacklevel=4)  # the caller of fit/evaluate

    def summary(self) -> str:
        """A statsmodels-like table with a diagnostics footer."""
        return summary(self)

    def wald_test(self, r: Any, value: Any = None, *, use_f: bool = False):
        """Joint Wald test of ``r(params) = value`` (a ``(k, p)`` matrix, a row, or a function of
        the parameter pytree) with this fit's covariance; see ``ah.wald_test``."""
        from ._hypothesis_tests import wald_test

        return wald_test(self, r, value, use_f=use_f)

    def t_test(self, r: Any, value: Any = None):
        """One z test per restriction row (or per output of a function); see ``ah.t_test``."""
        from ._hypothesis_tests import t_test

        return t_test(self, r, value)

    def __repr__(self) -> str:
        return f"FitResult({self.model.name!r}, llf={float(np.asarray(self.llf)):.6g}, converged={self.converged}, cov_type={self.cov_type!r})"

    def plot(self, ax=None, **kwargs):
        """The diagnostics' picture: scaled eigenvalues of the Hessian with the problem
        directions named (``ah.plot.eigenvalues``; needs matplotlib). For random effects see
        ``ah.plot.random_effects(res)``."""
        from .plot import eigenvalues as draw

        return draw(self, ax, **kwargs)

    def _repr_html_(self) -> str:
        """``summary()`` as HTML tables (notebooks)."""
        from ._html import fit_summary

        return fit_summary(self)


jax.tree_util.register_dataclass(
    FitResult,
    data_fields=["params_flat", "cov", "llf", "gradient", "hessian_matrix", "status_code", "iterations", "diagnostics_data", "weights",
                 "random_modes"],
    meta_fields=["model", "cov_type", "method", "status_note"],
)


# ------------------------------------------------------------------------------------------
# Compiled pieces
# ------------------------------------------------------------------------------------------
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
    """
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


def _solve_program(model: Model, method: str, maxiter: int, rtol: Optional[float], chunk: Optional[int] = None) -> Callable:
    """One compiled program: start (natural) -> unconstrained solve -> natural-scale results.
    ``chunk``: the solver's derivatives accumulated over blocks of that many observations."""
    spec = model.spec
    mode = model.hessian_mode
    cap = _max_steps(spec)

    def solve(params, data, weights):
        model.trace_counts["fit"] += 1
        flat0 = spec.flatten(params, model.dtype)
        u0 = spec.to_unconstrained(flat0)
        start = None
        if model.laplace is not None and not model.laplace.structure.block_diagonal and method == "trust-region":
            from ._laplace import known_inner

            # the inner maximisation at the start, run once: the scale's marginal takes it, and
            # the first evaluation of the solve starts from its modes (``warm_started``)
            start = model.laplace.inner(spec.unflatten(flat0), data)
            with known_inner(start):
                scale = _objective_scale(model, flat0, data, weights)
        else:
            scale = _objective_scale(model, flat0, data, weights)
        unit = _solver_unit(scale)
        f = _unconstrained(model, data, weights, scale)
        if method in ("trust-region", "gauss-newton"):
            iterations = 0
            if method == "gauss-newton":
                # Levenberg-Marquardt steps to reach the basin, then exact Newton to finish: the
                # Gauss-Newton matrix is not the Hessian, so its own stopping test is not trusted.
                # (Its region starts at the default size: a whole first Gauss-Newton step lands
                # exactly on an exact fit's RSS = 0, where (n/2) log RSS is -inf.)
                lm = trust_region_newton(_gauss_newton_fn(model, data), u0, maxiter=maxiter, rtol=rtol, max_step=cap,
                                         newton_start=False)
                u0, iterations = lm.x, lm.iterations
            fun, aux0 = _unconstrained_value_grad_hess(model, data, weights, scale, mode, chunk), None
            if model.laplace is not None and not model.laplace.structure.block_diagonal:
                from ._laplace import warm_started

                fun, aux0 = warm_started(model.laplace, fun, lambda u: spec.unflatten(spec.to_natural(u)), data,
                                         u0.dtype, start)
            res = trust_region_newton(fun, u0, maxiter=maxiter, rtol=rtol, max_step=cap, unit=unit, aux0=aux0)
            x, value, grad, hess, ok = _natural_derivatives(
                spec, res.x, *_unscale(_weight_unit(weights), res.value, res.grad, res.hess, scale))
            # llf negated here and the flags fit branches on packed into one array: one host
            # read per fit instead of four, no host round trip for llf (~30 us with device_put)
            flags = jnp.stack([res.status, ok, res.resolved]).astype(jnp.int32)
            return x, iterations + res.iterations, res.status, (value, grad, hess, -value), flags, res, scale
        # one exact Hessian at the start, as a change of variables (``lbfgs_preconditioner``)
        _, _, h0 = _value_grad_hess_fn(f, mode)(u0)
        u, _, iterations, status = lbfgs(jax.value_and_grad(f), u0, maxiter=maxiter, precondition=lbfgs_preconditioner(h0),
                                         unit=unit)
        flags = jnp.stack([status, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)]).astype(jnp.int32)
        return spec.to_natural(u), iterations, status, None, flags, None, scale

    return jax.jit(solve, compiler_options=compiler_options())


def _max_steps(spec) -> np.ndarray:
    """Largest move per step of each unconstrained coordinate: ``MAX_TRANSFORMED_STEP`` on a
    log or logit scale (see there), none for a parameter on its own scale."""
    return np.where(spec.transformed, MAX_TRANSFORMED_STEP, np.inf)


def _escape_program(model: Model, at_point: bool = False) -> Callable:
    """``(solver result, data, weights) -> (status, Escape)``: ``_escape_status`` as its own
    compiled program, run by ``fit`` only after a solve that did not end quadratically (so
    regular fits neither compile nor run it). ``at_point``: ``(x, status, data, weights)``
    instead, for L-BFGS, which has no Hessian of its own (one is formed on the unconstrained
    scale at ``x``)."""
    spec = model.spec

    def run(res, data, weights, scale):
        return _escape_status(spec, model.dtype, _unconstrained(model, data, weights, scale), res, _solver_unit(scale))

    def run_at_point(x, status, data, weights, scale):
        f = _unconstrained(model, data, weights, scale)
        u = spec.to_unconstrained(x)
        value, grad, hess = _value_grad_hess_fn(f, model.hessian_mode)(u)
        res = SolverResult(u, value, grad, hess, jnp.zeros((), jnp.int32), status, jnp.zeros((), bool),
                           jnp.zeros((), bool), jnp.zeros_like(u), jnp.zeros_like(u), jnp.zeros(u.shape, bool))
        return _escape_status(spec, model.dtype, f, res, _solver_unit(scale))

    return jax.jit(run_at_point if at_point else run, compiler_options=compiler_options())


#: solver outcomes after which ``escape_test`` may turn the status into ``UNBOUNDED``; SINGULAR
#: too: on a quasi-separation ridge the last Hessians are singular to rounding.
_ESCAPE_CANDIDATES = (Status.CONVERGED, Status.STALLED, Status.MAX_ITERATIONS, Status.SINGULAR)


def _escape_status(spec, dtype, f: Callable, res, unit: Any = 1.0) -> tuple[jax.Array, Escape]:
    """The solver's status, ``UNBOUNDED`` where ``escape_info`` finds no finite maximum."""
    lower, upper = (jnp.asarray(b, dtype) for b in spec.bounds())  # numpy: no cached tracers
    to_infinity, escape = escape_info(
        f, res.x, res.grad, res.hess, res.value, lower, upper, res.ridge, res.ridge_step, unit
    )
    candidate = jnp.any(jnp.asarray(_ESCAPE_CANDIDATES) == res.status) & ~res.resolved
    escape = escape._replace(unbounded=escape.unbounded & candidate, to_bound=escape.to_bound & candidate)
    # the solver's own UNBOUNDED (a sustained fall along capped steps): its path and the
    # coordinates on it, whichever end of their domain they head to
    edge = res.status == Status.UNBOUNDED
    norm = jnp.linalg.norm(res.edge_step)
    escape = escape._replace(
        ratio=jnp.where(edge, jnp.nan, escape.ratio),
        direction=jnp.where(edge, res.edge_step / jnp.where(norm > 0, norm, 1.0), escape.direction),
        unbounded=jnp.where(edge, res.edge_involved, escape.unbounded),
        to_bound=escape.to_bound & ~edge,
    )
    return jnp.where(to_infinity & candidate, Status.UNBOUNDED, res.status).astype(jnp.int32), escape


def _gauss_newton_fn(model: Model, data: Any) -> Callable:
    """``u -> (f, grad f, G)`` for a least-squares model, ``f = (n/2) log RSS`` (up to a
    constant) and ``G = (n / RSS) J'J`` its Gauss-Newton matrix (``J``: Jacobian of the
    residuals with respect to ``u``). ``G`` is positive semi-definite everywhere and equals the
    Hessian at a zero-residual optimum: the trust region on it is Levenberg-Marquardt.
    """
    spec = model.spec

    def residuals(u):
        return model.residual_fn(spec.unflatten(spec.to_natural(u)), data)

    def fun(u):
        r = residuals(u)
        J = jax.jacfwd(residuals)(u)
        n = r.shape[0]
        rss = jnp.dot(r, r)
        value = 0.5 * n * (jnp.log(2.0 * jnp.pi * rss / n) + 1.0)
        return value, (n / rss) * (J.T @ r), (n / rss) * (J.T @ J)

    return fun


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
    if chunk is None and model.laplace is not None:
        # no fold: the marginal meets the parameters through the inner solve, not a product by
        # the data, and re-evaluating its jaxpr doubled the trace of the solve (cbpp 3.1 s)
        return _value_grad_hess_with_basis(_unconstrained(model, data, weights, scale), mode)
    if chunk is None:
        direct = _value_grad_hess_fn(_unconstrained(model, data, weights, scale), mode)
        if spec.all_real:
            return direct
    if weights is not None:
        weights = weights / _weight_unit(weights)
    if chunk is None:
        natural = functools.partial(model.negloglik_flat, data=data, weights=weights)
        on_natural = _value_grad_hess_fn(natural if scale is None else (lambda x: natural(x) / scale), mode)
    else:
        on_natural = _chunked_value_grad_hess(model, data, weights, scale, mode, chunk)
        if spec.all_real:
            return on_natural

    def fun(u):
        ones = jnp.ones_like(u)
        x, jac = jax.jvp(spec.to_natural, (u,), (ones,))
        curv = jax.jvp(lambda t: jax.jvp(spec.to_natural, (t,), (ones,))[1], (u,), (ones,))[1]
        value, grad, hess = on_natural(x)
        return value, jac * grad, _symmetrize(jac[:, None] * hess * jac[None, :] + jnp.diag(curv * grad))

    return fun


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
        return _value_grad_hess_fn(f if scale is None else (lambda t: f(t) / scale), mode)(x)

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


def _value_grad_hess_fn(f: Callable, mode: str) -> Callable:
    """``u -> (f, grad f, Hessian)`` from one compiled derivative pass, without the products
    by the tangent basis (``fold_basis``: one ``N x p x p`` product fewer for a regression)."""
    return fold_basis(_value_grad_hess_with_basis(f, mode))


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


@functools.cache
def _covariance_program() -> Callable:
    """``_covariance_and_diagnostics`` as ``fit``/``evaluate`` run it, once per fit: compiled
    with ``compiler_options(once=True)`` (its compilation was a third of a first logistic fit's
    on the CPU; built at the first fit, when JAX's backend is known)."""
    return jax.jit(_covariance_and_diagnostics_fn, static_argnames=_COV_STATIC, compiler_options=compiler_options(once=True))


# ------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------
def _status_on_face(status: jax.Array, d: Diagnostics, grad: Optional[jax.Array] = None,
                    hess: Optional[jax.Array] = None, deps: Any = ()) -> jax.Array:
    """The solver's status read against the diagnostics (``fit`` and batch members alike):
    CONVERGED with a flat direction is SINGULAR (the solver's Cholesky passed on a pivot at
    rounding level, exact collinearity); SINGULAR where the only finding is parameters at a
    bound is CONVERGED (singular only on the unconstrained scale, where a parameter converging
    to a bound has no curvature left; on the face it is a regular optimum). With the natural-
    scale ``grad`` and ``hess``: STALLED or MAX_ITERATIONS where the only finding is parameters
    at a bound and the Newton step on the face is at most ``AT_OPTIMUM_SE`` standard errors
    long is CONVERGED too. A correlation of random effects at 1 stalls the solver that way: on
    the unconstrained scale the correlation sits at rounding distance from 1, where no step
    changes the objective measurably, while the other parameters are at their optimum (a
    "not converged" finding beside the boundary one then contradicted it, with the boundary
    parameter's own outward gradient, legitimately large, quoted as the evidence). ``deps``:
    arrays whose factorisations must finish before the face's Cholesky starts (a batch
    member's covariances: ``_solver.after``; without it 2,000 batched logistic fits deadlocked
    on the 2-core CPU)."""
    flat = jnp.any(d.bad_directions)
    status = jnp.where((status == Status.CONVERGED) & flat, Status.SINGULAR, status)
    at_bounds_only = jnp.any(d.at_boundary) & ~flat
    status = jnp.where((status == Status.SINGULAR) & at_bounds_only, Status.CONVERGED, status)
    if grad is not None:
        stopped = (status == Status.STALLED) | (status == Status.MAX_ITERATIONS)
        held = d.at_boundary | d.no_curvature
        on_face = face_distance(grad, hess, held, d.eigenvalues, *jax.tree_util.tree_leaves(deps)) <= AT_OPTIMUM_SE
        status = jnp.where(stopped & at_bounds_only & ~jnp.any(d.unbounded) & on_face, Status.CONVERGED, status)
    return status.astype(jnp.int32)


def face_distance(grad: jax.Array, hess: jax.Array, held: jax.Array, *deps: jax.Array) -> jax.Array:
    """Length in standard errors of the Newton step with the ``held`` parameters fixed
    (``sqrt(g' H^-1 g)`` on the face, unit-diagonal scaling); ``inf`` where the face's Hessian
    is not positive definite or not finite (no Newton step to measure). Its Cholesky runs after
    ``deps`` (``_solver.after``)."""
    diag = jnp.abs(jnp.diag(hess))
    d = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    face = jnp.where(held[:, None] | held[None, :], jnp.eye(grad.shape[0], dtype=hess.dtype), hess / jnp.outer(d, d))
    g = jnp.where(held, 0.0, grad / d)
    chol = jnp.linalg.cholesky(after(face, *deps))
    z = jax.scipy.linalg.solve_triangular(chol, g, lower=True)
    dist = jnp.sqrt(jnp.sum(z * z))
    return jnp.where(jnp.isfinite(dist), dist, jnp.inf)


def _groups(model: Model, groups: Any) -> tuple[jax.Array, int]:
    if is_pandas(groups):  # ids may be text here (firm names), so not host_array's numeric rule
        missing = np.asarray(groups.isna())
        if missing.any():
            raise ValueError(
                f"groups contains {int(missing.sum())} missing cluster ids (NaN / pd.NA; first at observation "
                f"{int(np.argmax(missing))}): give every observation a cluster id"
            )
        groups = groups.to_numpy()
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != model.nobs:
        raise ValueError(
            f"groups has shape {g.shape}, expected ({model.nobs},): one cluster id per observation"
        )
    if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
        raise ValueError("groups contains NaN or infinite cluster ids")
    if g.dtype.kind == "O":
        missing = np.flatnonzero(np.array([v is None or (isinstance(v, float) and not np.isfinite(v)) for v in g]))
        if missing.size:
            raise ValueError(
                f"groups contains {missing.size} missing cluster ids (None or NaN; first at observation "
                f"{missing[0]}): give every observation a cluster id"
            )
    try:
        _, codes = np.unique(g, return_inverse=True)
    except TypeError as err:
        kinds = sorted({type(v).__name__ for v in g.reshape(-1)})
        raise ValueError(
            f"groups: cluster ids must be numbers or strings of one type that can be sorted; got "
            f"{', '.join(kinds)} ({err})"
        ) from None
    n_groups = int(codes.max()) + 1
    if n_groups < 2:
        raise ValueError("cluster-robust covariance needs at least 2 clusters; groups has 1")
    return jnp.asarray(codes.reshape(-1), jnp.int32), n_groups


def _check_df_correction(model: Model, weights: Any, cov_type: str, df_correction: Any) -> None:
    """``df_correction`` is None or a bool, used by ``"robust"`` and ``"cluster"`` only, and
    its factor ``(N - 1) / (N - p)`` or ``N / (N - p)`` needs more observations than parameters."""
    if df_correction is not None and not isinstance(df_correction, (bool, np.bool_)):
        raise TypeError(f"df_correction must be True, False or None (the default), got {df_correction!r}")
    if df_correction is not None and cov_type not in ("robust", "cluster"):
        raise ValueError(
            f"df_correction applies to cov_type='robust' or 'cluster' only; cov_type={cov_type!r} has no "
            "small-sample factor: leave df_correction at None"
        )
    on = bool(df_correction) if cov_type == "robust" else df_correction is not False
    if cov_type in ("robust", "cluster") and on and model.per_observation:
        n = float(np.sum(np.asarray(weights, dtype=np.float64))) if weights is not None else float(model.nobs)
        p = len(model.labels)
        if n <= p:
            what = "the sum of the weights" if weights is not None else "observations"
            raise ValueError(
                f"df_correction for cov_type={cov_type!r} divides by N - p, and N = {n:g} ({what}) is not above "
                f"p = {p} parameters: pass df_correction=False, or use more data"
            )


def _infer(model, x, weights, cov_type, groups, df_correction, status, iterations, method, warn, known=None, escape=None,
           scale=None, random_modes=None):
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type must be one of {COV_TYPES}, got {cov_type!r}")
    gauss_newton = cov_type == "gauss-newton"
    if gauss_newton and not hasattr(model, "residual_fn"):
        raise ValueError("cov_type='gauss-newton' needs a least-squares model: build it with ah.least_squares")
    with_scores = cov_type not in ("hessian", "gauss-newton")
    if with_scores and not model.per_observation:
        raise ValueError(
            f"cov_type={cov_type!r} needs per-observation scores; this Model has "
            "per_observation=False (loglik returns a scalar). Use cov_type='hessian'."
        )
    group_codes, n_groups = (None, None)
    if cov_type == "cluster":
        if groups is None:
            raise ValueError("cov_type='cluster' needs groups=..., one cluster id per observation")
        group_codes, n_groups = _groups(model, groups)
        if weights is not None:
            # clusters whose weights are all 0 are not in the sample (G/(G-1) was 1/0: SEs inf)
            w = np.asarray(weights, dtype=np.float64)
            present = np.bincount(np.asarray(group_codes), weights=w, minlength=n_groups) > 0
            if int(present.sum()) < 2:
                raise ValueError(
                    f"cluster-robust covariance needs at least 2 clusters with positive weight; the weights "
                    f"leave {int(present.sum())} of the {n_groups} clusters in groups (the others have all "
                    "weights 0): give weight to a second cluster or use cov_type='robust'"
                )
    elif groups is not None:
        raise ValueError(f"groups is only used with cov_type='cluster', not {cov_type!r}")
    _check_df_correction(model, weights, cov_type, df_correction)
    llf = None
    if known is not None:
        value, grad, hess, llf = known
        scores = None
        if with_scores:
            program = model._jitted(("inference", "scores"), lambda: _inference_program(model, "scores"))
            scores = program(x, model.data, weights)
    else:
        what = "all" if with_scores else "hessian"
        program = model._jitted(("inference", what), lambda: _inference_program(model, what))
        value, grad, hess, scores, measured = program(x, model.data, weights)
        scale = measured if scale is None else scale
    if gauss_newton:
        from ._least_squares import gauss_newton_covariance

        scores = gauss_newton_covariance(model, x)  # passed through to be masked
    lower, upper = model.spec.bounds_arrays(model.dtype)
    (cov,), diag = _covariance_program()(
        x, value, grad, hess, lower, upper, scores, weights, group_codes, escape,
        cov_types=(cov_type,), n_groups=n_groups, df_correction=df_correction, scale=scale,
    )
    result = FitResult(
        # negated on the host: ``-value`` op by op compiled a program of its own in every fresh process
        params_flat=x, cov=cov, llf=jax.device_put(-np.asarray(value)) if llf is None else llf, gradient=grad,
        hessian_matrix=hess,
        status_code=status, iterations=iterations,
        diagnostics_data=diag, model=model, cov_type=cov_type, method=method, weights=weights,
        random_modes=random_modes,
    )
    if warn:
        result._warn()
    return result


def fit(
    model: Model,
    start: Any = None,
    *,
    method: str = "trust-region",
    cov_type: str = "hessian",
    groups: Any = None,
    weights: Any = None,
    df_correction: Optional[bool] = None,
    maxiter: Optional[int] = None,
    rtol: Optional[float] = None,
    warn: bool = True,
    chunk_size: Optional[int] = None,
) -> FitResult:
    """Maximum-likelihood fit with standard errors and diagnostics.

    Args:
        model: an ``ah.Model``.
        start: starting parameters on the natural scale (default: the model's initial values).
        method: ``"trust-region"`` (default; exact-Hessian Newton steps in a trust region,
            robust to indefinite Hessians), ``"lbfgs"`` (``optax.lbfgs`` on the scale where
            the exact Hessian at the start is the identity; two exact Hessians in all, at the
            start and the end, instead of one per iteration: faster once a Hessian costs far
            more than a gradient, hundreds of parameters; README "Fits you can trust") or ``"gauss-newton"``
            (least-squares models only: the same trust region on ``J'J``, i.e.
            Levenberg-Marquardt; inference still uses exact derivatives).
        cov_type: ``"hessian"`` (inverse observed information, default), ``"opg"`` (outer
            product of scores, BHHH), ``"robust"`` (sandwich ``H^-1 B H^-1``, statsmodels'
            HC0) or ``"cluster"`` (with ``groups``).
        groups: cluster ids, one per observation (``cov_type="cluster"``).
        weights: non-negative frequency weights, one per observation.
        df_correction: small-sample factor: ``N/(N-p)`` for ``"robust"`` (default off),
            ``G/(G-1) (N-1)/(N-p)`` for ``"cluster"`` (default on, as statsmodels).
        maxiter: iteration limit (default 200 for trust-region, 1000 for L-BFGS).
        rtol: optional early stop, a number in (0, 1) (trust-region and gauss-newton only):
            the solve ends once the objective still to gain by the quadratic model is below
            ``rtol * (1 + |llf|)``, with status ``APPROXIMATE`` (not converged; the report
            says how many standard errors from the optimum). Default None: to the optimum.
        warn: issue an ``InferenceWarning`` when diagnostics find a problem.
        chunk_size: large N (trust-region only, models with independent observations, as
            ``ah.hessian(chunk_size=...)``): every derivative of the solve is summed over
            blocks of ``chunk_size`` observations in a compiled loop, so the solver's
            temporary memory is ``k * chunk_size * p * 8`` bytes instead of ``k * N * p * 8``;
            estimates and SEs equal the unchunked ones to rounding. Scores (``cov_type``
            other than ``"hessian"``) are still ``N x p``.

    Returns:
        ``FitResult``.

    Example:
        >>> res = ah.fit(ah.models.logistic(X, y))
        >>> print(res.summary())
    """
    if not isinstance(model, Model):
        raise TypeError(f"fit needs an ah.Model, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gauss-newton" and not hasattr(model, "residual_fn"):
        raise ValueError("method='gauss-newton' needs a least-squares model: build it with ah.least_squares")
    if maxiter is None:
        maxiter = 1000 if method == "lbfgs" else 200
    if isinstance(maxiter, (bool, np.bool_)) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative integer, got {maxiter!r}")
    if not isinstance(warn, (bool, np.bool_)):
        raise TypeError(f"warn must be True or False, got {warn!r}")
    rtol = _check_rtol(rtol, method)
    if start is None:
        params = model.init_params  # checked when the model was built
    else:
        params = _model_params(model, start, "start")
        model.spec.check_domain(params, "start")
    w = _model_weights(model, weights)
    chunk = None
    if chunk_size is not None:
        if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer (or None: unchunked), got {chunk_size!r}")
        if method != "trust-region":
            raise ValueError(f"chunk_size applies to method='trust-region', not {method!r}: leave chunk_size at None")
        _check_separable(model, int(chunk_size), params)  # raises for recursive or random-effects models
        chunk = int(min(chunk_size, model.nobs))
    program = model._jitted(("fit", method, int(maxiter), rtol, chunk),
                            lambda: _solve_program(model, method, int(maxiter), rtol, chunk))
    x, iterations, status, known, flags, solved, scale = program(params, model.data, w)
    code, ok, resolved = (int(v) for v in np.asarray(flags))  # the one host read of the solve
    if known is not None and not ok:
        known = None
    escape = None
    if code in _ESCAPE_CANDIDATES + (Status.UNBOUNDED,):
        if solved is not None and not resolved:
            check = model._jitted(("escape",), lambda: _escape_program(model))
            status, escape = check(solved, model.data, w, scale)
        elif solved is None:  # L-BFGS: no solver Hessian; form it at the end point
            check = model._jitted(("escape", "at point"), lambda: _escape_program(model, at_point=True))
            status, escape = check(x, status, model.data, w, scale)
    if escape is not None:
        code = int(status)  # the escape test's verdict
    if code == Status.NONFINITE and int(iterations) == 0:
        model._check_finite_at(params, "starting values")  # raises, naming the observations
        # a finite log-likelihood with non-finite derivatives: the parameters, as ah.hessian
        # names them (the solver's own status could only say "not finite")
        start_hessian = hessian(model, params, check=False).matrix
        _raise_nonfinite_model(model, params, start_hessian, model.labels, "starting values")
    if code != Status.CONVERGED and hasattr(model, "residual_fn"):
        _refuse_exact_fit(model, params, x)
    result = _infer(model, x, w, cov_type, groups, df_correction, status, iterations, method, False, known, escape,
                    scale, None if solved is None else solved.aux)
    common = code == Status.CONVERGED and not bool(result.diagnostics_data.flagged)
    if common:
        pass  # the common case: nothing below applies (one host read)
    elif np.isfinite(np.asarray(result.llf)) and not np.isfinite(np.asarray(result.hessian_matrix)).all():
        # L-BFGS needs no Hessian to reach a point: one that is not finite there shows only
        # now, and is the same failure as at a trust-region start (a non-finite Hessian is
        # always flagged, so this branch sees it)
        _raise_nonfinite_model(model, model.spec.unflatten(x), result.hessian_matrix, model.labels,
                               "L-BFGS estimate" if method == "lbfgs" else "estimate")
    elif code == Status.NONFINITE:
        # the solver gave up where the likelihood or its derivatives are not finite: no
        # standard error there means anything
        result = dataclasses.replace(result, cov=jnp.full_like(result.cov, jnp.nan))
    elif code in (Status.CONVERGED, Status.SINGULAR, Status.STALLED, Status.MAX_ITERATIONS):
        d = result.diagnostics_data
        new = _status_on_face(result.status_code, d, result.gradient, result.hessian_matrix)
        if code == Status.CONVERGED and int(new) == code and method == "lbfgs" and not bool(d.positive_definite):
            new = jnp.asarray(Status.STALLED, jnp.int32)
        if int(new) != code:
            result = dataclasses.replace(result, status_code=new)
    # (the common case has nothing to report: DiagnosticReport.may_have_problems reads the
    # same two facts, plus the NaN test of an OPG covariance)
    if warn and not (common and cov_type != "opg"):
        result._warn()
    return result


#: RMS residual, relative to the RMS of the fitted values' scale, below which a least-squares
#: fit is exact to rounding: 30 ulps (an exact line fitted to 20 points: 7 ulps; NIST's
#: Lanczos1, whose data carry 12 digits, ~350 ulps and fitted as usual)
EXACT_FIT = 30 * float(np.finfo(np.float64).eps)


def _refuse_exact_fit(model: Model, start: Any, x: jax.Array) -> None:
    """A least-squares fit that did not converge at residuals zero to rounding: the concentrated
    log-likelihood ``-(n/2) log RSS`` is unbounded there (log 0), its Hessian is rounding noise,
    and the report called the exact solution a saddle. Raise, naming the exact fit."""
    r = np.asarray(model.residuals(model.spec.unflatten(x)), dtype=np.float64)
    r0 = np.asarray(model.residuals(start), dtype=np.float64)
    fn = lambda t: model.residual_fn(model.spec.unflatten(t), model.data)  # noqa: E731
    fitted = np.asarray(jax.jvp(fn, (x,), (x,))[1], dtype=np.float64)  # J x: the fitted values' size
    rms = lambda a: float(np.sqrt(np.mean(a * a)))  # noqa: E731
    scale = max(rms(r0), rms(fitted))
    if np.all(np.isfinite(r)) and rms(r) <= EXACT_FIT * scale:
        raise ValueError(
            f"{model.name}: the residuals are zero to rounding at {np.array2string(np.asarray(x), precision=6)} "
            f"(RMS residual {rms(r):.2g} against a scale of {scale:.2g}): an exact fit. The concentrated Gaussian "
            "log-likelihood -(n/2) log RSS is unbounded there, so its Hessian is rounding noise and has no standard "
            "errors to give. These estimates are exact; fit with method='gauss-newton', cov_type='gauss-newton' "
            "(s^2 (J'J)^-1, zero to rounding), or check that y was not computed from the model itself"
        )


def _check_rtol(rtol: Any, method: str) -> Optional[float]:
    """``rtol``: None (the default) or a finite number in (0, 1), for the trust-region solves."""
    if rtol is None:
        return None
    if isinstance(rtol, (bool, np.bool_)) or not isinstance(rtol, (int, float, np.integer, np.floating)):
        raise TypeError(f"rtol must be a number in (0, 1) or None (the default), got {type(rtol).__name__} {rtol!r}")
    if not (np.isfinite(rtol) and 0.0 < rtol < 1.0):
        raise ValueError(f"rtol must be a number in (0, 1) or None (the default), got {rtol!r}")
    if method == "lbfgs":
        raise ValueError(
            "rtol applies to method='trust-region' and 'gauss-newton'; method='lbfgs' stops on its own "
            "gradient test: leave rtol at None"
        )
    return float(rtol)


def evaluate(
    model: Model,
    params: Any,
    *,
    cov_type: str = "hessian",
    groups: Any = None,
    weights: Any = None,
    df_correction: Optional[bool] = None,
    warn: bool = True,
) -> FitResult:
    """Inference at given parameters without optimising (e.g. an estimate from other software).

    The result has ``status`` "not optimised"; its diagnostics say whether the point is an
    optimum (gradient, Newton decrement, definiteness) and what is wrong if not.
    """
    if not isinstance(model, Model):
        raise TypeError(f"evaluate needs an ah.Model, got {type(model).__name__}")
    params = _model_params(model, params)
    model.spec.check_domain(params, "params")
    w = _model_weights(model, weights)
    x = model.spec.flatten(params, model.dtype)
    not_run = jnp.asarray(Status.NOT_RUN, jnp.int32)
    result = _infer(model, x, w, cov_type, groups, df_correction, not_run, jnp.zeros((), jnp.int32), "none", False)
    if not (np.isfinite(np.asarray(result.llf)) and np.isfinite(np.asarray(result.hessian_matrix)).all()):
        # names the observations (non-finite likelihood) or the parameters (Hessian), as
        # ``ah.hessian`` does, instead of a table of NaNs
        _raise_nonfinite_model(model, params, result.hessian_matrix, model.labels)
    if warn:
        result._warn()
    return result


# ------------------------------------------------------------------------------------------
# Delta method
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeltaResult:
    """A derived quantity ``g(params)`` with its delta-method covariance ``J V J'``.

    ``labels`` names the entries of ``value`` when ``fn`` returned a pytree (a dict, list or
    tuple: flattened to one vector in pytree order, ``"a"``, ``"b[0]"``, ...); ``None`` when it
    returned one array (``value`` keeps that array's shape).
    """

    value: jax.Array
    cov: jax.Array
    jacobian: jax.Array
    labels: Optional[tuple] = None

    @property
    def se(self) -> jax.Array:
        return jnp.sqrt(jnp.diag(jnp.atleast_2d(self.cov))).reshape(jnp.shape(self.value))

    @property
    def tvalues(self) -> jax.Array:
        return self.value / self.se

    @property
    def pvalues(self) -> jax.Array:
        return 2.0 * norm.sf(jnp.abs(self.tvalues))

    def conf_int(self, alpha: float = 0.05) -> jax.Array:
        z = norm.ppf(1.0 - alpha / 2.0)
        return jnp.stack([self.value - z * self.se, self.value + z * self.se], axis=-1)


jax.tree_util.register_dataclass(DeltaResult, data_fields=["value", "cov", "jacobian"], meta_fields=["labels"])


def _sandwich_nan_aware(J: jax.Array, V: jax.Array) -> jax.Array:
    """``J V J'`` where entry (i, j) is NaN exactly when ``sum_kl |J_ik| [V_kl NaN] |J_jl| > 0``."""
    missing = jnp.isnan(V)
    cov = J @ jnp.where(missing, 0.0, V) @ J.T
    reach = jnp.abs(J) @ missing.astype(J.dtype) @ jnp.abs(J).T
    return jnp.where(reach > 0, jnp.nan, cov)


#: an output counts as estimable when its gradient's component along every flat direction is
#: below this fraction of its length (unit-diagonal scaled coordinates; an exactly invariant
#: combination such as a + b along a - b gives rounding level)
ESTIMABLE_TOL = 1e-8


def _estimable_outputs(J: jax.Array, hess: jax.Array, d: Diagnostics, cov: jax.Array) -> jax.Array:
    """Finite variances for outputs that the flat directions do not move (estimable functions,
    e.g. ``a + b`` when only the sum is identified), from the pseudo-inverse of the Hessian
    without those directions; other entries of ``cov`` are kept."""
    keep = ~d.at_boundary & ~d.unbounded & ~d.nonpositive_diagonal & ~d.no_curvature  # flat-direction members kept
    pinv = face_pseudo_inverse(hess, keep, d.eigenvalues, d.eigenvectors, d.bad_directions)
    scale, v = scaled_eigenvectors(hess, d.eigenvectors)
    Js = J / scale[None, :]
    along = jnp.abs(Js @ v) * d.bad_directions[None, :]
    estimable = jnp.all(along <= ESTIMABLE_TOL * jnp.linalg.norm(Js, axis=1, keepdims=True), axis=1)
    cov_e = _sandwich_nan_aware(J, pinv)
    use = estimable[:, None] & estimable[None, :] & jnp.isfinite(cov_e)
    return jnp.where(use, cov_e, cov)


_ARRAY_OUTPUTS = (jax.Array, np.ndarray, np.generic, int, float)


def _takes_two(fn: Callable) -> bool:
    """Whether ``fn`` can be called as ``fn(params, random)``."""
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read
        return False
    return True


def _delta_method_random(result: FitResult, fn: Callable) -> "DeltaResult":
    """``delta_method`` for ``fn(params, random)`` of a random-effects fit (see there)."""
    from ._laplace import delta_random

    spec = result.model.spec
    modes = {name: est.mode for name, est in result.random.items()}
    params = spec.unflatten(result.params_flat)
    flatten, value, labels = _delta_output(lambda p: fn(p, modes), params, spec.names)
    try:
        A, conditional = delta_random(result.model, result.params_flat, result.cov, fn, flatten)
    except UNTRACEABLE as err:
        raise not_traceable("fn", err) from err
    cov = _sandwich_nan_aware(A, result.cov) + conditional
    if value.ndim == 0:
        cov = cov.reshape(())
    return DeltaResult(value=value, cov=cov, jacobian=A, labels=labels)


def _delta_output(fn: Callable, params: Any, names: tuple) -> tuple[Callable, jax.Array, Optional[tuple]]:
    """``(flatten, value, labels)`` for ``fn``'s output at ``params`` (concrete values).

    One array keeps its shape (``labels`` None); a pytree of arrays (dict, list, tuple) is
    flattened to one vector in pytree order and labelled like parameters (``"a"``, ``"b[1]"``).
    """
    try:
        out = fn(params)
    except KeyError as err:
        raise KeyError(f"fn looked up {err} in the parameters; their names are {list(names)}") from err
    if isinstance(out, _ARRAY_OUTPUTS):
        value = jnp.asarray(out)
        flatten, labels = (lambda o: jnp.ravel(jnp.asarray(o))), None  # noqa: E731
    else:
        with_path = jax.tree_util.tree_flatten_with_path(out)[0]
        if not with_path:
            raise TypeError(
                f"fn returned {out!r}, which holds no arrays: return a scalar, an array or a pytree of them"
            )
        labels = []
        for path, leaf in with_path:
            name = path_name(path, "g")
            if not isinstance(leaf, _ARRAY_OUTPUTS) or not np.issubdtype(np.asarray(leaf).dtype, np.number):
                raise TypeError(
                    f"fn returned {type(leaf).__name__} at {name!r}: every output must be numeric (an array or a number)"
                )
            labels.extend(element_labels(name, tuple(np.shape(leaf))))
        labels = Labels(labels)

        def flatten(o):
            return ravel_pytree(o)[0]

        value = flatten(out)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"fn must return floating values (the delta method differentiates them); got dtype {value.dtype} "
            f"(shape {value.shape})"
        )
    return flatten, value, labels


def delta_method(result: FitResult, fn: Callable[[Any], Any]) -> DeltaResult:
    """Standard errors of ``fn(params)`` by the delta method, ``Var = J V J'``.

    Args:
        result: a ``FitResult`` (for a ``BatchResult``, use ``bres.member(i)``).
        fn: function of the natural-scale parameter pytree written in ``jax.numpy``,
            returning a scalar, an array, or a pytree of them (a dict, list or tuple: flattened
            to one vector, its entries named in ``labels``). For a random-effects model it may
            take two arguments, ``fn(params, random)`` with ``random`` the dict of random
            effects (at their conditional modes): its covariance is then TMB's
            ``A V A' + G_u (-H_uu)^{-1} G_u'``, ``A`` the total derivative in the parameters
            (through the modes, exactly) and ``G_u`` the derivative in the random effects.

    Returns:
        ``DeltaResult`` with ``value``, ``se``, ``cov`` (flattened output), ``conf_int()``.
        An output is NaN exactly when it depends on a parameter whose standard error is NaN
        (``J`` has a non-zero entry there); parameters ``fn`` does not use do not enter.
        Beside a flat direction (``cov_type="hessian"``), an output that the direction does
        not move (an estimable function, e.g. ``a + b`` when only the sum is identified) gets
        its variance from the pseudo-inverse without that direction, as statsmodels' pinv
        would give it.

    Example:
        >>> ah.delta_method(res, lambda p: p["beta"][1] / p["beta"][2]).se
    """
    if not isinstance(result, FitResult):
        if type(result).__name__ == "BatchResult":
            raise TypeError(
                f"delta_method needs a FitResult (one fit), got a BatchResult of {len(result)} members: "
                "apply it to one member at a time, ah.delta_method(bres.member(i), fn)"
            )
        raise TypeError(f"delta_method needs a FitResult (from ah.fit), got {type(result).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be a function of the parameter pytree, fn(params), got {type(fn).__name__}")
    spec = result.model.spec
    if result.model.laplace is not None and _takes_two(fn):
        return _delta_method_random(result, fn)
    flatten, value, labels = _delta_output(fn, spec.unflatten(result.params_flat), spec.names)
    flat_fn = lambda t: flatten(fn(spec.unflatten(t)))  # noqa: E731
    try:
        J = jax.jacfwd(flat_fn)(result.params_flat)
    except UNTRACEABLE as err:
        raise not_traceable("fn", err) from err
    # A NaN covariance entry (a flat direction, a boundary) reaches exactly the outputs whose
    # linearisation involves it: J V J' is formed with NaN read as 0, and (i, j) is set back to
    # NaN where sum_kl |J_ik| [V_kl is NaN] |J_jl| > 0. Plain J V J' would spread one NaN
    # parameter to every output, even those that do not depend on it.
    cov = _sandwich_nan_aware(J, result.cov)
    d = result.diagnostics_data
    if result.cov_type == "hessian" and bool(jnp.any(d.bad_directions)):
        cov = _estimable_outputs(J, result.hessian_matrix, d, cov)
    if value.ndim == 0:
        cov = cov.reshape(())
    return DeltaResult(value=value, cov=cov, jacobian=J, labels=labels)
