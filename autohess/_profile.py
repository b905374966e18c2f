"""``profile``: profile-likelihood intervals from batched constrained refits.

For one parameter ``theta_j`` the profile log-likelihood is ``l_p(v) = max l(theta)`` over the
other parameters with ``theta_j = v``. The likelihood-ratio interval is
``{v : 2 (l(theta_hat) - l_p(v)) <= chi2_1(1 - alpha)}``; unlike the Wald interval it follows the
shape of the likelihood, so it is asymmetric where the likelihood is, respects a parameter's
domain, and does not change under reparameterisation.

How it is computed: every constrained refit is the same trust-region Newton solve as ``fit``
(on the unconstrained scale, exact Hessian) over the remaining ``p - 1`` parameters, and a
whole grid of values is one batched, compiled call. The grid is laid out on the unconstrained
scale of ``theta_j`` (so a variance's grid never crosses zero), ``span`` Wald standard errors
either side; a side whose end is still inside the interval is extended (twice as far, up to
four times); then each end of the interval is bracketed and the bracket narrowed by
``refine`` further batched rounds, and the end is placed by linear interpolation of the
signed root ``r(v) = sign(v - theta_hat) sqrt(2 (l_hat - l_p(v)))``, which is nearly linear in
``v``. Every call has the same batch size, so one compiled program serves them all.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from ._batch import check_maxiter, run_members
from ._fit import FitResult, _max_steps
from ._format import fmt, format_table
from ._html import table as html_table
from ._problem import (
    _objective_scale, _solver_unit, _unconstrained_value_grad_hess, _value_grad_hess_fn, _weight_unit, one_factor_laplace,
)
from ._report import InferenceWarning
from ._solver import Status, trust_region_newton

__all__ = ["ProfileResult", "profile"]


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """Profile log-likelihood of one parameter and its likelihood-ratio interval.

    ``values`` (sorted, natural scale) are every point evaluated, ``llf`` the profile
    log-likelihood there, ``status_code`` each constrained refit's ``Status``, ``params`` the
    full natural-scale parameter vector at each point. ``interval`` is the LR interval
    (``-inf``/``inf`` or the domain bound where the profile never drops far enough:
    ``open_ends`` says which and ``end_notes`` why, in a sentence: the end is open (the
    profile levelled off below the cut-off) or was not found (the search ran out while it was
    still rising, or the refits failed); ``""`` for an end that was found), ``wald`` the
    Wald interval of the fit. ``valid`` is False when the fit was not at the maximum (the
    interval is then measured from the wrong level; a warning said so).
    """

    name: str
    index: int
    estimate: float
    llf_hat: float
    values: np.ndarray
    llf: np.ndarray
    status_code: np.ndarray
    params: np.ndarray
    interval: np.ndarray
    open_ends: tuple
    wald: np.ndarray
    alpha: float
    higher_found: float  # max over the grid of l_p - l_hat (> 0: the fit was not the maximum)
    end_notes: tuple = ("", "")
    valid: bool = True

    @property
    def lr(self) -> np.ndarray:
        """Likelihood-ratio statistic ``2 (l_hat - l_p(v))`` at ``values``."""
        return 2.0 * (self.llf_hat - self.llf)

    @property
    def signed_root(self) -> np.ndarray:
        return np.sign(self.values - self.estimate) * np.sqrt(np.maximum(self.lr, 0.0))

    def conf_int(self) -> np.ndarray:
        """``(lower, upper)`` of the likelihood-ratio interval."""
        return self.interval

    @property
    def asymmetry(self) -> float:
        """``(upper - estimate) / (estimate - lower)``: 1 for a symmetric interval."""
        lo, hi = self.interval
        return float((hi - self.estimate) / (self.estimate - lo))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "estimate": self.estimate, "interval": self.interval.tolist(),
            "wald": self.wald.tolist(), "open_ends": list(self.open_ends), "alpha": self.alpha,
            "values": self.values.tolist(), "llf": self.llf.tolist(), "llf_hat": self.llf_hat,
            "end_notes": list(self.end_notes), "valid": self.valid, "higher_found": self.higher_found,
        }

    def __str__(self) -> str:
        title, headers, rows, notes = _profile_parts(self)
        return format_table(headers, rows, title) + "".join("\n" + n for n in notes)

    def plot(self, ax=None):
        """LR curve, cut-off, Wald quadratic, interval ends: ``ah.plot.profile`` (needs matplotlib)."""
        from .plot import profile as draw

        return draw(self, ax)

    def _repr_html_(self) -> str:
        return html_table(*_profile_parts(self))

    def to_frame(self) -> Any:
        """The profile as a pandas DataFrame, one row per value evaluated (sorted): the
        parameter's value (column named after it), ``llf``, ``lr`` (``2 (l_hat - l_p)``),
        ``signed_root`` and ``status`` (each constrained refit's readable status) (needs pandas)."""
        from ._pandas import require_pandas

        pd = require_pandas("ProfileResult.to_frame()", "values, llf, lr and signed_root (arrays)")
        return pd.DataFrame({
            self.name: self.values, "llf": self.llf, "lr": self.lr, "signed_root": self.signed_root,
            "status": [Status(int(c)).message for c in np.asarray(self.status_code)],
        })


def _index(res: FitResult, name: Union[str, int]) -> int:
    labels = list(res.labels)
    if isinstance(name, (int, np.integer)):
        if not 0 <= int(name) < len(labels):
            raise ValueError(f"parameter index {name} is out of range: the model has {len(labels)} parameters")
        return int(name)
    if not isinstance(name, str):
        raise TypeError(f"name must be a parameter label (str) or a flat index (int), got {type(name).__name__}")
    return res.model.spec.index_of(name)


def _member(model, j: int, maxiter: int):
    spec = model.spec
    mode = model.hessian_mode
    p = model.n_params
    # the fit's step limit on log/logit coordinates, so a refit cannot jump 90 units into a
    # variance collapsing on a data point that the fit itself was kept out of
    cap = np.delete(_max_steps(spec), j)

    def one(u_j, s):
        u_hat = s["u_hat"]
        free0 = jnp.concatenate([u_hat[:j], u_hat[j + 1:]])

        def full(free):
            return jnp.concatenate([free[:j], u_j[None], free[j:]])

        # solved as ``fit`` solves (``_problem._objective_scale``): weights divided by their mean, the
        # objective by its scale; the refits' tests were not scale-free (weights 1e-100: every
        # refit stopped at its start, a profile of the start's nuisance values)
        def f(free):
            return model.negloglik_flat(spec.to_natural(full(free)), s["data"], s["weights"]) / s["scale"]

        if p == 1:
            value = f(free0) * s["unit"]
            status = jnp.where(jnp.isfinite(value), Status.CONVERGED, Status.NONFINITE)
            return spec.to_natural(full(free0)), -value, jnp.asarray(status, jnp.int32)
        if one_factor_laplace(model):
            # one grouping factor: the marginal's Hessian written out per group, as ``fit``
            # solves (``_laplace_derivatives``), its free rows and columns (the weights are
            # already divided by their mean, which dividing again leaves as they are)
            whole = _unconstrained_value_grad_hess(model, s["data"], s["weights"], s["scale"], mode)
            keep = np.delete(np.arange(p), j)

            def fun(free):
                value, grad, hess = whole(full(free))
                return value, grad[keep], hess[np.ix_(keep, keep)]
        else:
            fun = _value_grad_hess_fn(f, mode)
        res = trust_region_newton(fun, free0, maxiter=maxiter, max_step=cap, unit=_solver_unit(s["scale"]))
        status = jnp.where(jnp.isfinite(res.value), res.status, Status.NONFINITE)
        return spec.to_natural(full(res.x)), -res.value * s["unit"], jnp.asarray(status, jnp.int32)

    return one


def profile(
    res: FitResult,
    name: Union[str, int],
    *,
    alpha: float = 0.05,
    grid: Any = None,
    n_grid: int = 21,
    span: float = 4.0,
    refine: int = 5,
    maxiter: int = 200,
    shard: bool = True,
) -> ProfileResult:
    """Profile-likelihood interval of one parameter, from batched constrained refits.

    Args:
        res: a ``FitResult`` (the maximum the profile is measured from).
        name: the parameter's label (``"beta[3]"``, ``"sigma"``) or its index.
        alpha: the interval has level ``1 - alpha`` (cut-off ``chi2_1(1 - alpha) / 2`` below
            the maximum).
        grid: natural-scale values to evaluate first (default: ``n_grid`` points, ``span``
            Wald standard errors either side on the unconstrained scale). Needed when the
            parameter's Wald standard error is NaN (a flat or boundary problem).
        n_grid: points per batched call (every call uses this batch size).
        span: half-width of the default grid in Wald standard errors.
        refine: batched rounds that narrow the bracket around each end of the interval.
        maxiter: iteration limit of each constrained refit.
        shard: as for ``fit_batch``.

    Returns:
        ``ProfileResult``: ``conf_int()``, ``wald``, the profile curve, ``str()`` a comparison.

    Example:
        >>> prof = ah.profile(res, "sigma")
        >>> prof.conf_int(), prof.wald, prof.asymmetry
    """
    if not isinstance(res, FitResult):
        raise TypeError(f"profile needs a FitResult from ah.fit, got {type(res).__name__}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not isinstance(n_grid, (int, np.integer)) or n_grid < 5:
        raise ValueError(f"n_grid must be an integer >= 5, got {n_grid!r}")
    if not (np.isfinite(span) and span > 0):
        raise ValueError(f"span must be a positive number of standard errors, got {span!r}")
    maxiter = check_maxiter(maxiter)
    model = res.model
    spec = model.spec
    j = _index(res, name)
    label = res.labels[j]
    at_maximum = _at_maximum(res, label)
    x_hat = np.asarray(res.params_flat, dtype=np.float64)
    u_hat = np.asarray(spec.to_unconstrained(res.params_flat), dtype=np.float64)
    llf_hat = float(np.asarray(res.llf))
    cut = float(norm.ppf(1.0 - alpha / 2.0)) ** 2  # chi2_1(1 - alpha)
    to_u = lambda v: _to_u(spec, x_hat, j, v)  # noqa: E731
    to_x = lambda u: _to_x(spec, u_hat, j, u)  # noqa: E731

    one = _member(model, j, maxiter)
    # the fit's frequency weights: the profile is of the same (weighted) likelihood
    # (the objective's scale measured as a fit from the model's initial values measures it)
    weights = res.weights
    scale = _objective_scale(model, spec.flatten(model.init_params, model.dtype), model.data, weights)
    w_unit = 1.0 if weights is None else _weight_unit(weights)
    shared = {
        "u_hat": jnp.asarray(u_hat, model.dtype), "data": model.data,
        "weights": None if weights is None else weights / w_unit,
        "scale": jnp.asarray(scale, model.dtype), "unit": jnp.asarray(w_unit * scale, model.dtype),
    }
    n_grid = int(n_grid)
    seen: dict[float, tuple] = {}

    def evaluate(us: np.ndarray) -> None:
        us = np.asarray([u for u in np.asarray(us, dtype=np.float64) if np.isfinite(u)])
        for start in range(0, us.size, n_grid):
            part = us[start:start + n_grid]
            padded = np.concatenate([part, np.full(n_grid - part.size, part[0])])
            xs, llf, status = run_members(
                one, jnp.asarray(padded, model.dtype), shared, n_grid, model=model, key=("profile", j, maxiter),
                batch_size=n_grid, progress=False, label="profile", shard=shard,
            )
            xs, llf, status = np.asarray(xs), np.asarray(llf), np.asarray(status)
            for k, u in enumerate(part):
                seen[float(u)] = (xs[k], float(llf[k]), int(status[k]))

    # the search's unit on the unconstrained scale: the Wald standard error where there is one
    se = float(np.asarray(res.bse_flat)[j])
    se_u = np.nan
    if np.isfinite(se) and se > 0:
        dxdu = float(np.asarray(jax.jvp(spec.to_natural, (jnp.asarray(u_hat),), (jnp.eye(u_hat.size)[j],))[1][j]))
        se_u = se / abs(dxdu)
    if grid is None:
        if not np.isfinite(se_u):
            raise ValueError(
                f"the Wald standard error of {label} is {se}: give grid=... (natural-scale values) "
                "to profile it; see res.diagnostics for why the standard error is missing"
            )
        us = u_hat[j] + np.linspace(-span, span, n_grid) * se_u
    else:
        values = np.atleast_1d(np.asarray(grid, dtype=np.float64))
        if values.ndim != 1 or values.size < 2:
            raise ValueError(f"grid must be a 1-D array of at least 2 values, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"grid contains {int(np.sum(~np.isfinite(values)))} NaN or infinite values")
        if np.unique(values).size < 2:
            raise ValueError(f"grid must hold at least 2 distinct values, got {values.tolist()}")
        lower, upper = spec.bounds()
        if np.any((values <= lower[j]) | (values >= upper[j])):
            raise ValueError(f"grid values for {label} must lie inside its domain ({lower[j]:g}, {upper[j]:g})")
        us = np.asarray([to_u(v) for v in values])
        if not np.isfinite(se_u):
            se_u = float(np.ptp(us)) / max(values.size - 1, 1) * 2.0
    evaluate(np.append(us, u_hat[j]))

    def curve():
        keys = np.array(sorted(seen))
        llf = np.array([seen[k][1] for k in keys])
        good = np.array([seen[k][2] == Status.CONVERGED for k in keys]) & np.isfinite(llf)
        return keys, llf, good

    ends, open_ends, notes = [], [], []
    for side in (-1.0, 1.0):
        # extend this side (twice as far each time) until the LR statistic passes the cut-off,
        # levels off below it (a truly open end), or the refits fail
        note = ("is open: within the searched range the profile log-likelihood never falls "
                "chi2_1(1 - alpha)/2 below the maximum on that side")  # if nothing more specific
        for _ in range(MAX_DOUBLINGS):
            keys, llf, good = curve()
            sel = good & (side * (keys - u_hat[j]) > 0)
            lr_side = 2.0 * (llf_hat - llf[sel])
            if sel.any() and np.max(lr_side) >= cut:
                break
            reach = max(np.max(side * (keys[sel] - u_hat[j])) if sel.any() else 0.0, span * se_u)
            before = float(np.max(lr_side, initial=0.0))
            evaluate(u_hat[j] + side * np.linspace(reach, 2.0 * reach, n_grid + 1)[1:])
            keys, llf, good = curve()
            new = good & (side * (keys - u_hat[j]) > reach)
            if not new.any():
                note = (f"was not found: the constrained refits failed beyond "
                        f"{to_x(u_hat[j] + side * reach):.6g} (see status_code)")
                break
            after = float(np.max(2.0 * (llf_hat - llf[new])))
            if sel.any() and after < cut and after - before < LEVEL_TOL * cut:
                note = (f"is open: the profile levels off below the cut-off: the likelihood-ratio statistic stays "
                        f"at {after:.3g} < {cut:.3g} out to {to_x(u_hat[j] + side * 2.0 * reach):.6g}")
                break
        else:
            keys, llf, good = curve()
            sel = good & (side * (keys - u_hat[j]) > 0)
            if not (sel.any() and np.max(2.0 * (llf_hat - llf[sel])) >= cut):
                note = (f"was not found: the search stopped after {MAX_DOUBLINGS} doublings with the likelihood-ratio "
                        "statistic still below the cut-off and rising: give a wider grid")
        keys, llf, good = curve()
        sel = good & (side * (keys - u_hat[j]) >= 0)
        ks, d = keys[sel], 2.0 * (llf_hat - llf[sel])
        order = np.argsort(side * (ks - u_hat[j]))
        ks, d = ks[order], d[order]
        past = np.flatnonzero(d >= cut)
        if past.size == 0:
            lo_b, hi_b = spec.bounds()
            bound = lo_b[j] if side < 0 else hi_b[j]
            ends.append(bound)
            open_ends.append(True)
            notes.append(f"the {'lower' if side < 0 else 'upper'} end {note}; the interval's end is therefore the "
                         f"domain bound, {float(bound):g}")
            continue
        k = past[0]
        inside, outside = ks[k - 1] if k > 0 else u_hat[j], ks[k]
        for _ in range(int(refine)):
            evaluate(np.linspace(inside, outside, n_grid + 1)[1:-1])
            keys, llf, good = curve()
            between = good & (np.minimum(inside, outside) <= keys) & (keys <= np.maximum(inside, outside))
            kb, db = keys[between], 2.0 * (llf_hat - llf[between])
            order = np.argsort(side * (kb - u_hat[j]))
            kb, db = kb[order], db[order]
            first = np.flatnonzero(db >= cut)
            if first.size == 0 or first[0] == 0:
                break
            inside, outside = kb[first[0] - 1], kb[first[0]]
        r_in = np.sqrt(max(2.0 * (llf_hat - seen[float(inside)][1]), 0.0)) if float(inside) in seen else 0.0
        r_out = np.sqrt(max(2.0 * (llf_hat - seen[float(outside)][1]), 0.0))
        target = np.sqrt(cut)
        # interpolate the signed root in the natural-scale value: nearly linear there
        x_in, x_out = to_x(inside), to_x(outside)
        t = (target - r_in) / (r_out - r_in) if r_out > r_in else 1.0
        ends.append(x_in + t * (x_out - x_in))
        open_ends.append(False)
        notes.append("")

    keys, llf, good = curve()
    xs = np.array([seen[k][0] for k in keys])
    status = np.array([seen[k][2] for k in keys], dtype=np.int32)
    values = xs[:, j]
    z = float(norm.ppf(1.0 - alpha / 2.0))
    higher = float(np.max(np.where(good, llf, -np.inf)) - llf_hat)
    # an unbounded fit stopped short of its supremum: refits further out may be marginally higher
    higher_bad = higher > HIGHER_TOL * (1.0 + abs(llf_hat)) and int(np.asarray(res.status_code)) != Status.UNBOUNDED
    valid = not higher_bad and at_maximum
    if higher_bad:
        warnings.warn(
            f"profile of {label}: a constrained refit found a log-likelihood {higher:.3g} above the fit's, "
            "so the fit is not at the maximum and this interval is measured from the wrong level; "
            "refit (ah.fit, from the best profile point: prof.params[np.nanargmax(prof.llf)]) and profile again",
            InferenceWarning, stacklevel=2,
        )
    return ProfileResult(
        name=label, index=j, estimate=float(x_hat[j]), llf_hat=llf_hat, values=values, llf=np.where(good, llf, np.nan),
        status_code=status, params=xs, interval=np.array(ends), open_ends=tuple(open_ends),
        wald=np.array([x_hat[j] - z * se, x_hat[j] + z * se]), alpha=float(alpha), higher_found=higher,
        end_notes=tuple(notes), valid=valid,
    )


#: a side of the search doubles its reach at most this often (2^12: four thousand times the
#: first reach, ``span`` standard errors or the grid's)
MAX_DOUBLINGS = 12
#: a doubling that raises the likelihood-ratio statistic by less than this share of the
#: cut-off, while below it, means the profile has levelled off: the end is open
LEVEL_TOL = 1e-3
#: a profile point above the fit's log-likelihood by more than this (relative to 1 + |llf|)
#: shows the fit was not the maximum
HIGHER_TOL = 1e-8


def _at_maximum(res: FitResult, label: str) -> bool:
    """Does the fit (or ``evaluate`` result) claim a maximum? Warns when it does not: no problem
    of a kind that says otherwise (an unbounded fit is fine: its log-likelihood is the
    supremum, approached along the ridge)."""
    kinds = sorted({p.kind for p in res.diagnostics.problems})
    if not {"not_converged", "saddle"} & set(kinds):
        return True
    warnings.warn(
        f"profile of {label}: the result it is measured from is not a maximum ({', '.join(kinds)}; "
        f"status {res.status}); a likelihood-ratio interval needs the maximum: refit with ah.fit first",
        InferenceWarning, stacklevel=3,
    )
    return False


def _to_u(spec, x_hat: np.ndarray, j: int, v: float) -> float:
    x = jnp.asarray(x_hat).at[j].set(v)
    return float(np.asarray(spec.to_unconstrained(x))[j])


def _to_x(spec, u_hat: np.ndarray, j: int, u: float) -> float:
    uu = jnp.asarray(u_hat).at[j].set(u)
    return float(np.asarray(spec.to_natural(uu))[j])


def _profile_parts(prof) -> tuple:
    """``(title, headers, rows, notes)`` of ``ProfileResult`` (its text and HTML)."""
    level = 1.0 - prof.alpha
    lo, hi = prof.interval
    rows = [
        ["profile likelihood", lo, hi, hi - prof.estimate, prof.estimate - lo],
        ["Wald", prof.wald[0], prof.wald[1], prof.wald[1] - prof.estimate, prof.estimate - prof.wald[0]],
    ]
    headers = ["interval", "lower", "upper", "upper - est", "est - lower"]
    title = f"{prof.name} = {fmt(prof.estimate).strip()}: {level:.3g} intervals"
    notes = [why for why in prof.end_notes if why]
    if not prof.valid:
        notes.append(
            f"NOT VALID: the fit is not at the maximum (a constrained refit found a log-likelihood "
            f"{prof.higher_found:.3g} above the fit's, or the fit did not converge): refit and profile again"
        )
    failed = int(np.sum(prof.status_code != Status.CONVERGED))
    if failed:
        notes.append(f"{failed} of {prof.status_code.size} constrained refits did not converge and were left out")
    return title, headers, rows, notes
