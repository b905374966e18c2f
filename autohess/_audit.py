"""Audit candidate Hessians (finite differences, BFGS ``hess_inv``, hand-written code) against
the exact one, and say why they differ.

Every candidate gets a cause from a fixed vocabulary, with the evidence behind it:

* ``ok``: agrees with the exact Hessian (scaled entries within 1e-3, standard errors within
  0.1%).
* ``sign``: it is the Hessian of the log-likelihood, not of its negative (``C ~ -H``).
* ``not_a_hessian``: a BFGS inverse-Hessian approximation. BFGS builds it from gradient
  differences along the path it took, starting from a multiple of the identity; each iteration
  is one rank-two update, so after ``k`` iterations at most ``2k`` directions carry curvature
  information, and even then only the curvature averaged along the steps, not at the optimum.
  It is a preconditioner for the next step, not an estimate of ``H^-1``.
* ``rounding``: a finite-difference step too small for ``|f|``: the rounding error
  ``~ eps |f| / h^2`` exceeds the truncation error.
* ``truncation``: a finite-difference step too large: the ``h^2`` truncation term dominates.
* ``indefinite``: the candidate has negative curvature (its "variances" can be negative);
  the direction is named. If the exact Hessian is indefinite too, the point is a saddle.
* ``not_at_optimum``: the gradient at the point is not negligible: no Hessian there gives
  valid standard errors, whichever is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._derivatives import gradient as exact_gradient
from ._derivatives import hessian as exact_hessian
from ._finite_diff import FDHessian, fd_hessian
from ._model import Model
from ._report import format_direction

__all__ = ["CAUSES", "CandidateAudit", "AuditReport", "audit", "audit_scipy", "StepSweep", "step_sweep"]

CAUSES = ("ok", "sign", "not_a_hessian", "rounding", "truncation", "indefinite", "not_at_optimum")
#: a candidate is "ok" when every entry, scaled by sqrt(|H_ii H_jj|), is within this of the
#: exact one and the standard errors agree to the same relative tolerance.
OK_TOL = 1e-3
#: the point is not an optimum when a Newton step from it is longer than this many standard
#: errors (Mahalanobis length sqrt(g' H^-1 g); where H is not positive definite, the largest
#: |g_i| / sqrt(|H_ii|)). Closer than that, Hessians and standard errors there differ from
#: those at the optimum by a negligible third-derivative term.
STATIONARY_TOL = 0.1


# ------------------------------------------------------------------------------------------
# Step sweep
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepSweep:
    """Error of a finite-difference Hessian against the exact one, over a grid of steps.

    ``errors[k]`` is the largest scaled error ``|C_ij - H_ij| / sqrt(|H_ii H_jj|)`` at
    ``steps[k]`` (relative steps ``h_i = steps[k] * max(|x_i|, 1)`` unless ``relative=False``).
    Small steps lose to rounding (error ~ 1/h^2), large ones to truncation (~ h^2): the V.
    """

    steps: np.ndarray
    errors: np.ndarray
    method: str
    relative: bool

    @property
    def best_step(self) -> float:
        return float(self.steps[int(np.nanargmin(self.errors))])

    @property
    def best_error(self) -> float:
        return float(np.nanmin(self.errors))

    def plot(self, ax=None):
        """Log-log plot of error against step (needs the ``plot`` extra: matplotlib)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("step_sweep(...).plot() needs matplotlib: pip install 'autohess[plot]'") from err
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.loglog(self.steps, self.errors, "o-")
        ax.axvline(self.best_step, color="grey", linestyle=":")
        ax.set_xlabel("step h" + (" (relative)" if self.relative else ""))
        ax.set_ylabel("max scaled error vs exact Hessian")
        ax.set_title(f"{self.method} finite differences")
        return ax

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
        relative: ``h_i = step * max(|x_i|, 1)`` (default) or the same absolute step for all.
    """
    grid = np.logspace(-10, -1, 19) if steps is None else np.asarray(steps, dtype=np.float64)
    exact = np.asarray(exact_hessian(target, x, check=False).matrix)
    flat = _flat_point(target, x)
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
# Audit
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CandidateAudit:
    """What one candidate gets wrong, and why."""

    name: str
    kind: str
    hessian: np.ndarray  # the candidate as a Hessian (inverted if given as an inverse)
    rel_frobenius: float
    max_scaled_error: float
    worst: tuple[tuple[str, float, float], ...]  # (entry, candidate, exact)
    eigenvalues: np.ndarray  # scaled by the exact Hessian's diagonal
    sign_flips: int
    se: np.ndarray
    se_exact: np.ndarray
    causes: tuple[str, ...]
    evidence: tuple[str, ...]

    @property
    def cause(self) -> str:
        """The main cause (the first of ``causes``)."""
        return self.causes[0]

    @property
    def verdict(self) -> str:
        if self.causes == ("ok",):
            return "trust it: " + "; ".join(self.evidence)
        return "do not use it: " + "; ".join(self.evidence)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "causes": list(self.causes),
            "evidence": list(self.evidence), "rel_frobenius": self.rel_frobenius,
            "max_scaled_error": self.max_scaled_error,
            "worst": [list(w) for w in self.worst], "eigenvalues_scaled": self.eigenvalues.tolist(),
            "sign_flips": self.sign_flips, "se": self.se.tolist(), "se_exact": self.se_exact.tolist(),
        }


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The exact Hessian at the point and one ``CandidateAudit`` per candidate."""

    labels: tuple[str, ...]
    exact: np.ndarray
    gradient: np.ndarray
    value: float
    newton_length: float  # Newton step to the optimum, in standard errors (see STATIONARY_TOL)
    stationary: bool
    exact_positive_definite: bool
    candidates: tuple[CandidateAudit, ...]

    def __getitem__(self, name: str) -> CandidateAudit:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate named {name!r}; have {[c.name for c in self.candidates]}")

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels), "exact": self.exact.tolist(), "gradient": self.gradient.tolist(),
            "value": self.value, "newton_length": self.newton_length, "stationary": self.stationary,
            "exact_positive_definite": self.exact_positive_definite,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def __str__(self) -> str:
        se = np.sqrt(np.diag(np.linalg.inv(self.exact))) if self.exact_positive_definite else None
        head = [
            f"Audit against the exact Hessian ({len(self.labels)} parameters, f = {self.value:.6g}, "
            f"Newton step to the optimum {self.newton_length:.2g} standard errors: "
            f"{'at the optimum' if self.stationary else 'NOT at the optimum'}; exact Hessian "
            f"{'positive definite' if self.exact_positive_definite else 'NOT positive definite'})",
            "",
            f"{'candidate':<30}{'rel. Frobenius':>15}{'max scaled':>12}{'min eig':>10}{'SE ratio':>17}  cause",
        ]
        for c in self.candidates:
            ratio = c.se / c.se_exact if se is not None else np.full(len(self.labels), np.nan)
            finite = ratio[np.isfinite(ratio)]
            rtxt = f"{finite.min():.2g}..{finite.max():.2g}" if finite.size else "n/a"
            if finite.size < ratio.size:
                rtxt += f" ({ratio.size - finite.size} NaN)"
            head.append(
                f"{c.name[:29]:<30}{c.rel_frobenius:>15.2e}{c.max_scaled_error:>12.2e}"
                f"{np.min(c.eigenvalues):>10.3g}{rtxt:>17}  {', '.join(c.causes)}"
            )
        head.append("")
        for c in self.candidates:
            head.append(f"{c.name}: {c.verdict}")
        return "\n".join(head)


def _as_candidate(name: str, spec: Any) -> dict:
    if isinstance(spec, FDHessian):
        return {"matrix": np.asarray(spec.matrix), "kind": "hessian", "step": np.asarray(spec.step), "method": spec.method}
    if isinstance(spec, dict):
        out = dict(spec)
        if "matrix" not in out:
            raise ValueError(f"candidate {name!r}: a dict candidate needs a 'matrix' entry")
    elif isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], str):
            raise ValueError(f"candidate {name!r}: give (matrix, kind) with kind 'hessian' or 'inverse'")
        out = {"matrix": spec[0], "kind": spec[1]}
    else:
        out = {"matrix": spec}
    if hasattr(out["matrix"], "todense"):  # scipy's LbfgsInvHessProduct
        out["matrix"] = out["matrix"].todense()
    out["matrix"] = np.asarray(getattr(out["matrix"], "matrix", out["matrix"]), dtype=np.float64)
    out.setdefault("kind", "hessian")
    if out["kind"] not in ("hessian", "inverse", "bfgs"):
        raise ValueError(f"candidate {name!r}: kind must be 'hessian', 'inverse' or 'bfgs', got {out['kind']!r}")
    if out["kind"] == "inverse" and "bfgs" in name.lower():
        out["kind"] = "bfgs"
    return out


def _se(hess: np.ndarray) -> np.ndarray:
    try:
        var = np.diag(np.linalg.inv(hess))
    except np.linalg.LinAlgError:
        return np.full(hess.shape[0], np.nan)
    return np.where(var > 0, np.sqrt(np.abs(var)), np.nan)


def _fd_estimates(target, x, h: np.ndarray, exact: np.ndarray, value: float):
    """Per-entry scaled rounding bound and truncation estimate of central differences at ``h``."""
    eps = np.finfo(np.float64).eps
    d = _diag_scale(exact)
    rounding = 4.0 * eps * abs(value) / (np.outer(h, h) * np.outer(d, d))
    coarse = np.asarray(fd_hessian(target, x, method="central", step=2.0 * h).matrix)
    fine = np.asarray(fd_hessian(target, x, method="central", step=h).matrix)
    # central differences err by c*h^2, so FD(2h) - FD(h) = 3*c*h^2
    truncation = np.abs(_scaled_error(coarse, exact) - _scaled_error(fine, exact)) / 3.0
    return rounding, truncation


def _infer_step(target, x, matrix: np.ndarray, err: np.ndarray, exact: np.ndarray, flat: np.ndarray):
    """The step (uniform or relative) whose central differences reproduce most wrong entries.

    Truncation error is deterministic, so entries dominated by it are reproduced by our own
    differences at the user's step; rounding noise is not. Returns ``None`` if nothing matches.
    """
    wrong = np.abs(err) > OK_TOL
    best_count, best_step = 0, None
    for h in np.logspace(-10, -1, 37):
        for relative in (False, True):
            hv = h * (np.maximum(np.abs(flat), 1.0) if relative else np.ones_like(flat))
            fd = np.asarray(fd_hessian(target, x, method="central", step=hv).matrix)
            gap = np.abs(_scaled_error(fd, exact) - err)
            matched = int(np.sum(wrong & (gap <= 0.1 * np.abs(err))))
            if matched > best_count:
                best_count, best_step = matched, hv
    return best_step


def _fd_causes(target, x, spec, exact, err, value, labels) -> list:
    """Rounding and/or truncation, entry by entry, for a finite-difference candidate."""
    flat = _flat_point(target, x)
    step = spec.get("step")
    inferred = step is None
    if inferred:
        step = _infer_step(target, x, spec["matrix"], err, exact, flat)
    wrong = np.abs(err) > OK_TOL
    iu = np.triu_indices(len(flat))

    def entries(mask):
        idx = [(i, j) for i, j in zip(*iu) if mask[i, j]]
        idx.sort(key=lambda ij: -abs(err[ij]))
        more = f" and {len(idx) - 4} more" if len(idx) > 4 else ""
        return ", ".join(f"[{labels[i]}, {labels[j]}]" for i, j in idx[:4]) + more

    if step is None:
        return [("rounding", (
            f"its errors (max scaled {np.max(np.abs(err)):.2g}, at {entries(wrong)}) are noise that no "
            "finite-difference step reproduces, the signature of rounding: eps*|f| = "
            f"{np.finfo(np.float64).eps * abs(value):.2g} divided by h^2 swamps these second differences"
        ))]
    h = np.broadcast_to(np.asarray(step, dtype=np.float64), flat.shape)
    rounding, truncation = _fd_estimates(target, x, h, exact, value)
    hmin, hmax = float(np.min(h)), float(np.max(h))
    htxt = f"h = {hmin:.2g}" if np.isclose(hmin, hmax) else f"h = {hmin:.2g}..{hmax:.2g}"
    htxt += " (inferred)" if inferred else ""
    by_rounding = wrong & (rounding >= truncation)
    by_truncation = wrong & ~by_rounding
    out = []
    if by_rounding.any() or not wrong.any():
        out.append(("rounding", (
            f"step {htxt} is too small for |f| = {abs(value):.3g} at {entries(by_rounding) or 'no entry'}: "
            f"there the rounding error eps*|f|/(h_i h_j) (up to {np.max(np.where(by_rounding, rounding, 0)):.2g}, "
            "scaled) exceeds the truncation error; take h_i ~ eps^(1/4)*max(|x_i|, 1) or use the exact Hessian"
        )))
    if by_truncation.any():
        out.append(("truncation", (
            f"step {htxt} is too large at {entries(by_truncation)}: there the truncation error "
            f"(~h^2 f4/12, up to {np.max(np.where(by_truncation, truncation, 0)):.2g}, scaled) dominates; "
            "take a smaller step or Richardson extrapolation, or use the exact Hessian"
        )))
    return out


def audit(target: Model | Callable, x: Any = None, candidates: Optional[dict] = None) -> AuditReport:
    """Compare candidate Hessians with the exact one at ``x`` and explain each difference.

    Args:
        target: the objective as a JAX scalar function (a negative log-likelihood), or an
            ``ah.Model`` (its negative log-likelihood on the natural scale).
        x: the point (for a model: natural-scale parameters; default its initial values).
        candidates: ``{name: spec}``. ``spec`` is a ``(p, p)`` Hessian; or ``(matrix,
            "inverse")`` for an inverse Hessian / covariance such as scipy's ``hess_inv``
            (named with "bfgs" in it, it is treated as a BFGS approximation); or an
            ``ah.fd_hessian`` result (its step is then known); or a dict with ``matrix``,
            ``kind`` (``"hessian"``, ``"inverse"``, ``"bfgs"``) and optionally ``step``.

    Returns:
        ``AuditReport``: print it for a table and one verdict per candidate; ``to_dict()``.

    Example:
        >>> rep = ah.audit(f, x, {"bfgs hess_inv": (res.hess_inv, "inverse"), "mine": H_mine})
        >>> print(rep)
    """
    if not candidates:
        raise ValueError("audit needs at least one candidate: {name: matrix}")
    exact_h = exact_hessian(target, x, check=False)
    exact = np.asarray(exact_h.matrix, dtype=np.float64)
    labels = exact_h.labels
    p = len(labels)
    grad = np.asarray(exact_gradient(target, x), dtype=np.float64)
    if isinstance(target, Model):
        value = -target.loglik(x if x is not None else None)
    else:
        from ._derivatives import _prepare_point

        value = float(target(_prepare_point(x)[0]))
    d = _diag_scale(exact)
    scaled_grad = np.abs(grad) / d
    exact_eig, exact_vec = np.linalg.eigh(exact / np.outer(d, d))
    exact_pd = bool(exact_eig[0] > 0)
    newton_length = float(np.sqrt(grad @ np.linalg.solve(exact, grad))) if exact_pd else float(np.max(scaled_grad))
    stationary = newton_length <= STATIONARY_TOL
    se_exact = _se(exact) if exact_pd else np.full(p, np.nan)
    iu = np.triu_indices(p)
    results = []
    for name, raw in candidates.items():
        spec = _as_candidate(name, raw)
        M = spec["matrix"]
        if M.shape != (p, p):
            raise ValueError(f"candidate {name!r} has shape {M.shape}, the exact Hessian is ({p}, {p})")
        if spec["kind"] == "hessian":
            C = M
        else:
            try:
                C = np.linalg.inv(M)
            except np.linalg.LinAlgError:
                C = np.full_like(M, np.nan)
        err = _scaled_error(C, exact)
        max_err = float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else np.inf
        rel_frob = float(np.linalg.norm(C - exact) / np.linalg.norm(exact))
        order = np.argsort(-np.abs(err[iu]))[:3]
        worst = tuple(
            (f"[{labels[iu[0][k]]}, {labels[iu[1][k]]}]", float(C[iu[0][k], iu[1][k]]), float(exact[iu[0][k], iu[1][k]]))
            for k in order
        )
        cand_scaled = C / np.outer(d, d)
        eig, vec = np.linalg.eigh(0.5 * (cand_scaled + cand_scaled.T)) if np.all(np.isfinite(C)) else (np.full(p, np.nan), None)
        big = np.abs(exact) > 1e-8 * np.max(np.abs(exact))
        flips = int(np.sum((np.sign(C) != np.sign(exact)) & big & np.isfinite(C)))
        se = _se(C)
        se_rel = np.nanmax(np.abs(se / se_exact - 1.0)) if np.isfinite(se).all() and np.isfinite(se_exact).all() else np.inf
        causes, evidence = [], []
        agrees = max_err <= OK_TOL and (se_rel <= OK_TOL or not exact_pd)
        saddle_direction = format_direction(exact_vec[:, 0] / d / np.linalg.norm(exact_vec[:, 0] / d), labels)
        if agrees:
            evidence.append(f"it agrees with the exact Hessian (max scaled error {max_err:.2g})")
            if not exact_pd:
                causes.append("indefinite")
                evidence.append(
                    f"but the Hessian is indefinite along {saddle_direction}: the point is a saddle, "
                    "not a maximum, and no standard errors exist there"
                )
            elif stationary:
                causes.append("ok")
                evidence[-1] += f", standard errors within {se_rel:.1e}"
        elif np.linalg.norm(C + exact) <= 0.1 * np.linalg.norm(C - exact):
            causes.append("sign")
            evidence.append(
                f"it is minus the exact Hessian (||C + H|| / ||H|| = {np.linalg.norm(C + exact) / np.linalg.norm(exact):.2g}): "
                "the Hessian of the log-likelihood instead of the negative log-likelihood; flip its sign"
            )
        else:
            if spec["kind"] == "bfgs":
                causes.append("not_a_hessian")
                evidence.append(
                    "a BFGS inverse-Hessian approximation: built from gradient differences along the "
                    "optimiser's path, starting from a scaled identity, one rank-two update per "
                    "iteration, so it need not converge to H^-1 (it is a preconditioner for the "
                    f"next step); here it is off by {rel_frob:.2g} in relative Frobenius norm"
                )
            elif spec["kind"] == "hessian":
                for cause, why in _fd_causes(target, x, spec, exact, err, value, labels):
                    causes.append(cause)
                    evidence.append(why)
            else:
                causes.append("not_a_hessian")
                evidence.append(f"its inverse is off by {rel_frob:.2g} in relative Frobenius norm")
            if np.nanmin(eig) < 0:
                direction = format_direction(vec[:, 0] / d / np.linalg.norm(vec[:, 0] / d), labels) if vec is not None else "?"
                causes.append("indefinite")
                evidence.append(
                    f"it has negative curvature along {direction} (scaled eigenvalue {np.nanmin(eig):.2g}), "
                    "so some 'variances' from its inverse are negative or meaningless"
                    + ("" if exact_pd else f"; the exact Hessian is indefinite too, along {saddle_direction}: the point is a saddle")
                )
        if not stationary:
            causes.append("not_at_optimum")
            worst_g = labels[int(np.argmax(scaled_grad))]
            evidence.append(
                f"the point is not an optimum: a Newton step from it is {newton_length:.2g} standard "
                f"errors long (largest gradient component, per marginal standard deviation, for "
                f"{worst_g}); no Hessian here gives valid standard errors: optimise first"
            )
        if not exact_pd and "indefinite" not in causes:
            causes.append("indefinite")
            evidence.append(f"the exact Hessian itself is indefinite along {saddle_direction}: the point is a saddle")
        results.append(CandidateAudit(
            name=name, kind=spec["kind"], hessian=C, rel_frobenius=rel_frob, max_scaled_error=max_err,
            worst=worst, eigenvalues=np.asarray(eig), sign_flips=flips, se=se, se_exact=se_exact,
            causes=tuple(causes), evidence=tuple(evidence),
        ))
    return AuditReport(
        labels=tuple(labels), exact=exact, gradient=grad, value=float(value),
        newton_length=newton_length, stationary=stationary,
        exact_positive_definite=exact_pd, candidates=tuple(results),
    )


def audit_scipy(result: Any, negloglik: Callable, *, extra: Optional[dict] = None) -> AuditReport:
    """Audit a ``scipy.optimize.OptimizeResult``: its ``hess_inv`` (BFGS or L-BFGS-B) at
    ``result.x``, against the exact Hessian of ``negloglik`` (a JAX function of a flat vector).

    ``extra`` adds more candidates, as in ``audit``.
    """
    x = jnp.asarray(np.asarray(result.x, dtype=np.float64))
    candidates = {}
    hess_inv = getattr(result, "hess_inv", None)
    if hess_inv is not None:
        iterations = getattr(result, "nit", None)
        candidates[f"bfgs hess_inv ({iterations} iterations)" if iterations is not None else "bfgs hess_inv"] = {
            "matrix": hess_inv, "kind": "bfgs",
        }
    candidates.update(extra or {})
    if not candidates:
        raise ValueError("the OptimizeResult has no hess_inv and no extra candidates were given")
    return audit(negloglik, x, candidates)
