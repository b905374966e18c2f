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
  the direction is named.
* ``inverse``: the matrix given as a Hessian is the exact Hessian's inverse (a covariance).
* ``scale``: it is the exact Hessian on the other scale of a model's transforms (``log sigma``
  instead of ``sigma``).
* ``proportional``: it is the exact Hessian times a constant ``c != 1`` (a log-likelihood missing
  a factor, a mean instead of a sum, the deviance's factor 2, a variance-scaled Hessian).
* ``order``: it is the exact Hessian (or, given as an inverse, the exact inverse) with the
  parameters in another order (statsmodels' NB2 puts ``alpha`` last).
* ``asymmetric``: it is not symmetric (judged by its symmetric part).
* ``nonfinite``: it has NaN or infinite entries (a step that left the function's domain).
* ``unexplained``: none of the above reproduces its errors: an error in the code that made
  it, or a different matrix.
* ``not_at_optimum``: the gradient at the point is not negligible: no Hessian there gives
  valid standard errors, whichever is used.

And what the exact Hessian says about the point, whichever candidate is judged:

* ``saddle``: it is indefinite at a stationary point (a clearly negative direction, named).
* ``flat``: a direction whose curvature the point does not resolve: below rounding, or within
  what the gradient left there can produce (``_report.curvature_allowance``; a flat valley
  ``a*b = const`` reached by BFGS shows a curvature of either sign there). The parameters in
  it are not identified; the others get standard errors from the pseudo-inverse.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._covariance import face_pseudo_inverse
from ._derivatives import gradient as exact_gradient
from ._derivatives import hessian as exact_hessian
from ._derivatives import scores
from ._diagnostics import AFFECTED_LOADING, FLAT_CONDITION
from ._finite_diff import FDHessian, fd_hessian
from ._html import table as html_table
from ._model import Model
from ._report import AT_OPTIMUM_SE, curvature_allowance, format_direction, standard_errors_from_optimum
from ._validation import UNTRACEABLE, not_traceable
from ._audit_steps import OK_TOL, StepSweep, _diag_scale, _entries, _fd_causes, _flat_point, _scaled_error, step_sweep

__all__ = ["CAUSES", "CandidateAudit", "AuditReport", "audit", "audit_scipy", "StepSweep", "step_sweep"]

CAUSES = (
    "ok", "sign", "not_a_hessian", "rounding", "truncation", "indefinite", "inverse", "scale",
    "asymmetric", "nonfinite", "unexplained", "not_at_optimum", "saddle", "flat", "proportional", "order",
)
#: the point is not an optimum when a Newton step from it is longer than this many standard
#: errors (``_report.standard_errors_from_optimum``, the rule ``evaluate``'s report uses too).
STATIONARY_TOL = AT_OPTIMUM_SE
#: a candidate's own eigenvalue counts as negative below this fraction of its largest (above
#: it, eigh's rounding of a matrix whose scaled entries span many orders of magnitude)
NEGATIVE_REL = 1e-10



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
    #: (p, p) cause entry by entry: "rounding" or "truncation" where a finite-difference step
    #: explains that entry's error, "ok" within OK_TOL (scaled), else the candidate's main cause
    entry_causes: Optional[np.ndarray] = None

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
            "entry_causes": None if self.entry_causes is None else [[str(v) for v in row] for row in self.entry_causes],
        }


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The exact Hessian at the point and one ``CandidateAudit`` per candidate.

    ``newton_length``: how far the point is from the optimum, in standard errors (the Newton
    step's Mahalanobis length on the directions the exact Hessian resolves, and the gradient
    per unit of scaled curvature on the others). ``exact_positive_definite``: every direction
    has a resolved positive curvature (``flat_directions`` and ``negative_directions`` count
    the others; see ``curvature_allowance``). ``scale``: the scale of the parameters
    (``"natural"`` or, for a model, ``"unconstrained"``).
    """

    labels: tuple[str, ...]
    exact: np.ndarray
    gradient: np.ndarray
    value: float
    newton_length: float
    stationary: bool
    exact_positive_definite: bool
    candidates: tuple[CandidateAudit, ...]
    scale: str = "natural"
    flat_directions: int = 0
    negative_directions: int = 0

    def __getitem__(self, name: str) -> CandidateAudit:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate named {name!r}; have {[c.name for c in self.candidates]}")

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels), "exact": self.exact.tolist(), "gradient": self.gradient.tolist(),
            "value": self.value, "newton_length": self.newton_length, "stationary": self.stationary,
            "exact_positive_definite": self.exact_positive_definite, "scale": self.scale,
            "flat_directions": self.flat_directions, "negative_directions": self.negative_directions,
            "candidates": [c.to_dict() for c in self.candidates],
        }

    def __str__(self) -> str:
        if self.exact_positive_definite:
            curvature = "positive definite"
        else:
            parts = [f"{n} {what}" for n, what in ((self.negative_directions, "negative"), (self.flat_directions, "flat"))
                     if n]
            curvature = "NOT positive definite: " + ", ".join(parts) + " direction(s)"
        head = [
            f"Audit against the exact Hessian ({len(self.labels)} parameters, {self.scale} scale, "
            f"f = {self.value:.6g}, {self.newton_length:.2g} standard errors from the optimum: "
            f"{'at the optimum' if self.stationary else 'NOT at the optimum'}; exact Hessian {curvature})",
            "",
            f"{'candidate':<30}{'rel. Frobenius':>15}{'max scaled':>12}{'min eig':>11}{'SE ratio':>20}  cause",
        ]
        for c in self.candidates:
            min_eig, rtxt = candidate_cells(c)
            head.append(
                f"{c.name[:29]:<30}{c.rel_frobenius:>15.2e}{c.max_scaled_error:>12.2e}"
                f"{min_eig:>11} {rtxt:>19}  {', '.join(c.causes)}"
            )
        head.append("")
        for c in self.candidates:
            head.append(f"{c.name}: {c.verdict}")
        return "\n".join(head)

    def plot(self, candidates=None, *, fig=None):
        """Error per entry and heat maps by cause: ``ah.plot.audit`` (needs matplotlib)."""
        from .plot import audit as draw

        return draw(self, candidates, fig=fig)

    def _repr_html_(self) -> str:
        """Its heading, one row per candidate, then each verdict."""
        rows = []
        for c in self.candidates:
            min_eig, rtxt = candidate_cells(c)
            rows.append([c.name, f"{c.rel_frobenius:.2e}", f"{c.max_scaled_error:.2e}", min_eig, rtxt, ", ".join(c.causes)])
        verdicts = [f"{c.name}: {c.verdict}" for c in self.candidates]
        return html_table(str(self).split("\n")[0], ["candidate", "rel. Frobenius", "max scaled", "min eig", "SE ratio", "cause"],
                          rows, verdicts)


def candidate_cells(c: "CandidateAudit") -> tuple[str, str]:
    """The audit table's ``min eig`` and ``SE ratio`` cells of one candidate (text and HTML)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = c.se / c.se_exact
    finite = ratio[np.isfinite(ratio)]
    rtxt = f"{finite.min():.3g}..{finite.max():.3g}" if finite.size else "n/a"
    if 0 < finite.size < ratio.size:
        rtxt += f" ({ratio.size - finite.size} NaN)"
    min_eig = f"{np.nanmin(c.eigenvalues):.3g}" if np.isfinite(c.eigenvalues).any() else "n/a"
    return min_eig, rtxt


def _as_candidate(name: str, spec: Any) -> dict:
    if isinstance(spec, FDHessian):
        out = {"matrix": spec.matrix, "kind": "hessian", "step": np.asarray(spec.step), "method": spec.method}
    elif isinstance(spec, dict):
        out = dict(spec)
        if "matrix" not in out:
            raise ValueError(f"candidate {name!r}: a dict candidate needs a 'matrix' entry")
        unknown = sorted(set(out) - {"matrix", "kind", "step", "method"}, key=str)
        if unknown:  # a misspelt 'step' would silently turn a known step into an inferred one
            raise ValueError(f"candidate {name!r}: unknown dict keys {unknown}; the keys are 'matrix', "
                             "'kind' ('hessian', 'inverse' or 'bfgs'), 'step' and 'method'")
    elif isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], str):
            raise ValueError(f"candidate {name!r}: give (matrix, kind) with kind 'hessian' or 'inverse'")
        out = {"matrix": spec[0], "kind": spec[1]}
    else:
        out = {"matrix": spec}
    frame = out["matrix"]
    if hasattr(frame, "index") and hasattr(frame, "columns"):  # a labelled pandas DataFrame
        out["frame_labels"] = (list(frame.index), list(frame.columns))
    if hasattr(out["matrix"], "todense"):  # scipy's LbfgsInvHessProduct (L-BFGS-B's hess_inv)
        out["matrix"] = out["matrix"].todense()
        out["limited_memory"] = True
    raw = np.asarray(getattr(out["matrix"], "matrix", out["matrix"]))
    if np.iscomplexobj(raw):
        raise ValueError(f"candidate {name!r} is complex; a Hessian is a real matrix")
    if raw.dtype.kind not in "fiub":
        raise ValueError(f"candidate {name!r} has dtype {raw.dtype}; give a real (p, p) array")
    out["matrix"] = raw.astype(np.float64)
    out.setdefault("kind", "hessian")
    if out["kind"] not in ("hessian", "inverse", "bfgs"):
        raise ValueError(f"candidate {name!r}: kind must be 'hessian', 'inverse' or 'bfgs', got {out['kind']!r}")
    if out["kind"] == "inverse" and "bfgs" in name.lower():
        out["kind"] = "bfgs"
    return out


def _align(name: str, spec: dict, labels: tuple) -> dict:
    """A labelled frame is matched to the exact Hessian's labels (reordered); one whose labels
    are not those is refused: comparing entries by position across orders gives wrong causes."""
    if spec.get("step") is not None and np.shape(spec["step"]) not in ((), (1,), (len(labels),)):
        raise ValueError(
            f"candidate {name!r}: step has shape {np.shape(spec['step'])}, the point has {len(labels)} "
            "parameters: give one step for all, or one per parameter in label order"
        )
    rows, cols = spec.pop("frame_labels", (None, None))
    if rows is None:
        return spec
    p = len(labels)
    if list(rows) == list(range(len(rows))) and list(cols) == list(range(len(cols))):
        return spec  # a frame without labels (default RangeIndex): positional, as an array
    want = [str(v) for v in labels]
    for axis, got in (("index", rows), ("columns", cols)):
        got = [str(v) for v in got]
        if sorted(got) != sorted(want) or len(set(got)) != len(got):
            missing = [v for v in want if v not in got]
            extra = [v for v in got if v not in want]
            raise ValueError(
                f"candidate {name!r} is a DataFrame whose {axis} labels are not the parameters' labels "
                f"(missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, unknown {extra[:5]}"
                f"{' ...' if len(extra) > 5 else ''}; expected {want[:6]}{' ...' if p > 6 else ''}): rename "
                "them to these labels so it can be matched by label, or pass .to_numpy() if its rows "
                "and columns are already in this order"
            )
    r = [[str(v) for v in rows].index(v) for v in want]
    c = [[str(v) for v in cols].index(v) for v in want]
    out = dict(spec)
    out["matrix"] = spec["matrix"][np.ix_(r, c)]
    return out


def _se(hess: np.ndarray) -> np.ndarray:
    try:
        var = np.diag(np.linalg.inv(hess))
    except np.linalg.LinAlgError:
        return np.full(hess.shape[0], np.nan)
    return np.where(var > 0, np.sqrt(np.abs(var)), np.nan)


# ------------------------------------------------------------------------------------------
# The exact Hessian's own curvature, and the context every candidate is judged in
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Exact:
    """The exact Hessian at the point and what it says about the point."""

    target: Any
    x: Any
    flat_x: np.ndarray
    labels: tuple
    value: float
    grad: np.ndarray
    matrix: np.ndarray
    d: np.ndarray  # sqrt|H_ii| (1 where 0): the scale of the unit-free comparisons
    lam: np.ndarray  # eigenvalues of the unit-diagonal scaled Hessian, ascending
    vec: np.ndarray
    allowance: float
    negative: np.ndarray  # per eigen-direction: clearly negative
    flat: np.ndarray  # per eigen-direction: |curvature| not resolved at this point
    newton_length: float
    stationary: bool
    se: np.ndarray
    scale: str = "natural"
    other: Optional[tuple[str, np.ndarray]] = None  # (the other scale's name, exact Hessian on it)
    opg: Optional[np.ndarray] = None
    _fd: dict = dataclasses.field(default_factory=dict)  # step -> fd_error: searches revisit steps
    # (model, full flat point, sampled indices) where this context is a model's restricted to a
    # sample (``restricted``): its fourth derivatives then reuse one compiled program per model
    sampled_from: Optional[tuple] = None

    @property
    def regular(self) -> bool:
        return not (self.negative.any() or self.flat.any())

    def direction(self, j: int) -> str:
        v = self.vec[:, j] / self.d
        return format_direction(v / np.linalg.norm(v), self.labels)

    def restricted(self, S: np.ndarray) -> "_Exact":
        """The same context for the parameters ``S`` only, the others held at ``x``: its
        differences are the full stencil's entries in the ``S`` block, evaluated at the same
        points (so with the same rounding), at a fraction of the cost."""
        flat = jnp.asarray(self.flat_x)
        S_j = jnp.asarray(S)
        if isinstance(self.target, Model):
            model = self.target

            def g(z):
                return model.negloglik_flat(flat.at[S_j].set(z), model.data, None)

            sampled_from = (model, flat, S_j)
        else:
            sampled_from = None
            from jax.flatten_util import ravel_pytree

            from ._derivatives import _prepare_point

            unravel = ravel_pytree(_prepare_point(self.x)[0])[1]
            f = self.target

            def g(z):
                return f(unravel(flat.at[S_j].set(z)))

        block = np.ix_(S, S)
        return dataclasses.replace(
            self, target=g, x=jnp.asarray(self.flat_x[S]), flat_x=self.flat_x[S],
            labels=tuple(self.labels[i] for i in S), grad=self.grad[S], matrix=self.matrix[block],
            d=self.d[S], se=self.se[S], other=None, opg=None, _fd={}, sampled_from=sampled_from,
        )

    def flat_fn(self) -> Callable:
        """``t -> f`` of the flat vector, the function ``fd_hessian(target, x)`` differences."""
        if isinstance(self.target, Model):
            model = self.target
            return lambda t: model.negloglik_flat(t, model.data, None)
        from jax.flatten_util import ravel_pytree

        from ._derivatives import _prepare_point

        unravel = ravel_pytree(_prepare_point(self.x)[0])[1]
        f = self.target
        return lambda t: f(unravel(t))

    def fourth(self) -> np.ndarray:
        """``Q[i, j] = d^4 f / dx_i^3 dx_j`` at the point (exact; ``Q[i, i] = f_iiii``): the
        coefficients of central differences' truncation error (``fd_h - H ~ h^2 Q / 6``-like,
        ``truncation_coefficients``). One compiled program, four nested forward passes vmapped
        over ``i`` and ``j``: ``p^2`` fourth-order directional derivatives, where the grid
        search it replaces evaluated ~120 finite-difference Hessians of ``1 + 2 p^2`` points."""
        if "fourth" not in self._fd:
            x0 = jnp.asarray(self.flat_x, jnp.float64)
            if isinstance(self.target, Model):
                model = self.target
                program = model._jitted(("audit", "fourth"), lambda: jax.jit(
                    lambda x, data: _fourth_rows(lambda t: model.negloglik_flat(t, data, None), x)))
                rows = program(x0, model.data)
            elif self.sampled_from is not None:
                # a model's sample (the same size, 24, at every audit): one program per model
                model, flat, S = self.sampled_from
                program = model._jitted(("audit", "fourth", "sampled", int(S.shape[0])), lambda: jax.jit(
                    lambda z, flat, S, data: _fourth_rows(
                        lambda t: model.negloglik_flat(flat.at[S].set(t), data, None), z)))
                rows = program(x0, flat, S, model.data)
            else:
                rows = jax.jit(lambda x: _fourth_rows(self.flat_fn(), x))(x0)
            self._fd["fourth"] = np.asarray(rows, dtype=np.float64)
        return self._fd["fourth"]

    def fd_error(self, h: np.ndarray) -> np.ndarray:
        """Central second differences at step ``h`` minus the exact Hessian (unscaled)."""
        key = np.asarray(h, dtype=np.float64).tobytes()
        if key not in self._fd:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fd = np.asarray(fd_hessian(self.target, self.x, method="central", step=h).matrix)
            self._fd[key] = fd - self.matrix
        return self._fd[key]


def _fourth_rows(F: Callable, x0: jax.Array) -> jax.Array:
    """``Q[i, j] = d^4 F / dx_i^3 dx_j`` at ``x0``: the third directional derivative along
    ``e_i``, differentiated along every ``e_j``. Forward mode throughout: it differentiates
    whatever the exact Hessian's forward-over-forward mode does (loops without a reverse rule,
    ``lax.while_loop``), and compiled in about half the time of reverse-over-forward."""

    def third(y, v):
        d1 = lambda z: jax.jvp(F, (z,), (v,))[1]  # noqa: E731
        d2 = lambda z: jax.jvp(d1, (z,), (v,))[1]  # noqa: E731
        return jax.jvp(d2, (y,), (v,))[1]

    eye = jnp.eye(x0.shape[0], dtype=x0.dtype)
    return jax.vmap(lambda v: jax.jacfwd(third)(x0, v))(eye)


def _exact_context(target, x, labels, value, grad, exact, **known) -> _Exact:
    """The exact Hessian's classification at ``x``; ``known``: ``scale``, ``other``, ``opg``."""
    d = _diag_scale(exact)
    lam, vec = np.linalg.eigh(exact / np.outer(d, d))
    top = float(np.max(np.abs(lam)))
    g_scaled = grad / d
    allowance = curvature_allowance(top, float(np.max(np.abs(g_scaled))))
    negative = lam < -allowance
    flat = np.abs(lam) <= allowance
    newton_length = standard_errors_from_optimum(g_scaled, lam, vec, allowance)  # evaluate's rule too
    if negative.any():
        se = np.full(len(labels), np.nan)  # no maximum here: no standard errors
    elif flat.any():
        # the parameters off the flat directions keep the pseudo-inverse's SEs (statsmodels' pinv)
        affected = np.any((np.abs(vec) > AFFECTED_LOADING) & flat[None, :], axis=1)
        pinv = face_pseudo_inverse(jnp.asarray(exact), jnp.asarray(~affected), jnp.asarray(lam),
                                   jnp.asarray(vec / d[:, None]), jnp.asarray(flat))
        se = np.sqrt(np.diag(np.asarray(pinv)))
    else:
        se = _se(exact)
    return _Exact(
        target=target, x=x, flat_x=_flat_point(target, x), labels=tuple(labels), value=value, grad=grad,
        matrix=exact, d=d, lam=lam, vec=vec, allowance=allowance, negative=negative, flat=flat,
        newton_length=newton_length, stationary=newton_length <= STATIONARY_TOL, se=se, **known,
    )


def _exact_causes(ex: _Exact) -> list:
    """What the exact Hessian itself says: a saddle, flat directions (every candidate inherits
    these: no Hessian gives standard errors along them)."""
    out = []
    for j in np.flatnonzero(ex.negative):
        if ex.stationary:
            out.append(("saddle", (
                f"the exact Hessian is indefinite along {ex.direction(j)} (scaled curvature {ex.lam[j]:.2g}): "
                "the point is a saddle, not a maximum, and no standard errors exist there"
            )))
    for j in np.flatnonzero(ex.flat):
        top = float(np.max(np.abs(ex.lam)))
        why = (
            f"below {1 / FLAT_CONDITION:.0e} of the largest: rounding" if abs(ex.lam[j]) <= top / FLAT_CONDITION
            else f"within what the gradient left at this point ({ex.allowance:.2g} per marginal standard "
            "deviation) can produce, so this point cannot tell a flat direction from a weakly identified "
            "one: optimise further (ah.fit) and audit again"
        )
        out.append(("flat", (
            f"the exact Hessian is flat along {ex.direction(j)} (scaled curvature {ex.lam[j]:.2g}, {why}): "
            "the parameters are not identified along it, and any finite standard errors a candidate "
            "gives for the parameters in it are artefacts"
        )))
    return out


# ------------------------------------------------------------------------------------------
# Audit
# ------------------------------------------------------------------------------------------
def _proportional(ex: _Exact, C: np.ndarray) -> tuple[float, float]:
    """``(c, gap)``: the least-squares multiple ``c`` of the exact Hessian closest to ``C`` (in
    scaled entries) and the largest scaled entry of ``C - c H``."""
    dd = np.outer(ex.d, ex.d)
    Cs, Hs = C / dd, ex.matrix / dd
    c = float(np.sum(Cs * Hs) / np.sum(Hs * Hs))
    return c, float(np.max(np.abs(Cs - c * Hs)))


def _orders(C: np.ndarray, exact: np.ndarray) -> list:
    """Orders of the parameters worth trying for a candidate given in another order: every
    rotation (one parameter moved from first to last, as statsmodels' NB2 puts alpha last where
    a dict of parameters sorts it first) and the order that matches the diagonals by rank."""
    p = len(C)
    out = [np.roll(np.arange(p), k) for k in range(1, p)]
    with np.errstate(divide="ignore", invalid="ignore"):
        rank = np.empty(p, dtype=int)
        rank[np.argsort(np.log(np.abs(np.diag(exact))))] = np.argsort(np.log(np.abs(np.diag(C))))
    out.append(rank)
    return [o for o in out if not np.array_equal(o, np.arange(p))]


def _identify(ex: _Exact, C: np.ndarray, max_err: float, kind: str = "hessian") -> Optional[tuple[str, str]]:
    """Is a wrong 'Hessian' another matrix: the inverse, the other scale's Hessian, the OPG, a
    multiple of the exact Hessian, or the exact Hessian with its parameters in another order?
    Named when it agrees with that matrix to 10% (scaled) and 10x better than with the exact one.
    ``kind="inverse"``: ``C`` is the inverse of what was given (a covariance), so "inverse" and
    "OPG" are not among the answers."""
    found = []  # (cause, scaled gap, what it is)
    given = "its inverse" if kind == "inverse" else "it"
    if kind == "hessian":
        try:
            found.append(("inverse", np.max(np.abs(_scaled_error(np.linalg.inv(C), ex.matrix))),
                          "the exact Hessian's inverse (a covariance matrix), not a Hessian: pass it as (matrix, 'inverse')"))
        except np.linalg.LinAlgError:
            pass
    else:
        found.append(("inverse", np.max(np.abs(_scaled_error(np.linalg.inv(C), ex.matrix))),
                      "the exact Hessian itself, not its inverse: pass it as a Hessian (no 'inverse')"))
    c, gap = _proportional(ex, C)
    if c != 0 and abs(c - 1.0) > 10 * OK_TOL:
        # a factor lost or added: a sum vs a mean over observations (c = n or 1/n), the deviance
        # (-2 loglik: c = 2), a scale parameter folded in; the SEs from it are off by 1/sqrt(|c|)
        # judged relative to c: a small multiple of anything is close to a small multiple of H
        found.append(("proportional", max(gap, gap / abs(c)) if c != 0 else np.inf, (
            f"the exact Hessian times c = {c:.4g}, not the Hessian itself: a log-likelihood missing or "
            "carrying a factor (a mean instead of a sum over observations gives c = 1/n, the deviance "
            "-2 loglik gives c = 2) or a variance-scaled Hessian; standard errors from it are off by a "
            f"factor 1/sqrt({abs(c):.3g}) = {1 / np.sqrt(abs(c)):.3g}: fix the objective or divide by c"
        )))
    for order in _orders(C, ex.matrix):
        # candidate row k holds parameter order[k]: put it back in the exact Hessian's order
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        P = C[np.ix_(back, back)]
        seen = ", ".join(str(ex.labels[k]) for k in order[:8]) + (" ..." if len(order) > 8 else "")
        found.append(("order", np.max(np.abs(_scaled_error(P, ex.matrix))), (
            f"the exact {'inverse Hessian (a covariance)' if kind == 'inverse' else 'Hessian'} with its "
            f"parameters in another order (its rows are {seen}; the audit's are "
            f"{', '.join(map(str, ex.labels[:8]))}{' ...' if len(ex.labels) > 8 else ''}): a matrix from another program (statsmodels' NB2 puts alpha last, "
            "autohess sorts parameter names); reorder it, or pass a pandas DataFrame whose index and "
            "columns carry the labels, which the audit matches by label"
        )))
    if ex.other is not None:
        name, other = ex.other
        found.append(("scale", np.max(np.abs(_scaled_error(C, other))),
                      f"the Hessian on the {name} scale, while this audit is on the {ex.scale} scale: audit "
                      f"with scale={name!r}, or map it (at an optimum H_natural = J' H_u J, J = du/dx)"))
    if ex.opg is not None:
        found.append(("not_a_hessian", np.max(np.abs(_scaled_error(C, ex.opg))),
                      "the outer product of the scores (OPG/BHHH): it estimates the information only in "
                      "expectation, under a correct model; it is not the Hessian"))
    for cause, gap, what in found:
        if gap <= 0.1 and gap <= 0.1 * max_err:
            subject = "it" if cause == "order" or kind != "hessian" and cause == "inverse" else given
            return cause, f"{subject} is {what} (agrees with that to {gap:.2g}, scaled)"
    if kind != "hessian":
        return None
    # An approximate inverse (BFGS's hess_inv given as a Hessian) agrees with neither, but its
    # diagonal gives it away wherever the Hessian's diagonal is far from 1: C_ii H_ii is O(1)
    # (1 / (1 - R_i^2) for an exact inverse), while a Hessian has C_ii / H_ii ~ 1.
    c, h = np.diag(C), np.diag(ex.matrix)
    if np.all(c > 0) and np.all(h > 0):
        as_inverse = np.abs(np.log(c * h))
        as_hessian = np.abs(np.log(c / h))
        if np.median(as_inverse) < np.log(10.0) and np.median(as_hessian) > np.log(1e3):
            return "inverse", (
                f"its diagonal is that of an inverse Hessian (C_ii H_ii from {np.min(c * h):.2g} to "
                f"{np.max(c * h):.2g}, where a Hessian would give C_ii / H_ii ~ 1; here that ratio spans "
                f"{np.min(c / h):.2g} to {np.max(c / h):.2g}): an inverse-Hessian approximation such as BFGS's "
                "hess_inv, given as a Hessian; pass it as (matrix, 'inverse') to have it judged as one"
            )
    return None


def _disagreement(ex: _Exact, spec: dict, C: np.ndarray, err: np.ndarray, rel_frob: float, se_note: str,
                  entries: Optional[dict] = None) -> list:
    """Why a finite candidate that is not the exact Hessian (nor its negative) differs.
    ``entries`` (a dict) receives the rounding / truncation masks of a finite-difference split."""
    if spec["kind"] == "bfgs":
        if spec.get("limited_memory"):
            what = ("an L-BFGS inverse-Hessian approximation: only the last few (step, gradient change) "
                    "pairs of the optimiser's path, applied to a scaled identity")
        else:
            what = ("a BFGS inverse-Hessian approximation: built from gradient differences along the "
                    "optimiser's path, starting from a scaled identity, one rank-two update per iteration")
        return [("not_a_hessian", (
            f"{what}, so it need not converge to H^-1 (it is a preconditioner for the next step); here it "
            f"is off by {rel_frob:.2g} in relative Frobenius norm{se_note}"
        ))]
    max_err = float(np.max(np.abs(err)))
    if spec["kind"] == "inverse":
        known = _identify(ex, C, max_err, kind="inverse")
        if known is not None:
            return [known]
        return [("not_a_hessian", (
            f"its inverse is off by {rel_frob:.2g} in relative Frobenius norm{se_note}, and it is not the "
            f"inverse of the exact Hessian on the {ex.scale} scale"
            + (f" nor on the {ex.other[0]} scale" if ex.other is not None else "")
            + ", nor of a multiple of it, nor of it with the parameters in another order: a covariance of a "
            "different model or parameterisation, or at a different point"
        ))]
    known = _identify(ex, C, max_err) if spec.get("step") is None else None
    if known is not None and known[0] == "proportional" and 0.5 < _proportional(ex, C)[0] < 2.0:
        # truncation error can be nearly proportional to H (a symmetric f: every diagonal off
        # by the same fraction); a step that reproduces the errors is the likelier explanation
        fd = _fd_causes(ex, spec, C, err, se_note, entries)
        if fd[0][0] != "unexplained":
            return fd
        if entries is not None:
            entries.clear()
    if known is not None:
        return [known]
    return _fd_causes(ex, spec, C, err, se_note, entries)


def _judge(ex: _Exact, name: str, spec: dict) -> CandidateAudit:
    M = spec["matrix"]
    p = len(ex.labels)
    if M.shape != (p, p):
        raise ValueError(f"candidate {name!r} has shape {M.shape}, the exact Hessian is ({p}, {p})")
    causes, evidence = [], []
    split: dict = {}  # entry masks of a finite-difference explanation (``_fd_causes``)
    C = M
    if spec["kind"] != "hessian" and np.all(np.isfinite(M)):
        try:
            C = np.linalg.inv(M)
        except np.linalg.LinAlgError:
            C = np.full_like(M, np.nan)
            causes.append("not_a_hessian")
            evidence.append("it is singular, so it is not the inverse of any Hessian")
    finite = np.all(np.isfinite(C))
    if not finite and not causes:
        bad = ~np.isfinite(M)
        causes.append("nonfinite")
        evidence.append(
            f"{int(bad.sum())} of its entries are not finite ({_entries(ex, bad | bad.T, np.where(bad, 1.0, 0.0))}): a "
            "finite-difference step that leaves the function's domain (a variance stepped below 0) gives "
            f"this; f(x) = {ex.value:.6g} and the exact Hessian here are finite"
        )
    dd = np.outer(ex.d, ex.d)
    asym = np.abs(C - C.T) / dd if finite else np.zeros_like(C)
    if finite and np.max(asym) > OK_TOL:
        i, j = np.unravel_index(np.argmax(asym), asym.shape)
        causes.append("asymmetric")
        evidence.append(
            f"it is not symmetric (|C_ij - C_ji| up to {np.max(asym):.2g} scaled, at [{ex.labels[i]}, "
            f"{ex.labels[j]}]); a Hessian is: judged by its symmetric part"
        )
        C = 0.5 * (C + C.T)
    err = _scaled_error(C, ex.matrix)
    max_err = float(np.max(np.abs(err))) if finite else np.inf
    rel_frob = float(np.linalg.norm(C - ex.matrix) / np.linalg.norm(ex.matrix)) if finite else np.inf
    iu = np.triu_indices(p)
    order = np.argsort(-np.nan_to_num(np.abs(err[iu]), nan=np.inf))[:3]
    worst = tuple(
        (f"[{ex.labels[iu[0][k]]}, {ex.labels[iu[1][k]]}]", float(C[iu[0][k], iu[1][k]]), float(ex.matrix[iu[0][k], iu[1][k]]))
        for k in order
    )
    if finite:
        eig, vec = np.linalg.eigh(0.5 * (C + C.T) / dd)
    else:
        eig, vec = np.full(p, np.nan), None
    big = np.abs(ex.matrix) > 1e-8 * np.max(np.abs(ex.matrix))
    flips = int(np.sum((np.sign(C) != np.sign(ex.matrix)) & big & np.isfinite(C)))
    se = _se(C) if finite else np.full(p, np.nan)
    both = np.isfinite(se) & np.isfinite(ex.se)
    with np.errstate(invalid="ignore", divide="ignore"):
        se_rel = float(np.max(np.abs(se[both] / ex.se[both] - 1.0), initial=0.0))
    se_ok = bool(np.all(np.isfinite(se) == np.isfinite(ex.se))) and se_rel <= OK_TOL
    se_note = (f"; standard errors off by up to {se_rel:.1%}" if se_rel > OK_TOL and max_err <= OK_TOL else "")
    if finite and "nonfinite" not in causes:
        if max_err <= OK_TOL and (se_ok or not ex.regular):
            evidence.append(f"it agrees with the exact Hessian (max scaled error {max_err:.2g})")
            if ex.regular and ex.stationary:
                causes.append("ok")
                evidence[-1] += f", standard errors within {se_rel:.1e}"
        elif np.linalg.norm(C + ex.matrix) <= 0.1 * np.linalg.norm(C - ex.matrix):
            causes.append("sign")
            evidence.append(
                f"it is minus the exact Hessian (||C + H|| / ||H|| = {np.linalg.norm(C + ex.matrix) / np.linalg.norm(ex.matrix):.2g}, "
                f"{flips} entries of opposite sign): the Hessian of the log-likelihood instead of the "
                "negative log-likelihood; flip its sign"
            )
            flipped = _scaled_error(-C, ex.matrix)
            if np.max(np.abs(flipped)) > OK_TOL:  # what is left after flipping
                for cause, why in _disagreement(ex, spec, -C, flipped, float(np.linalg.norm(C + ex.matrix) / np.linalg.norm(ex.matrix)), ""):
                    causes.append(cause)
                    evidence.append("after flipping the sign: " + why)
        else:
            for cause, why in _disagreement(ex, spec, C, err, rel_frob, se_note, split):
                causes.append(cause)
                evidence.append(why)
        top_c = float(np.max(np.abs(eig)))
        negative_level = max(ex.allowance, NEGATIVE_REL * top_c)  # as for the exact Hessian
        if "sign" not in causes and eig[0] < -negative_level and not (ex.negative.any() and max_err <= OK_TOL):
            direction = format_direction(vec[:, 0] / ex.d / np.linalg.norm(vec[:, 0] / ex.d), ex.labels)
            causes.append("indefinite")
            evidence.append(
                f"it has negative curvature along {direction} (scaled eigenvalue {eig[0]:.2g}), so some "
                "'variances' from its inverse are negative or meaningless"
            )
    if not ex.stationary:
        causes.append("not_at_optimum")
        g_scaled = np.abs(ex.grad) / ex.d
        negative_txt = (
            f"; the exact Hessian has negative curvature here along {ex.direction(int(np.flatnonzero(ex.negative)[0]))}"
            if ex.negative.any() else ""
        )
        evidence.append(
            f"the point is not an optimum: it is {ex.newton_length:.2g} standard errors from it (largest "
            f"gradient component, per marginal standard deviation, for {ex.labels[int(np.argmax(g_scaled))]})"
            f"{negative_txt}; no Hessian here gives valid standard errors, whichever is used: optimise first"
        )
    for cause, why in _exact_causes(ex):
        if cause not in causes:
            causes.append(cause)
            evidence.append(why)
    if not causes:  # agrees, but the point is not regular and nothing above named why
        causes.append("ok")
    # entry by entry, for the audit's heat map: the split's masks win over the tolerance, so an
    # entry within OK_TOL that the split blames (SEs off while every entry is close) is not "ok"
    main = next((c for c in causes if c not in ("ok", "rounding", "truncation")), causes[0])
    entry = np.where(np.abs(err) <= OK_TOL, "ok", main if main != "ok" else "unexplained").astype(object)
    for what in ("rounding", "truncation"):
        if what in split:
            entry[split[what]] = what
    return CandidateAudit(
        name=name, kind=spec["kind"], hessian=C, rel_frobenius=rel_frob, max_scaled_error=max_err,
        worst=worst, eigenvalues=np.asarray(eig), sign_flips=flips, se=se, se_exact=ex.se,
        causes=tuple(causes), evidence=tuple(evidence), entry_causes=entry,
    )


def _unconstrained_target(model: Model, x: Any):
    """The model's negative log-likelihood as a plain function of the flat unconstrained vector."""
    from ._derivatives import _model_params

    spec = model.spec
    u = spec.to_unconstrained(spec.flatten(_model_params(model, x), model.dtype))
    data = model.data

    def f(t):
        return model.negloglik_flat(spec.to_natural(t), data, None)

    return f, u


def audit(
    target: Model | Callable, x: Any = None, candidates: Optional[dict] = None, *, scale: str = "natural"
) -> AuditReport:
    """Compare candidate Hessians with the exact one at ``x`` and explain each difference.

    Args:
        target: the objective as a JAX scalar function (a negative log-likelihood), or an
            ``ah.Model`` (its negative log-likelihood).
        x: the point (for a model: natural-scale parameters; default its initial values).
        candidates: ``{name: spec}``. ``spec`` is a ``(p, p)`` Hessian; or ``(matrix,
            "inverse")`` for an inverse Hessian / covariance such as scipy's ``hess_inv``
            (named with "bfgs" in it, it is treated as a BFGS approximation); or an
            ``ah.fd_hessian`` result (its step is then known); or a dict with ``matrix``,
            ``kind`` (``"hessian"``, ``"inverse"``, ``"bfgs"``) and optionally ``step``.
        scale: for a model, ``"natural"`` (the parameters as declared; default) or
            ``"unconstrained"`` (the transforms' scale, e.g. ``log(sigma)``, where optimisers
            work); the header says which. A candidate computed on the other scale is named as such.

    Returns:
        ``AuditReport``: print it for a table and one verdict per candidate; ``to_dict()``.

    Example:
        >>> rep = ah.audit(f, x, {"bfgs hess_inv": (res.hess_inv, "inverse"), "mine": H_mine})
        >>> print(rep)
    """
    if not candidates:
        raise ValueError("audit needs at least one candidate: {name: matrix}")
    if not isinstance(candidates, dict):
        raise TypeError(f"candidates must be a dict {{name: matrix}}, got {type(candidates).__name__}")
    if scale not in ("natural", "unconstrained"):
        raise ValueError(f"scale must be 'natural' or 'unconstrained', got {scale!r}")
    if scale == "unconstrained" and not isinstance(target, Model):
        raise ValueError("scale='unconstrained' needs an ah.Model (a plain function has no transforms)")
    for name in candidates:
        if not isinstance(name, str):
            raise TypeError(
                f"candidate names must be strings (they label the report's rows), got {name!r} "
                f"({type(name).__name__}): use {{'{name}': matrix}}"
            )
    specs = {name: _as_candidate(name, raw) for name, raw in candidates.items()}
    model = target if isinstance(target, Model) else None
    x_natural = x
    try:
        if model is not None and scale == "unconstrained":
            labels = model.spec.unconstrained_labels
            target, x = _unconstrained_target(model, x)
        exact_h = exact_hessian(target, x, check=False)
        grad = np.asarray(exact_gradient(target, x), dtype=np.float64)
    except UNTRACEABLE as err:
        raise not_traceable("the audited objective", err) from err
    exact = np.asarray(exact_h.matrix, dtype=np.float64)
    if model is None or scale == "natural":
        labels = exact_h.labels
    if isinstance(target, Model):
        value = -target.loglik(x if x is not None else None)
    else:
        from ._derivatives import _prepare_point

        value = float(target(_prepare_point(x)[0]))
    if not (np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(exact))):
        raise ValueError(
            f"the objective is not finite at this point (f = {value}, gradient or Hessian with "
            f"{int(np.sum(~np.isfinite(exact)))} non-finite entries): is the point inside the domain?"
        )
    known = {"scale": scale}  # what else a wrong candidate may be
    if model is not None and bool(np.any(model.spec.transformed)):
        other = "natural" if scale == "unconstrained" else "unconstrained"
        known["other"] = (other, np.asarray(exact_hessian(model, x_natural, scale=other, check=False).matrix))
    if model is not None and model.per_observation and scale == "natural":
        S = np.asarray(scores(model, x_natural), dtype=np.float64)
        known["opg"] = S.T @ S
    specs = {name: _align(name, spec, tuple(labels)) for name, spec in specs.items()}
    ex = _exact_context(target, x, labels, float(value), grad, exact, **known)
    results = [_judge(ex, name, spec) for name, spec in specs.items()]
    return AuditReport(
        labels=tuple(labels), exact=exact, gradient=grad, value=float(value),
        newton_length=ex.newton_length, stationary=ex.stationary, exact_positive_definite=ex.regular,
        candidates=tuple(results), scale=scale, flat_directions=int(ex.flat.sum()),
        negative_directions=int(ex.negative.sum()),
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
