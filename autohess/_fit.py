"""``fit``: maximum likelihood with exact derivatives, covariance and diagnostics.

The optimiser runs on the unconstrained scale inside one compiled ``lax.while_loop``
(``_solver.trust_region_newton``); inference (Hessian, scores, covariance, diagnostics) is then
computed on the natural scale in a second compiled program. Results are immutable pytrees.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from ._covariance import COV_TYPES
from ._config import compiler_options
from ._derivatives import (
    Hessian, _check_separable, _model_params, _model_weights, _raise_nonfinite_model, hessian,
)
from ._diagnostics import Diagnostics, Escape, escape_info
from ._model import Model
from ._inference import _covariance_program, _inference_program
from ._fingerprint import _own
from ._programs import NotStorable, jaxpr_digest, stored
from ._problem import (
    one_factor_laplace, _natural_derivatives, _objective_scale, _solver_unit, _unconstrained, _unconstrained_value_grad_hess, _unscale,
    _value_grad_hess_fn, _weight_unit,
)
from ._pandas import is_pandas, require_pandas
from ._report import AT_OPTIMUM_SE, DiagnosticReport, InferenceWarning
from ._summary import summary, summary_html
from ._solver import (
    MAX_TRANSFORMED_STEP,
    SolverResult,
    Status,
    after,
    lbfgs,
    lbfgs_preconditioner,
    trust_region_newton,
)

__all__ = ["FitResult", "fit", "evaluate", "InferenceWarning"]

METHODS = ("trust-region", "lbfgs", "gauss-newton")


#: ``id(cov) -> (weakref to cov, sqrt of its diagonal)`` for the covariances ``fit`` and
#: ``evaluate`` computed, the square roots taken in the same compiled program: ``res.bse`` then
#: costs no ``device_put`` (~30-45 us, a twentieth of a warm logistic fit). An entry leaves
#: with its array, and a covariance made any other way (``dataclasses.replace``, a batch
#: member) is not in it, so what is found is always the diagonal of that very array.
_SE_OF: dict = {}


def _remember_se(cov: jax.Array, se: jax.Array) -> None:
    key = id(cov)
    _SE_OF[key] = (weakref.ref(cov, lambda _: _SE_OF.pop(key, None)), se)


def _sqrt_diag(cov: jax.Array) -> jax.Array:
    if isinstance(cov, jax.core.Tracer):
        return jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
    known = _SE_OF.get(id(cov))
    if known is not None and known[0]() is cov:
        return known[1]
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
        from ._laplace_results import random_effects

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
        return summary_html(self)


jax.tree_util.register_dataclass(
    FitResult,
    data_fields=["params_flat", "cov", "llf", "gradient", "hessian_matrix", "status_code", "iterations", "diagnostics_data", "weights",
                 "random_modes"],
    meta_fields=["model", "cov_type", "method", "status_note"],
)


# ------------------------------------------------------------------------------------------
# Compiled pieces
# ------------------------------------------------------------------------------------------
def _data_start(model: Model, data: Any, fallback: jax.Array) -> jax.Array:
    """The flat natural-scale start ``model.start_fn(data)`` gives, or ``fallback`` where it
    declines (``ok`` False) or its point is not finite or outside the parameters' domain (a
    variance of 0: its log is -inf on the solver's scale)."""
    spec = model.spec
    params, ok = model.start_fn(data)
    spec.check_structure(params, "model.start_fn's parameters")  # names the missing or unknown ones
    flat = spec.flatten(params, model.dtype)
    ok = jnp.asarray(ok) & jnp.all(jnp.isfinite(flat)) & jnp.all(jnp.isfinite(spec.to_unconstrained(flat)))
    return jnp.where(ok, flat, fallback)


def _solve_program(model: Model, method: str, maxiter: int, rtol: Optional[float], chunk: Optional[int] = None,
                   data_start: bool = False) -> Callable:
    """One compiled program: start (natural) -> unconstrained solve -> natural-scale results.
    ``chunk``: the solver's derivatives accumulated over blocks of that many observations.
    ``data_start``: start from ``model.start_fn(data)`` where it gives a point (``_data_start``;
    the ``params`` passed in are the fallback)."""
    spec = model.spec
    mode = model.hessian_mode
    cap = _max_steps(spec)

    def solve(params, data, weights):
        model.trace_counts["fit"] += 1
        flat0 = spec.flatten(params, model.dtype)
        if data_start:
            flat0 = _data_start(model, data, flat0)
        u0 = spec.to_unconstrained(flat0)
        # a random-effects model's scale comes without an inner maximisation (see there): the
        # program holds one inner Newton loop, the solve's
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
                                         u0.dtype)
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

    jitted = jax.jit(solve, compiler_options=compiler_options(large=model.laplace is not None))
    if model.laplace is not None or method == "gauss-newton":
        return jitted  # not keyed (see _programs): compiled in every process, JAX's cache applies
    return stored(jitted, "solve", lambda *_: _solve_key(model, method, maxiter, rtol, chunk, data_start))


def _solve_key(model: Model, method: str, maxiter: int, rtol: Optional[float], chunk: Optional[int],
               data_start: bool) -> tuple:
    """What ``_solve_program``'s program depends on beyond autohess's code and its arguments'
    shapes (``_programs.program_key``): its options, the model's settings and parameter layout,
    the digest of the user's log-likelihood as traced (and of the data start where it is not
    autohess's own). Raises ``NotStorable`` for what cannot be keyed."""
    if not type(model).__module__.startswith("autohess."):
        raise NotStorable("a subclass of Model")
    spec = model.spec
    transforms = []
    for t in spec.transforms:
        if not type(t).__module__.startswith("autohess."):
            raise NotStorable("a user-defined transform")  # its methods are the user's code
        fields = tuple((f.name, getattr(t, f.name)) for f in dataclasses.fields(t) if f.name != "init")
        transforms.append((type(t).__qualname__, np.shape(t.init), fields, bool(t.link)))
    loglik = jaxpr_digest(model.contributions_program().__wrapped__.trace(model.init_params, model.data).jaxpr)
    start = None
    if data_start:
        fn = model.start_fn
        start = ("autohess", fn.__module__, fn.__qualname__) if _own(fn) else jaxpr_digest(jax.make_jaxpr(fn)(model.data))
    return (method, maxiter, rtol, chunk, data_start, type(model).__qualname__, np.dtype(model.dtype).str,
            model.hessian_mode, model.per_observation, model.nobs, model.n_observations, model.independent,
            hasattr(model, "residual_fn"), str(spec.treedef), spec.shapes, tuple(transforms), loglik, start,
            compiler_options(large=model.laplace is not None))


def _covariance_ahead(model: Model, weights: Any, df_correction: Any) -> None:
    """The covariance program a fit of ``model`` will most likely call (``cov_type="hessian"``,
    no escape test), prepared before the solve runs: where it is not in the program store it is
    traced and lowered here and compiles on a thread while the solve is traced and compiled
    (XLA releases Python's lock while it compiles; a cold first logistic fit's covariance
    program: 0.1-0.3 s of compilation off the critical path on a 2-core machine). Its shapes
    are known before the solve: ``p``-vectors, a ``p x p`` Hessian and scalars of the model's
    dtype. Does nothing without a program store; a fit that calls it otherwise (an escape test
    ran) compiles its own."""
    p, dtype = model.n_params, model.dtype
    vec, scalar = jax.ShapeDtypeStruct((p,), dtype), jax.ShapeDtypeStruct((), dtype)
    lower, upper = model.spec.bounds_arrays(dtype)
    _covariance_program().ahead(vec, scalar, vec, jax.ShapeDtypeStruct((p, p), dtype), lower, upper, None, weights, None,
                                None, cov_types=("hessian",), n_groups=None, df_correction=df_correction, scale=scalar)


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
        return _escape_status(spec, model.dtype, _unconstrained(model, data, weights, scale), res, _solver_unit(scale),
                              _escape_hessian(model, data, weights, scale))

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


def _escape_hessian(model: Model, data: Any, weights: Any, scale: Any) -> Optional[Callable]:
    """``u -> Hessian`` of ``_unconstrained(model, data, weights, scale)`` for the escape test
    where JAX's derivatives of it are the costly way: the one-factor Laplace marginal (its
    Hessian written out per group, as the solver's, instead of differentiating through the
    inner solve: ~5,800 of a cbpp bootstrap member program's ~10,400 operations). ``None``:
    JAX's."""
    if not one_factor_laplace(model):
        return None
    fun = _unconstrained_value_grad_hess(model, data, weights, scale, model.hessian_mode)
    return lambda u: fun(u)[2]


def _escape_status(spec, dtype, f: Callable, res, unit: Any = 1.0,
                   hess_fn: Optional[Callable] = None) -> tuple[jax.Array, Escape]:
    """The solver's status, ``UNBOUNDED`` where ``escape_info`` finds no finite maximum.
    ``hess_fn``: ``f``'s Hessian at a point where there is a cheaper one than JAX's
    (``_escape_hessian``)."""
    lower, upper = (jnp.asarray(b, dtype) for b in spec.bounds())  # numpy: no cached tracers
    to_infinity, escape = escape_info(
        f, res.x, res.grad, res.hess, res.value, lower, upper, res.ridge, res.ridge_step, unit, hess_fn
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
    (cov,), diag, se = _covariance_program()(
        x, value, grad, hess, lower, upper, scores, weights, group_codes, escape,
        cov_types=(cov_type,), n_groups=n_groups, df_correction=df_correction, scale=scale,
    )
    _remember_se(cov, se)
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
        start: starting parameters on the natural scale (default: the model's own start from
            its data where it has one, ``model.start_fn``: the zoo's least-squares starts; else
            its initial values).
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
            other than ``"hessian"``) are still ``N x p``. Starts from ``start`` or the
            initial values, not the model's data start (its ``N x p`` products).

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
    # the model's own data-dependent start (the zoo's least-squares starts), where no start is
    # given; not with chunks (its N x p products are what chunking avoids) or Gauss-Newton
    # (least-squares models have none)
    data_start = start is None and model.start_fn is not None and chunk is None and method != "gauss-newton"
    solve_key = ("fit", method, int(maxiter), rtol, chunk, data_start)
    first = solve_key not in model._compiled
    program = model._jitted(solve_key, lambda: _solve_program(model, method, int(maxiter), rtol, chunk, data_start))
    if first and cov_type == "hessian" and groups is None:
        # only where the solve is new to this model: 35 us per call, 7% of a warm logistic fit
        _covariance_ahead(model, w, df_correction)
    x, iterations, status, known, flags, solved, scale = program(params, model.data, w)
    code, ok, resolved = (int(v) for v in np.asarray(flags))  # the one host read of the solve
    if data_start and code == Status.NONFINITE and int(iterations) == 0:
        # the data's start is finite but its log-likelihood or derivatives are not (an extreme
        # design): solve from the model's initial values instead, and judge those below
        program = model._jitted(("fit", method, int(maxiter), rtol, chunk, False),
                                lambda: _solve_program(model, method, int(maxiter), rtol, chunk))
        x, iterations, status, known, flags, solved, scale = program(params, model.data, w)
        code, ok, resolved = (int(v) for v in np.asarray(flags))
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
