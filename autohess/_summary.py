"""The fit's summary table (``FitResult.summary()``, its text and HTML): header, coefficients,
what was integrated out, status and diagnostics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._format import fmt
from ._html import diagnostic_report, paragraphs, table
from ._laplace_results import level_names, short_names

if TYPE_CHECKING:  # pragma: no cover
    from ._fit import FitResult

__all__ = ["summary", "summary_html", "coefficient_columns"]


_COV_NAMES = {
    "hessian": "observed information (inverse Hessian)",
    "opg": "outer product of gradients (BHHH)",
    "robust": "robust sandwich H^-1 B H^-1 (HC0)",
    "cluster": "cluster-robust sandwich",
    "gauss-newton": "Gauss-Newton s^2 (J'J)^-1, s^2 = RSS/(n-p)",
}


def _bic_text(res: "FitResult") -> str:
    try:
        return f"{res.bic:.6g}"
    except ValueError:  # no observation count (scalar loglik)
        return "n/a"


def _random_lines(model) -> list[str]:
    """What was integrated out, one line per random effect, and how."""
    s = model.laplace.structure
    out = []
    for b in s.blocks:
        levels, coefficients = level_names(model, b)
        named = ""
        if levels is not None:
            named = f" (levels {short_names(levels)})"
        if b.kind == "normal":
            what = f"N(0, {b.parameters[0]}^2), {b.n_levels} groups of data[{b.groups!r}]{named}"
        elif b.kind == "mvnormal":
            cov = f"sd = {b.parameters[0]}" + (f", corr = {b.parameters[1]}" if len(b.parameters) > 1 else ", uncorrelated")
            coef = f" of {', '.join(coefficients)}" if coefficients is not None else ""
            what = f"{b.q}-variate normal{coef} ({cov}), {b.n_levels} groups of data[{b.groups!r}]{named}"
        else:
            what = f"latent block of shape {b.shape} with its own log density"
        out.append(f"Random effect {b.name}: {what}")
    how = (f"{s.n_levels} blocks of {s.q} x {s.q}" if s.block_diagonal else f"one dense {s.q} x {s.q} block")
    out.append(f"Laplace approximation of the marginal likelihood (inner Hessian: {how}; exact derivatives)")
    return out


def coefficient_columns(res: "FitResult") -> tuple:
    """The coefficient table's columns as float64 arrays (text and HTML summaries): estimate,
    SE, z, p, the 95% Wald interval ``(p, 2)``, and which parameters are transformed."""
    as64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    return (as64(res.params_flat), as64(res.bse_flat), as64(res.tvalues_flat), as64(res.pvalues_flat),
            as64(res.conf_int(0.05, flat=True)), res.model.spec.transformed)


def summary(res: "FitResult") -> str:
    """A statsmodels-like coefficient table with a diagnostics footer."""
    labels = res.labels
    x, se, z, pv, ci, transformed = coefficient_columns(res)
    # rows are as wide as the rules: the name column (width + 3) and 63 for the numbers, each
    # number of a bounded width whatever its value (``_fmt``)
    width = max(12, max(len(lab) for lab in labels) + 2)
    line = "=" * (width + 66)
    dash = "-" * (width + 66)
    diag = res.diagnostics
    out = [
        line,
        f"autohess fit: {res.model.name}".center(width + 66),
        line,
        f"{'Log-likelihood:':<18}{float(np.asarray(res.llf)):>14.6g}    {'Observations:':<16}{res.nobs if res.nobs is not None else 'n/a':>10}"
        + (f" ({res.nobs_effective:g} with weights)" if res.weights is not None else ""),
        f"{'Method:':<18}{res.method:>14}    {'Parameters:':<16}{len(labels):>10}",
        f"{'Converged:':<18}{str(res.converged):>14}    {'Iterations:':<16}{int(np.asarray(res.iterations)):>10}",
        f"{'AIC:':<18}{res.aic:>14.6g}    {'BIC:':<16}{_bic_text(res):>10}",
        f"{'Covariance:':<18}{_COV_NAMES[res.cov_type]}",
        line,
        f"{'':<{width + 3}}{'coef':>10}{'std err':>11}{'z':>9}{'P>|z|':>9}{'[0.025':>12}{'0.975]':>12}",
        dash,
    ]
    for i, lab in enumerate(labels):
        name = lab + ("*" if transformed[i] else "")
        out.append(
            f"{name:<{width + 3}}{fmt(x[i])}{fmt(se[i], 11)}{fmt(z[i], 9, 3, False)}{fmt(pv[i], 9, 3, False)}"
            f"{fmt(ci[i, 0], 12)}{fmt(ci[i, 1], 12)}"
        )
    out.append(line)
    if res.model.laplace is not None:
        out.extend(_random_lines(res.model))
    if transformed.any():
        out.append("* declared with a transform: estimated on the unconstrained scale; standard error by the delta method")
    out.append(f"Status: {res.status}")
    out.append("Diagnostics: " + str(diag))
    return "\n".join(out)


def summary_html(res: "FitResult") -> str:
    """``FitResult``: the header of ``summary()`` as a two-column table, the coefficient table,
    then the footer lines (random effects, transforms, status, diagnostics)."""
    text = summary(res).split("\n")
    rules = [i for i, line in enumerate(text) if line and set(line) == {"="}]
    nobs = "n/a" if res.nobs is None else str(res.nobs)
    if res.weights is not None:
        nobs += f" ({res.nobs_effective:g} with weights)"
    pairs = [
        ["Log-likelihood:", f"{float(np.asarray(res.llf)):.6g}"], ["Observations:", nobs],
        ["Method:", res.method], ["Parameters:", str(len(res.labels))],
        ["Converged:", str(res.converged)], ["Iterations:", str(int(np.asarray(res.iterations)))],
        ["AIC:", f"{res.aic:.6g}"], ["BIC:", _bic_text(res)], ["Covariance:", _COV_NAMES[res.cov_type]],
    ]
    title = text[rules[0] + 1].strip()
    x, se, z, pv, ci, transformed = coefficient_columns(res)
    zp = lambda v: fmt(v, 9, 3, False).strip()  # noqa: E731  (the z and p columns of summary())
    rows = [[lab + ("*" if transformed[i] else ""), x[i], se[i], zp(z[i]), zp(pv[i]), ci[i, 0], ci[i, 1]]
            for i, lab in enumerate(res.labels)]
    head = table(title, ["", "value"], pairs)
    coef = table(None, ["", "coef", "std err", "z", "P>|z|", "[0.025", "0.975]"], rows)
    footer = text[rules[3] + 1:] if len(rules) > 3 else []
    diag_at = next((i for i, line in enumerate(footer) if line.startswith("Diagnostics: ")), len(footer))
    notes = paragraphs(footer[:diag_at])
    return f"<div>{head}{coef}{notes}<p>Diagnostics:</p>{diagnostic_report(res.diagnostics)}</div>"
