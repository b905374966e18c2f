"""Finite-difference steps for the audit: the step sweep (error against the exact Hessian over a
grid of steps) and the inference of the step and stencil that explain a bare finite-difference
matrix's errors (rounding vs truncation, entry by entry).

``ex`` below is the audit's ``_Exact`` context (``_audit.py``): the exact Hessian at the point,
its diagonal scale ``d``, ``value``, ``flat_x``, ``labels`` and ``fd_error(h)``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._derivatives import hessian as exact_hessian
from ._finite_diff import fd_hessian
from ._model import Model

if TYPE_CHECKING:
    from ._audit import _Exact

#: a candidate is "ok" when every entry, scaled by sqrt(|H_ii H_jj|), is within this of the
#: exact one and the standard errors agree to the same relative tolerance.
OK_TOL = 1e-3

# ------------------------------------------------------------------------------------------
# Step sweep
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepSweep:
    """Error of a finite-difference Hessian against the exact one, over a grid of steps.

    ``errors[k]`` is the largest scaled error ``|C_ij - H_ij| / sqrt(|H_ii H_jj|)`` at
    ``steps[k]`` (relative steps ``h_i = steps[k] * max(|x_i|, 1)``; see ``step_sweep``).
    Small steps lose to rounding (error ~ 1/h^2), large ones to truncation (~ h^2): the V.
    """

    steps: np.ndarray
    errors: np.ndarray
    method: str
    relative: Any

    @property
    def best_step(self) -> float:
        return float(self.steps[int(np.nanargmin(self.errors))])

    @property
    def best_error(self) -> float:
        return float(np.nanmin(self.errors))

    def plot(self, ax=None):
        """Log-log plot of error against step: ``ah.plot.step_sweep`` (needs matplotlib)."""
        from .plot import step_sweep as draw

        return draw(self, ax)

    def __str__(self) -> str:
        rows = "\n".join(f"  h = {h:9.2e}   error = {e:9.2e}" for h, e in zip(self.steps, self.errors))
        return f"step sweep ({self.method}):\n{rows}\nbest step {self.best_step:.2e} (error {self.best_error:.2e})"


def _diag_scale(exact: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.abs(np.diag(exact)))
    return np.where(d > 0, d, 1.0)


def _scaled_error(candidate: np.ndarray, exact: np.ndarray) -> np.ndarray:
    d = _diag_scale(exact)
    return (candidate - exact) / np.outer(d, d)


def step_sweep(
    target: Model | Callable,
    x: Any = None,
    *,
    steps: Any = None,
    method: str = "central",
    relative: bool = True,
) -> StepSweep:
    """Finite-difference error against the exact Hessian over a log grid of steps.

    Args:
        target: JAX scalar function or ``ah.Model``; x: the point.
        steps: grid of steps (default ``10**-10 .. 10**-1``, 19 values).
        method: ``"central"``, ``"forward"`` or ``"richardson"``.
        relative: ``h_i = step * max(|x_i|, 1)`` (``True``, default), the same absolute step for
            all (``False``), or ``"x"``: ``h_i = step * |x_i|`` (1 where ``x_i = 0``), as
            ``fd_hessian(step="relative")``; best where parameters are small by nature.
    """
    if relative not in (True, False, "x"):
        raise ValueError(f"relative must be True, False or 'x', got {relative!r}")
    grid = np.logspace(-10, -1, 19) if steps is None else np.asarray(steps, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        raise ValueError(
            f"steps must be a 1-d sequence of positive finite step sizes, e.g. np.logspace(-8, -2, 13) or "
            f"[1e-4]; got {steps!r}" + (": wrap a single step in a list" if grid.ndim == 0 else "")
        )
    exact = np.asarray(exact_hessian(target, x, check=False).matrix)
    flat = _flat_point(target, x)
    if relative == "x":
        scale = np.where(flat != 0, np.abs(flat), 1.0)
    else:
        scale = np.maximum(np.abs(flat), 1.0) if relative else np.ones_like(flat)
    errors = []
    for h in grid:
        fd = np.asarray(fd_hessian(target, x, method=method, step=h * scale).matrix)
        errors.append(float(np.max(np.abs(_scaled_error(fd, exact)))) if np.all(np.isfinite(fd)) else np.nan)
    return StepSweep(grid, np.asarray(errors), method, relative)


def _flat_point(target: Any, x: Any) -> np.ndarray:
    if isinstance(target, Model):
        from ._derivatives import _model_params

        return np.asarray(target.spec.flatten(_model_params(target, x), target.dtype))
    from jax.flatten_util import ravel_pytree

    return np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), x))[0])


# ------------------------------------------------------------------------------------------
# Finite differences: which step explains a candidate's errors
# ------------------------------------------------------------------------------------------
#: step rules a bare finite-difference matrix is tried against: step h_i = t * s_i(x)
_FAMILIES = (
    ("one step for all", lambda x: np.ones_like(x)),  # as in the seed question
    ("h_i = {t:.2g}*max(|x_i|, 1)", lambda x: np.maximum(np.abs(x), 1.0)),  # ah.fd_hessian's default
    ("h_i = {t:.2g}*max(|x_i|, 0.1)", lambda x: np.maximum(np.abs(x), 0.1)),  # statsmodels' approx_hess
    ("h_i = {t:.2g}*|x_i|", lambda x: np.where(x != 0, np.abs(x), 1.0)),  # ah.fd_hessian(step="relative")
)
#: stencils: the seed question's (x +/- h_i e_i on the diagonal) and statsmodels' approx_hess
#: (approx_hess3: the same four-point cross differences, x +/- 2 h_i e_i on the diagonal)
_STENCILS = ("central", "approx_hess")
#: multipliers t tried: 0.1 down to 9e-11 by factors of 2 (the step 2t of approx_hess's
#: diagonal is then the previous grid point)
_T_GRID = 0.1 * 2.0 ** -np.arange(31)
#: a candidate entry is reproduced by differences at a step when they agree to this fraction
MATCH_TOL = 0.1
#: an error is of the size of rounding noise when it is at most this multiple of the bound
#: ``eps |f| / (h_i h_j)`` (a sum of many terms rounds to a few ulps of |f|)
NOISE_FACTOR = 30.0


def _stencil_error(errors_h: np.ndarray, errors_2h: Optional[np.ndarray], stencil: str) -> np.ndarray:
    if stencil == "central":
        return errors_h
    out = errors_h.copy()
    np.fill_diagonal(out, np.diag(errors_2h) if errors_2h is not None else np.nan)
    return out


def _rounding_bound(ex: _Exact, h: np.ndarray, stencil: str) -> np.ndarray:
    """Unscaled bound on the rounding error of second differences at step ``h``: ``(1+2+1)
    eps |f| / h_i^2`` on the diagonal (``eps |f| / h_i^2`` for approx_hess's 2h), ``4 eps |f| /
    (4 h_i h_j)`` off it."""
    c = np.ones((len(h), len(h)))
    np.fill_diagonal(c, 4.0 if stencil == "central" else 1.0)
    return np.finfo(np.float64).eps * abs(ex.value) * c / np.outer(h, h)


def _split(ex: _Exact, h: np.ndarray, stencil: str, wrong: np.ndarray):
    """Entry by entry at step ``h``: rounding bound and truncation estimate (both scaled), and
    which wrong entries each explains (the larger one)."""
    dd = np.outer(ex.d, ex.d)
    e1, e2 = ex.fd_error(h), ex.fd_error(2 * h)
    e4 = ex.fd_error(4 * h) if stencil != "central" else None  # only approx_hess's diagonal reads it
    fine, coarse = _stencil_error(e1, e2, stencil), _stencil_error(e2, e4, stencil)
    truncation = np.abs(coarse - fine) / 3.0 / dd  # the h^2 term: FD(2h) - FD(h) = 3 c h^2
    rounding = _rounding_bound(ex, h, stencil) / dd
    by_rounding = wrong & ~(truncation > rounding)
    return rounding, truncation, by_rounding, wrong & ~by_rounding


def truncation_coefficients(ex: _Exact, s: np.ndarray, stencil: str) -> np.ndarray:
    """``A`` with ``fd(t s) - H ~ t^2 A`` as ``t -> 0`` (unscaled), from the exact fourth
    derivatives (``ex.fourth()``, ``Q[i, j] = f_iiij``): central differences' leading error is
    ``h_i^2 f_iiii / 12`` on the diagonal and ``(h_i^2 f_iiij + h_j^2 f_ijjj) / 6`` off it;
    approx_hess differences the diagonal over ``2 h``: four times the central term there."""
    Q = ex.fourth()
    M = (s**2)[:, None] * Q
    A = (M + M.T) / 6.0
    np.fill_diagonal(A, np.diag(M) / (12.0 if stencil == "central" else 3.0))
    return A


def _infer_step(ex: _Exact, err_c: np.ndarray, wrong: np.ndarray):
    """``(h, stencil, rule, scale_fn)`` of the differences that best explain a bare matrix's errors, or
    None. Truncation error is deterministic (``c_ij h_i h_j``-like, reproduced by our own
    differences at the same step); rounding is noise of a known size. A step is accepted when
    differences at it reproduce at least one wrong entry to ``MATCH_TOL`` and, together with
    the rounding noise it implies, explain 90% of them.

    The truncation coefficients come from the exact fourth derivatives (one compiled program),
    not from a search: a grid of ~31 steps per rule took ~120 finite-difference Hessians (13 s
    at p = 60 on 24 sampled parameters); finite differences are now evaluated only at the
    candidate steps (a few per rule), to check that they reproduce the errors."""
    n_wrong = int(wrong.sum())
    best, best_score = None, (0, 0, -np.inf)
    coefs = {}
    t_top = float(_T_GRID[1])  # the largest step at which the grid search read the t^2 law
    for rule, scale_fn in _FAMILIES:
        s = scale_fn(ex.flat_x)
        for stencil in _STENCILS:
            A = truncation_coefficients(ex, s, stencil)
            # the law is read where truncation exceeds 100x the rounding bound at some step of
            # the grid (as the search required), i.e. at its largest (the ratio grows as t^4)
            with np.errstate(invalid="ignore", over="ignore"):
                seen = np.isfinite(A) & (np.abs(A) * t_top**2 > 100 * _rounding_bound(ex, t_top * s, stencil))
            A = np.where(seen, A, np.nan)
            coefs[(rule, stencil)] = (s, A)
            with np.errstate(invalid="ignore"):
                valid = wrong & np.isfinite(A) & (np.sign(A) == np.sign(err_c))
                t_ij = np.sqrt(err_c / A)
            if not valid.any():
                continue
            t = float(np.median(t_ij[valid]))

            def errors_at(t):
                h = t * s
                return _stencil_error(ex.fd_error(h), ex.fd_error(2 * h) if stencil != "central" else None, stencil)

            # the t^2 law is asymptotic; at the user's step higher orders may count: refine t
            # by the local power law (a few fixed-point steps on the median ratio); errors that
            # no step reproduces (noise) stop after one
            e_h = errors_at(t)
            n_matched = int(np.sum(wrong & (np.abs(e_h - err_c) <= MATCH_TOL * np.abs(err_c))))
            for _ in range(3):
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = err_c[valid] / e_h[valid]
                ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
                if ratio.size == 0:
                    break
                t_new = t * float(np.sqrt(np.median(ratio)))
                if abs(t_new / t - 1.0) < 1e-9:
                    break
                e_new = errors_at(t_new)
                m_new = int(np.sum(wrong & (np.abs(e_new - err_c) <= MATCH_TOL * np.abs(err_c))))
                if m_new == n_matched == 0:
                    break
                t, e_h, n_matched = t_new, e_new, m_new
            h = t * s
            matched = wrong & (np.abs(e_h - err_c) <= MATCH_TOL * np.abs(err_c))
            noise = wrong & ~matched & (np.abs(err_c) <= NOISE_FACTOR * _rounding_bound(ex, h, stencil))
            # ties (rules that differ only where the errors are small) go to the closer fit overall
            misfit = float(np.nansum(np.abs(e_h - err_c) / np.outer(ex.d, ex.d)))
            score = (int(matched.sum() + noise.sum()), int(matched.sum()), -misfit)
            if matched.any() and score[0] >= 0.9 * n_wrong and score > best_score:
                best, best_score = (h, stencil, rule.format(t=t), scale_fn), score
    if best is not None:
        return best
    # No truncation pattern: is it rounding noise of one size? The step at which the bound
    # equals each wrong entry's error must agree across entries (within a factor 30: noise
    # draws vary); truncation at that step must be well below the errors; and noise of that
    # size must show in most entries, not only in the wrong ones (an exact diagonal next to one
    # wrong entry is not rounding).
    best_spread = 30.0
    if len(ex.d) > 2 and abs(_cosine(ex, err_c)) > max(0.7, 2.0 / np.sqrt(len(ex.d) * (len(ex.d) - 1) / 2)):
        # rounding noise is independent entry by entry; errors that follow the exact Hessian's
        # own pattern (2H - H = H, I - H ~ -H) are a different matrix, whatever their size
        return None
    for (rule, stencil), (s, A) in coefs.items():
        if stencil != "central":
            continue  # the noise does not tell stencils apart
        with np.errstate(divide="ignore", invalid="ignore"):
            t_ij = np.sqrt(_rounding_bound(ex, s, stencil)[wrong] / np.abs(err_c[wrong]))
        if t_ij.size == 0 or not np.all(np.isfinite(t_ij) & (t_ij > 0)):
            continue
        # the middle 90% of the entries: the extremes of many noise draws spread with their number
        spread = float(np.quantile(t_ij, 0.95) / np.quantile(t_ij, 0.05))
        t = float(np.exp(np.mean(np.log(t_ij))))
        truncation = np.abs(np.nan_to_num(A[wrong])) * t**2
        quiet = (np.abs(err_c) < 0.01 * _rounding_bound(ex, t * s, stencil))[np.triu_indices(len(s))]
        if (spread <= best_spread and 1e-14 <= t <= 1e-2 and np.mean(quiet) <= 0.5
                and np.mean(truncation < 0.3 * np.abs(err_c[wrong])) >= 0.9):
            best, best_spread = (t * s, stencil, "about " + rule.format(t=t) + ", from the size of its noise",
                                 dict(_FAMILIES)[rule]), spread
    return best


#: above this many parameters the step is inferred on a sample of this many (their sub-block of
#: the candidate): second differences of f restricted to them evaluate exactly the same points
#: as the full stencil's entries there, at (SAMPLE_P / p)^2 of the cost, so the search's ~120
#: finite-difference Hessians no longer grow as p^2 evaluations of f each
SAMPLE_P = 24


def _sample(err_c: np.ndarray, wrong: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Which parameters to infer the step on: half those whose rows hold the largest wrong
    errors, half spread evenly over the rest (so that the quiet entries are seen too)."""
    p = len(d)
    mass = np.sum(np.where(wrong, np.abs(err_c) / np.outer(d, d), 0.0), axis=1)
    top = list(np.argsort(-mass, kind="stable")[: SAMPLE_P // 2])
    rest = [i for i in range(p) if i not in top]
    spread = [rest[int(k)] for k in np.linspace(0, len(rest) - 1, SAMPLE_P - len(top))]
    return np.array(sorted(set(top) | set(spread)))


def _infer_step_sampled(ex: _Exact, err_c: np.ndarray, wrong: np.ndarray):
    """``_infer_step`` on a sample of ``SAMPLE_P`` parameters above that many; the step it finds
    is the rule's step for every parameter."""
    p = len(ex.d)
    if p <= SAMPLE_P:
        return _infer_step(ex, err_c, wrong)
    S = _sample(err_c, wrong, ex.d)
    block = np.ix_(S, S)
    if not wrong[block].any():
        return None
    found = _infer_step(ex.restricted(S), err_c[block], wrong[block])
    if found is None:
        return None
    h, stencil, rule, scale_fn = found
    t = float(h[0] / scale_fn(ex.flat_x[S])[0])
    return t * scale_fn(ex.flat_x), stencil, f"{rule}; inferred on {len(S)} of the {p} parameters", scale_fn


def _cosine(ex: _Exact, err_c: np.ndarray) -> float:
    """Cosine between the errors and the exact Hessian, both scaled, off the diagonal: near 0
    for rounding noise (of random sign entry by entry), near +-1 for a matrix whose errors follow
    the Hessian's pattern. With ``m`` entries, noise gives about ``1/sqrt(m)``. The diagonal is
    left out: its noise (4 eps|f|/h^2, from f(x+h) + f(x-h) - 2 f(x)) need not average to zero,
    and the scaled exact diagonal is all ones, so it would correlate with any such bias."""
    iu = np.triu_indices(len(ex.d), 1)
    dd = np.outer(ex.d, ex.d)
    e, h = (err_c / dd)[iu], (ex.matrix / dd)[iu]
    denom = float(np.linalg.norm(e) * np.linalg.norm(h))
    return float(e @ h) / denom if denom > 0 else 0.0


def _entries(ex: _Exact, mask: np.ndarray, err: np.ndarray) -> str:
    iu = np.triu_indices(len(ex.labels))
    idx = [(i, j) for i, j in zip(*iu) if mask[i, j]]
    idx.sort(key=lambda ij: -abs(err[ij]))
    more = f" and {len(idx) - 4} more" if len(idx) > 4 else ""
    return ", ".join(f"[{ex.labels[i]}, {ex.labels[j]}]" for i, j in idx[:4]) + more


def _fd_causes(ex: _Exact, spec: dict, C: np.ndarray, err: np.ndarray, se_note: str,
               entries: Optional[dict] = None) -> list:
    """Rounding and/or truncation, entry by entry, for a finite-difference candidate; or
    ``unexplained`` when no step explains its errors. ``entries`` (a dict) receives the masks
    of the entries each explains (``CandidateAudit.entry_causes``)."""
    err_c = C - ex.matrix
    wrong = np.abs(err) > OK_TOL
    if not wrong.any():  # every entry within tolerance; the standard errors still differ
        wrong = np.abs(err) >= 0.1 * np.max(np.abs(err))
    step = spec.get("step")
    stencil, rule = "central", None
    if step is not None and "method" not in spec:
        # a step given with a bare matrix: whose stencil is it? (statsmodels' approx_hess
        # differences the diagonal over 2h)
        h = np.broadcast_to(np.asarray(step, dtype=np.float64), ex.flat_x.shape)
        e1, e2 = ex.fd_error(h), ex.fd_error(2 * h)
        fits = [np.sum(wrong & (np.abs(_stencil_error(e1, e2, st) - err_c) <= MATCH_TOL * np.abs(err_c)))
                for st in _STENCILS]
        stencil = _STENCILS[int(np.argmax(fits))]
    if step is None:
        found = _infer_step_sampled(ex, err_c, wrong)
        if found is None:
            return [("unexplained", (
                f"its errors (up to {np.max(np.abs(err)):.2g} scaled, at {_entries(ex, wrong, err)}) match "
                "neither finite differences at any step (truncation errors are reproducible, here none "
                "is), nor rounding noise of one size, nor the exact Hessian's inverse, sign, other "
                "scale, a multiple of it or its parameters in another order: look for an error in the code that produced it, or a different matrix (expected "
                f"information, outer product of scores){se_note}"
            ))]
        step, stencil, rule = found[:3]
    h = np.broadcast_to(np.asarray(step, dtype=np.float64), ex.flat_x.shape)
    if rule is None and spec.get("method", "central") == "central":
        # a known step: its differences must reproduce the errors (or be noise of the bound's
        # size), else they came from another point or another function, not from the step
        e_h = _stencil_error(ex.fd_error(h), ex.fd_error(2 * h), stencil)
        reproduced = np.abs(e_h - err_c) <= MATCH_TOL * np.abs(err_c)
        noise = np.abs(err_c) <= NOISE_FACTOR * _rounding_bound(ex, h, stencil)
        stray = wrong & ~reproduced & ~noise
        if stray.sum() > 0.1 * wrong.sum():
            return [("unexplained", (
                f"its errors (up to {np.max(np.abs(err[stray])):.2g} scaled, at {_entries(ex, stray, err)}) are not "
                f"those of central differences at its own step (h = {float(np.min(h)):.2g}..{float(np.max(h)):.2g}): "
                "neither reproduced by differences at that step nor of the size of their rounding noise; "
                "it was computed at another point, of another function (other data, weights or "
                f"parameterisation), or with another stencil: recompute it at this point{se_note}"
            ))]
    rounding, truncation, by_rounding, by_truncation = _split(ex, h, stencil, wrong)
    if entries is not None:
        entries.update(rounding=by_rounding, truncation=by_truncation)
    hmin, hmax = float(np.min(h)), float(np.max(h))
    htxt = f"h = {hmin:.2g}" if np.isclose(hmin, hmax) else f"h = {hmin:.2g}..{hmax:.2g}"
    if rule is not None:
        htxt += f" (inferred, {rule}" + (", statsmodels approx_hess's stencil)" if stencil == "approx_hess" else ")")
    elif stencil == "approx_hess":
        htxt += " (statsmodels approx_hess's stencil)"
    out = []
    if by_rounding.any():
        out.append(("rounding", (
            f"step {htxt} is too small for |f| = {abs(ex.value):.3g} at {_entries(ex, by_rounding, err)}: "
            f"errors there up to {np.max(np.abs(err[by_rounding])):.2g} (scaled), where rounding alone "
            f"reaches eps*|f|/(h_i h_j) ~ {np.max(rounding[by_rounding]):.2g} and exceeds the truncation "
            "error; take h_i ~ eps^(1/4)*max(|x_i|, 1) (ah.fd_hessian's default) or use the exact "
            f"Hessian{se_note}"
        )))
    if by_truncation.any():
        out.append(("truncation", (
            f"step {htxt} is too large at {_entries(ex, by_truncation, err)}: errors there up to "
            f"{np.max(np.abs(err[by_truncation])):.2g} (scaled) are the truncation term ~h^2 f''''/12 "
            f"(estimated {np.max(truncation[by_truncation]):.2g}), which dominates rounding; take a "
            f"smaller step or Richardson extrapolation, or use the exact Hessian{se_note}"
        )))
    return out
