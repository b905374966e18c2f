"""Diagnostics in plain language: what is wrong with a fit, which parameters it touches, what
to do (``DiagnosticReport``, ``Problem``, ``InferenceWarning``).

Pure functions of a ``FitResult``; nothing here is compiled or changes a result. The summary
table is in ``_summary``, number formatting in ``_format``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Optional

import numpy as np

from ._diagnostics import FLAT_CONDITION, ILL_CONDITION
from ._inference import _inference_program
from ._laplace_results import describe_parameter, inner_failures
from ._solver import ESCAPE_RATIO, Status

if TYPE_CHECKING:  # pragma: no cover
    from ._fit import FitResult

__all__ = ["InferenceWarning", "Problem", "DiagnosticReport", "format_direction", "curvature_allowance"]


class InferenceWarning(UserWarning):
    """Standard errors were set to NaN (or should not be trusted): see ``res.diagnostics``."""

#: vocabulary of problem kinds
#: cap on the gradient per marginal standard deviation that ``curvature_allowance`` lets tilt a
#: flat eigenvalue (the log-likelihood changes by at most 1e-4 over one standard error); whether
#: a point is at the optimum is ``AT_OPTIMUM_SE``'s rule
STATIONARY_SCALED_GRAD = 1e-4



def curvature_allowance(top: float, scaled_gradient: float) -> float:
    """The smallest |eigenvalue| of a unit-diagonal scaled Hessian that a point resolves.

    Below ``top / FLAT_CONDITION`` an eigenvalue is rounding. Away from exact stationarity a
    gradient ``g`` (per marginal standard deviation) is left, and along a flat valley that is
    curved (``a*b = const``) it tilts the flat eigenvalue by about ``g`` times the valley's
    curvature, to either sign; in per-SD units that curvature is far below 1 for any valley
    wider than a standard deviation, so ``g`` bounds the tilt. Capped at
    ``STATIONARY_SCALED_GRAD``: far from stationarity a clear negative curvature is what it is
    (and a parameter with no curvature would make the gradient per SD astronomical).
    """
    return max(top / FLAT_CONDITION, min(scaled_gradient, STATIONARY_SCALED_GRAD))


#: a point counts as the optimum when the Newton step from it is at most this many standard
#: errors long (``standard_errors_from_optimum``): closer than that, the Hessian and standard
#: errors there differ from those at the optimum by a negligible third-derivative term. One
#: rule for ``evaluate`` (its report) and ``audit``.
AT_OPTIMUM_SE = 0.1


def standard_errors_from_optimum(g_scaled: np.ndarray, lam: np.ndarray, vec: np.ndarray, allowance: float) -> float:
    """How far a point is from the optimum, in standard errors: the Newton step's Mahalanobis
    length ``sqrt(g' H^-1 g)`` on the eigen-directions of the unit-diagonal scaled Hessian
    (``lam``, ``vec``; ``g_scaled = g / sqrt|H_ii|``) whose curvature is resolved (above
    ``allowance``, see ``curvature_allowance``), combined with the largest gradient component
    along the others (flat or negative: no Newton step exists there, the gradient per unit of
    scaled curvature is what is left). NaN where the Hessian is not finite."""
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(g_scaled))):
        return float("nan")
    regular = lam > allowance
    gt = vec.T @ g_scaled
    newton = float(np.sqrt(np.sum(gt[regular] ** 2 / lam[regular])))
    off = float(np.max(np.abs(gt[~regular]), initial=0.0))
    return float(np.hypot(newton, off))


def _distance_on_face(grad: np.ndarray, hess: np.ndarray, boundary: np.ndarray) -> float:
    """``standard_errors_from_optimum`` for a fit's report: parameters at a bound are held
    there (their gradient is legitimately not zero), as the diagnostics' eigenvalues are; so
    are parameters without curvature (``Diagnostics.no_curvature``: a gradient divided by a
    rounding-level curvature measures nothing, they are reported as flat instead)."""
    if not (np.isfinite(hess).all() and np.isfinite(grad).all()):
        return float("nan")
    diag = np.abs(np.diag(hess))
    d = np.sqrt(np.where(diag > 0, diag, 1.0))
    face = np.where(boundary[:, None] | boundary[None, :], np.eye(len(d)), hess / np.outer(d, d))
    g_scaled = np.where(boundary, 0.0, grad / d)
    lam, vec = np.linalg.eigh(face)
    top = float(np.max(np.abs(lam))) if lam.size else 0.0
    return standard_errors_from_optimum(g_scaled, lam, vec, curvature_allowance(top, float(np.max(np.abs(g_scaled), initial=0.0))))


KINDS = ("not_converged", "unbounded", "saddle", "flat", "degenerate", "boundary", "ill_conditioned", "inner")

_SUGGEST = {
    "approximate": "this fit stopped early by rtol, short of the optimum: refit with rtol=None (the "
    "default) or a smaller rtol before reporting these estimates and standard errors",
    "opg_singular": "use cov_type='hessian' (or 'robust'): the outer product of the scores has rank at "
    "most the number of observations with positive weight, and less where scores are confined to a "
    "subspace, so it identifies no variance along these directions",
    "not_converged": "raise maxiter, start closer to the optimum, or check the model; do not "
    "report these standard errors",
    "nonfinite": "ah.hessian(model, res.params) names the parameters whose derivatives are not "
    "finite; a common cause is jnp.inf used as a constant inside the log-likelihood (a cut point, "
    "a bound), whose derivatives contain inf * 0 = nan: use a large finite value. More iterations "
    "do not help",
    # ah.evaluate optimises nothing (no maxiter): the advice is to fit, or to pass the optimum
    "not_optimum": "these parameters are not the maximum-likelihood estimate for this model and "
    "data: fit the model from them (ah.fit(model, start=params)) and use that result, or pass the "
    "optimum itself (all the digits the other software gives, for the same likelihood and data); "
    "do not report these standard errors",
    "unbounded": "the maximum-likelihood estimate does not exist for these data: look for a "
    "covariate or combination that predicts the outcome perfectly (separation), a group with "
    "only zero counts, or a part of the model the data do not call for (a zero-inflation or "
    "mixing probability running to 0 or 1: the data have no excess zeros, or one class), and "
    "drop, merge or recode it; or use a penalised likelihood (Firth, a weak prior) or fix the "
    "parameter. Standard errors of the parameters named (on the path, or whose information "
    "fades along it) are NaN; the others are conditional on them",
    "unbounded_edge": "the maximum-likelihood estimate does not exist: the likelihood grows without "
    "bound at the edge of the parameter space (a component's variance collapsing onto one "
    "observation is the classic case). Restart from other values (for mixtures the usual "
    "estimate is the largest local maximum inside the domain), keep the parameter away from its "
    "edge (a lower bound on a variance, equal variances across components), or use a penalised "
    "likelihood (a weak prior on the variance). Standard errors of the parameters named are NaN",
    "saddle": "this is not a maximum: restart from a point moved along that direction (or from "
    "several random starts); for mixtures, break the label symmetry (order the components)",
    "flat": "the data do not identify this combination here: reparameterise (estimate the "
    "combination itself), fix or constrain one of the parameters, or collect more data (where it "
    "is only weakly identified, not exactly flat, a profile likelihood with grid=... shows how "
    "far it extends; a bootstrap cannot help an exactly flat direction, its refits are as "
    "singular). If the fit stopped with status SINGULAR, the point may "
    "also be a degenerate stationary point (e.g. two components merged) with a better optimum "
    "elsewhere: refit from other starting values",
    "degenerate": "part of the model is switched off here (a latent class or regime that is never "
    "visited, a mixture component with weight 0, an inflation probability of 0): this is usually a "
    "local maximum. Refit from other starting values (e.g. separated class means, probabilities "
    "away from 0 and 1) and keep the fit with the highest log-likelihood; if this one is the "
    "best, the model with fewer classes fits these data as well: fit that instead. Do not report "
    "these standard errors for the parameters named",
    "boundary": "Wald standard errors and intervals are not valid at a boundary: use a "
    "likelihood-ratio test (its null distribution is a 50:50 mixture of chi2(0) and chi2(1) for "
    "one variance at 0), a profile likelihood interval, or drop the parameter",
    "inner": "the Laplace approximation needs a maximum of the joint density in the random "
    "effects for every group: check those groups' data and conditional log-likelihood (a "
    "likelihood that is not concave in the random effect, e.g. a mixture or a heavy-tailed "
    "outcome, may need a smaller random-effect standard deviation to start from), or refit from "
    "other starting values",
    "boundary_variance": "the model without this variance component fits as well: test it by a "
    "likelihood ratio against the fit without the random effect (the null distribution of a "
    "variance at 0 is a 50:50 mixture of chi2(0) and chi2(1): halve the chi2(1) p-value), "
    "report a profile likelihood interval (ah.profile), or drop the random effect; Wald tests "
    "and intervals at a boundary are not chi-square",
    "boundary_correlation": "the random coefficients are perfectly correlated here (their "
    "covariance matrix is singular): fit the model with uncorrelated random effects (corr=None) or "
    "drop one random coefficient, and compare the fits by likelihood; Wald tests and intervals at "
    "a boundary are not valid",
    "ill_conditioned": "standard errors are computed but some lose digits; consider rescaling "
    "the parameters or the data",
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One finding: ``kind`` (from a fixed vocabulary), what was found, what to do."""

    kind: str
    message: str
    parameters: tuple[str, ...]
    direction: Optional[str]
    suggestion: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"problem kind must be one of {KINDS}, got {self.kind!r}")

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}\n    what to do: {self.suggestion}"


def format_direction(vector: np.ndarray, labels, max_terms: int = 6, min_coef: float = 0.05) -> str:
    """``"0.71*sigma_u - 0.70*sigma_e"`` from a unit vector in parameter coordinates."""
    v = np.asarray(vector, dtype=np.float64)
    order = np.argsort(-np.abs(v))
    if v[order[0]] < 0:  # sign of an eigenvector is arbitrary: lead with a positive term
        v = -v
    terms = [(v[i], labels[i]) for i in order[:max_terms] if abs(v[i]) >= min_coef]
    text = ""
    for k, (c, lab) in enumerate(terms):
        sign = "-" if c < 0 else ("+" if k else "")
        text += f"{' ' if k else ''}{sign}{' ' if k else ''}{abs(c):.2f}*{lab}"
    rest = int(np.sum(np.abs(v) >= min_coef)) - len(terms)
    return text + (f" + ({rest} more)" if rest > 0 else "")


@dataclasses.dataclass(frozen=True)
class DiagnosticReport:
    """Diagnostics of a fit in numbers and words. ``problems`` is empty when all is well."""

    gradient_max: float
    newton_decrement: float
    positive_definite: bool
    eigenvalues: np.ndarray
    condition_number: float
    problems: tuple[Problem, ...]
    nan_se: tuple[str, ...]
    #: parameters held fixed when the eigenvalues were computed (at a bound of their domain,
    #: or on a path with no finite maximum)
    held_fixed: tuple[str, ...] = ()
    #: eigenvectors matching ``eigenvalues`` (columns, parameter units, normalised) and the
    #: parameter labels: a problem's ``direction`` is ``format_direction(eigenvectors[:, j], labels)``
    eigenvectors: Optional[np.ndarray] = None
    labels: tuple[str, ...] = ()
    #: with parameters ``held_fixed``: ``max|g|`` over the others and the Newton decrement on
    #: the face they span (what says whether the fit is at its optimum there; the full
    #: ``gradient_max`` includes the outward gradient at the bound, and the full decrement is
    #: ``inf`` where the bound makes the Hessian singular); ``None`` when nothing is held
    face_gradient_max: Optional[float] = None
    face_newton_decrement: Optional[float] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @staticmethod
    def may_have_problems(res: "FitResult") -> bool:
        """Cheap pre-check: ``False`` only where ``from_result`` would find no problem (a
        converged fit, no boundary, no flat or negative direction, not ill-conditioned)."""
        return (
            int(res.status_code) != Status.CONVERGED or bool(res.diagnostics_data.flagged)
            # an OPG covariance with directions the outer product of scores does not identify
            or (res.cov_type == "opg" and bool(np.isnan(np.diag(np.asarray(res.cov))).any()))
        )

    @classmethod
    def from_result(cls, res: "FitResult") -> "DiagnosticReport":
        d = res.diagnostics_data
        labels = res.labels
        lam = np.asarray(d.eigenvalues, dtype=np.float64)
        vec = np.asarray(d.eigenvectors, dtype=np.float64)
        bad = np.asarray(d.bad_directions)
        boundary = np.asarray(d.at_boundary)
        hess = np.asarray(res.hessian_matrix, dtype=np.float64)
        grad = np.asarray(res.gradient, dtype=np.float64)
        x = np.asarray(res.params_flat, dtype=np.float64)
        status = Status(int(np.asarray(res.status_code)))
        top = float(np.max(np.abs(lam))) if lam.size else 0.0
        cond = float(np.asarray(d.condition_number))
        dec = float(np.asarray(d.newton_decrement))
        pd = bool(np.asarray(d.positive_definite))
        # unit-free stationarity: change of log-likelihood per marginal standard deviation
        scaled_grad = np.abs(grad) / np.sqrt(np.maximum(np.abs(np.diag(hess)), np.finfo(float).tiny))
        # (parameters at a bound left out: the gradient there is legitimately not zero)
        free_grad = float(np.max(scaled_grad[~boundary], initial=0.0))
        # how far from the optimum, in standard errors (the audit's rule, the same helper)
        distance = _distance_on_face(grad, hess, boundary | np.asarray(d.no_curvature))
        stationary = status in (Status.CONVERGED, Status.SINGULAR) or distance <= AT_OPTIMUM_SE
        # Negative curvature counts as a saddle only beyond what rounding and the remaining
        # gradient can produce (see ``curvature_allowance``).
        saddle_level = curvature_allowance(top, free_grad)
        problems: list[Problem] = []

        lower, upper = res.model.spec.bounds()
        step = np.asarray(d.escape_direction, dtype=np.float64)
        lead = int(np.argmax(np.abs(step))) if step.size else 0
        edge_value = (upper if step.size and step[lead] > 0 else lower)[lead] if step.size else np.inf
        edge = bool(status == Status.UNBOUNDED and np.any(step) and np.isfinite(edge_value))
        if edge:
            # the solver's own finding (``trust_region_newton(max_step=...)``): a transformed
            # parameter carried towards a finite end of its domain while the log-likelihood
            # kept rising by about the same amount per step
            direction = format_direction(step, labels)
            involved = tuple(labels[i] for i in np.flatnonzero(np.asarray(d.unbounded)))
            name = labels[lead]
            others = [lab for lab in involved if lab != name]
            problems.append(Problem(
                "unbounded",
                f"{name} -> {edge_value:g}: the log-likelihood grows without bound as {name} approaches "
                f"the edge {edge_value:g} of its domain ({name} = {x[lead]:.4g} after "
                f"{int(np.asarray(res.iterations))} iterations, the log-likelihood still rising by about "
                "the same amount at every step along "
                f"{direction} on the unconstrained scale)"
                + (f"; {', '.join(others)} {'is' if len(others) == 1 else 'are'} tied to it (curvature growing "
                   "without bound)" if others else ""),
                involved, direction, _SUGGEST["unbounded_edge"],
            ))
        elif status == Status.UNBOUNDED:
            direction = format_direction(np.asarray(d.escape_direction, dtype=np.float64), labels)
            involved = tuple(labels[i] for i in np.flatnonzero(np.asarray(d.unbounded)))
            ratio = float(np.asarray(d.escape_ratio))
            # which of the two signs found it (``_diagnostics.escape_info``)
            evidence = (
                f"the curvature along the last Newton step fell to {ratio:.2g} of its value over that "
                "one step (about 1 at a finite maximum)"
                if ratio < ESCAPE_RATIO
                else "the last Newton steps repeated each other (same direction and length) while "
                "the gain left was negligible"
            )
            problems.append(Problem(
                "unbounded",
                f"no finite maximum: the log-likelihood still rises along {direction} "
                + ("(unconstrained scale) " if res.model.spec.transformed.any() else "")
                + f"and flattens as it goes; {evidence}, after "
                f"{int(np.asarray(res.iterations))} iterations",
                involved, direction, _SUGGEST["unbounded"],
            ))
        elif status == Status.NOT_RUN and not stationary:
            worst = labels[int(np.argmax(np.where(boundary, 0.0, scaled_grad)))]
            problems.append(Problem(
                "not_converged",
                f"not at the optimum: the Newton step from these parameters is {distance:.2g} "
                f"standard errors long (at the optimum: at most {AT_OPTIMUM_SE:g}); max|gradient| = "
                f"{float(np.max(np.abs(grad))):.3g} (largest, per marginal standard deviation, for {worst})",
                (worst,), None, _SUGGEST["not_optimum"],
            ))
        elif status not in (Status.CONVERGED, Status.NOT_RUN, Status.SINGULAR):
            worst = labels[int(np.argmax(np.where(boundary, 0.0, scaled_grad)))]
            advice = (_SUGGEST["nonfinite"] if status == Status.NONFINITE
                      else _SUGGEST["approximate"] if status == Status.APPROXIMATE else _SUGGEST["not_converged"])
            problems.append(Problem(
                "not_converged",
                f"{res.status}; max|gradient| = {float(np.max(np.abs(grad))):.3g} (largest, per marginal "
                f"standard deviation, for {worst}), Newton decrement = {dec:.3g}"
                + (f", {distance:.2g} standard errors from the optimum" if np.isfinite(distance) else "")
                + f", after {int(np.asarray(res.iterations))} iterations",
                (worst,), None, advice,
            ))
        # Parameters whose own curvature is at rounding level (``Diagnostics.no_curvature``):
        # the likelihood does not depend on them here. At a fit where other parameters sit at a
        # bound, that is a switched-off part of the model (an empty class): one ``degenerate``
        # finding names both, instead of a boundary test whose advice does not apply.
        null = np.asarray(d.no_curvature)
        llf = float(np.asarray(res.llf))
        degenerate = bool(null.any() and boundary.any() and status != Status.NOT_RUN)
        if null.any():
            names = tuple(labels[i] for i in np.flatnonzero(null))
            curv = ", ".join(f"{labels[i]} {abs(hess[i, i]):.2g}" for i in np.flatnonzero(null))
            what = (
                f"the log-likelihood does not depend on {', '.join(names)} here: curvature "
                f"{curv}, rounding level for a log-likelihood of {llf:.6g}"
            )
            if degenerate:
                switches = tuple(labels[i] for i in np.flatnonzero(boundary))
                at = ", ".join(f"{labels[i]} = {x[i]:.4g}" for i in np.flatnonzero(boundary))
                problems.append(Problem(
                    "degenerate",
                    f"degenerate optimum: {at} at a bound of the domain, and {what}; their "
                    "standard errors are set to NaN",
                    switches + names, None, _SUGGEST["degenerate"],
                ))
            else:
                problems.append(Problem(
                    "flat", f"no curvature of their own: {what}; their standard errors are set to NaN",
                    names, None, _SUGGEST["flat"],
                ))
        for i in np.flatnonzero(boundary if not degenerate else np.zeros_like(boundary)):
            near = lower[i] if abs(x[i] - lower[i]) <= abs(upper[i] - x[i]) else upper[i]
            role = describe_parameter(res.model, labels[i])
            advice = _SUGGEST["boundary"]
            if role is not None:
                advice = _SUGGEST["boundary_correlation" if "correlation" in role else "boundary_variance"]
                role = f" ({role}: " + (
                    "the groups do not vary beyond what the rest of the model explains)" if near == 0
                    else f"at {near:g})")
            problems.append(Problem(
                "boundary",
                f"{labels[i]} = {x[i]:.4g} is at the boundary {near:g} of its domain "
                f"({lower[i]:g}, {upper[i]:g}){role or ''}; its standard error is set to NaN",
                (labels[i],), None, advice,
            ))
        # an inner maximisation that failed makes its group's marginal NaN: only a non-finite
        # log-likelihood can hide one (and only then is the inner solve run again to say which)
        if res.model.laplace is not None and not np.isfinite(llf):
            for kind, text in inner_failures(res.model, res.params):
                problems.append(Problem(kind, text, tuple(b.name for b in res.model.laplace.structure.blocks), None, _SUGGEST["inner"]))
        for j in np.flatnonzero(bad):
            v = vec[:, j]
            weight_on_boundary = float(np.sum(v[boundary | null] ** 2))
            if weight_on_boundary > 0.5:
                continue  # the boundary or no-curvature finding above already explains it
            direction = format_direction(v, labels)
            involved = tuple(labels[i] for i in np.flatnonzero(np.abs(v) >= 0.05))
            if lam[j] < -saddle_level:
                kind = "saddle" if stationary else "not_converged"
                msg = (
                    f"the log-likelihood curves upward along {direction} (scaled curvature "
                    f"{lam[j]:.3g}): "
                    + ("a saddle point, not a maximum" if stationary else "the Hessian is indefinite away from an optimum")
                )
            else:
                kind = "flat"
                msg = (
                    f"flat (unidentified) direction {direction}: scaled curvature {lam[j]:.3g}, "
                    f"condition number {cond:.3g}"
                    + (" (the negative sign is within what the gradient left at this point, "
                       f"{saddle_level:.2g} per marginal standard deviation, can produce)"
                       if lam[j] < -top / FLAT_CONDITION else "")
                )
            problems.append(Problem(kind, msg, involved, direction, _SUGGEST[kind]))
        if not bad.any() and cond > ILL_CONDITION:
            problems.append(Problem(
                "ill_conditioned",
                f"the scaled Hessian has condition number {cond:.3g} (flagged above "
                f"{ILL_CONDITION:.0e}; directions above {FLAT_CONDITION:.0e} count as flat)",
                tuple(labels), format_direction(vec[:, 0], labels), _SUGGEST["ill_conditioned"],
            ))
        if res.cov_type == "opg":
            problems.extend(_opg_problems(res))
        se = np.sqrt(np.diag(np.asarray(res.cov, dtype=np.float64)))
        nan_se = tuple(lab for lab, s in zip(labels, se) if not np.isfinite(s))
        held = boundary | (np.asarray(d.unbounded) & edge)
        face_grad = face_dec = None
        if held.any():
            face_grad = float(np.max(np.abs(grad[~held]), initial=0.0))
            face_dec = distance**2
        return cls(
            gradient_max=float(np.max(np.abs(grad))), newton_decrement=dec, positive_definite=pd,
            eigenvalues=lam, condition_number=cond, problems=tuple(problems), nan_se=nan_se,
            held_fixed=tuple(labels[i] for i in np.flatnonzero(held)),
            eigenvectors=vec, labels=tuple(labels), face_gradient_max=face_grad, face_newton_decrement=face_dec,
        )

    def warn(self, stacklevel: int = 3) -> None:
        """Issue one ``InferenceWarning`` listing the problems (nothing if there are none)."""
        if not self.problems:
            return
        text = "; ".join(f"[{p.kind}] {p.message}" for p in self.problems)
        if self.nan_se:
            text += f". Standard errors set to NaN: {list(self.nan_se)}" + self._others()
        warnings.warn(text + ". See res.diagnostics for what to do.", InferenceWarning, stacklevel=stacklevel)

    def __str__(self) -> str:
        # The eigenvalues are those of the face (parameters at a bound held fixed) and of the
        # resolved curvature; the Cholesky test is of the full Hessian. Saying both without
        # that qualification read "NOT positive definite" beside "eigenvalues 0.595 .. 1.69".
        lam = self.eigenvalues
        fixed = f"with {', '.join(self.held_fixed)} held fixed: " if self.held_fixed else ""
        if self.positive_definite:
            definite = "Hessian positive definite"
        elif self.held_fixed and lam.size and lam.min() > lam.max() / FLAT_CONDITION:
            definite = "Hessian positive definite (in full it is not)"
        else:
            definite = "Hessian NOT positive definite"
        if fixed and self.face_gradient_max is not None:
            # the gradient and decrement on the face first: the full ones include the outward
            # gradient at the bound (5e6 for a correlation at 1) and an infinite decrement,
            # which read as "not converged" beside a fit that is at its optimum on the face
            head = (
                f"{fixed}max|gradient| {self.face_gradient_max:.3g}; Newton decrement "
                f"{self.face_newton_decrement:.3g}; {definite}; scaled eigenvalues {lam.min():.3g} .. "
                f"{lam.max():.3g}; condition number {self.condition_number:.3g}; in full: max|gradient| "
                f"{self.gradient_max:.3g}, Newton decrement {self.newton_decrement:.3g} (the gradient at a "
                "bound need not vanish)"
            )
        else:
            head = (
                f"max|gradient| {self.gradient_max:.3g}; Newton decrement {self.newton_decrement:.3g}; "
                f"{fixed}{definite}; scaled eigenvalues {lam.min():.3g} .. {lam.max():.3g}; "
                f"condition number {self.condition_number:.3g}"
            )
        if not self.problems:
            return head + "\nNo problems found."
        body = "\n".join(str(p) for p in self.problems)
        if self.nan_se:
            body += f"\nStandard errors set to NaN: {', '.join(self.nan_se)}" + self._others()
        return head + "\n" + body

    def _repr_html_(self) -> str:
        from ._html import diagnostic_report

        return diagnostic_report(self)

    def _others(self) -> str:
        """What the standard errors that are not NaN mean, given the problems found."""
        if len(self.nan_se) >= len(self.eigenvalues):
            return ""
        kinds = {p.kind for p in self.problems}
        parts = []
        if kinds & {"boundary", "unbounded", "degenerate"}:
            parts.append("conditional on the parameters at a bound (or on the ridge) staying where they are")
        if kinds & {"flat", "saddle", "not_converged", "degenerate"}:
            parts.append("from the pseudo-inverse without the flat or negative directions, valid for "
                         "parameters the data identify")
        return f" (the others: {'; '.join(parts)})" if parts else ""

    def plot(self, ax=None, **kwargs):
        """Scaled eigenvalues, problem directions named: ``ah.plot.eigenvalues`` (needs matplotlib)."""
        from .plot import eigenvalues as draw

        return draw(self, ax, **kwargs)


def _opg_problems(res: "FitResult") -> list:
    """``cov_type="opg"``: the null directions of the outer product of scores (``_covariance.
    opg_null_directions``), named, with the number of observations that carry weight."""
    import jax.numpy as jnp

    from ._covariance import meat, opg_null_directions

    model = res.model
    program = model._jitted(("inference", "scores"), lambda: _inference_program(model, "scores"))
    scores = program(res.params_flat, model.data, res.weights)
    B = np.asarray(meat(scores, res.weights), dtype=np.float64)
    null, V = (np.asarray(a) for a in opg_null_directions(jnp.asarray(B)))
    labels = res.labels
    n = int(np.sum(np.asarray(res.weights) > 0)) if res.weights is not None else int(np.shape(scores)[0])
    zero = np.flatnonzero(~(np.diag(B) > 0))
    out = []
    if null.any() or zero.size:
        d = np.sqrt(np.where(np.diag(B) > 0, np.diag(B), 1.0))
        directions = [format_direction(V[:, j] / d, labels) for j in np.flatnonzero(null)]
        involved = tuple(labels[i] for i in np.flatnonzero(np.any((np.abs(V) > 1e-3) & null[None, :], axis=1) | ~(np.diag(B) > 0)))
        cause = (
            f"{n} observations with positive weight for {len(labels)} parameters"
            if n < len(labels) else "the scores are confined to a subspace"
        )
        out.append(Problem(
            "flat",
            f"cov_type='opg': the outer product of the scores is singular ({cause}): "
            f"{int(null.sum())} null direction(s) {', '.join(directions[:3])}"
            + ("" if len(directions) <= 3 else f" and {len(directions) - 3} more")
            + f"; the OPG variances of {', '.join(involved)} are not identified and are set to NaN",
            involved, directions[0] if directions else None, _SUGGEST["opg_singular"],
        ))
    return out
