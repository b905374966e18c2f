"""HTML for notebooks: the ``_repr_html_`` of every result, from the same pieces as ``str()``.

Each result's text form is built from ``(title, headers, rows, notes)`` (or, for the fit
summary, key/value pairs and a coefficient table); this module renders those as HTML
tables, numbers formatted by the text tables' own ``_report._fmt`` so both show the same
digits, every piece of text escaped (labels such as ``beta[x<1]`` are the user's).
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Optional, Sequence

import numpy as np

__all__ = ["table", "cell", "fit_summary", "audit_report", "diagnostic_report"]

_STYLE = "border-collapse:collapse;font-family:monospace"


def cell(value: Any) -> str:
    """One value as escaped text: numbers as the text tables print them."""
    from ._report import _fmt

    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value)))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        return html.escape(_fmt(float(value)).strip())
    except (TypeError, ValueError):
        return html.escape(str(value))


def _paragraphs(notes: Iterable[str]) -> str:
    return "".join(f"<p>{html.escape(n)}</p>" for n in notes if n)


def table(title: Optional[str], headers: Sequence[str], rows: Sequence[Sequence[Any]], notes: Iterable[str] = ()) -> str:
    """A ``<table>`` with an escaped caption, a header row, one row per entry (first column
    a row header) and the notes as paragraphs after it."""
    out = [f'<div><table style="{_STYLE}">']
    if title:
        out.append(f"<caption style=\"text-align:left\">{html.escape(title)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr></thead><tbody>")
    for row in rows:
        first, rest = row[0], row[1:]
        out.append(f"<tr><th style=\"text-align:left\">{cell(first)}</th>"
                   + "".join(f"<td style=\"text-align:right\">{cell(c)}</td>" for c in rest) + "</tr>")
    out.append("</tbody></table>")
    out.append(_paragraphs(notes))
    out.append("</div>")
    return "".join(out)


def diagnostic_report(report: Any) -> str:
    """``DiagnosticReport``: its first line, then one list item per problem with what to do."""
    head, *rest = str(report).split("\n")
    items = "".join(
        f"<li><b>[{html.escape(p.kind)}]</b> {html.escape(p.message)}<br>what to do: {html.escape(p.suggestion)}</li>"
        for p in report.problems
    )
    tail = [line for line in rest if line.startswith("Standard errors set to NaN") or line == "No problems found."]
    return f"<div><p>{html.escape(head)}</p>" + (f"<ul>{items}</ul>" if items else "") + _paragraphs(tail) + "</div>"


def fit_summary(res: Any) -> str:
    """``FitResult``: the header of ``summary()`` as a two-column table, the coefficient table,
    then the footer lines (random effects, transforms, status, diagnostics)."""
    from ._report import _COV_NAMES, _bic_text, _fmt, coefficient_columns, summary

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
    zp = lambda v: _fmt(v, 9, 3, False).strip()  # noqa: E731  (the z and p columns of summary())
    rows = [[lab + ("*" if transformed[i] else ""), x[i], se[i], zp(z[i]), zp(pv[i]), ci[i, 0], ci[i, 1]]
            for i, lab in enumerate(res.labels)]
    head = table(title, ["", "value"], pairs)
    coef = table(None, ["", "coef", "std err", "z", "P>|z|", "[0.025", "0.975]"], rows)
    footer = text[rules[3] + 1:] if len(rules) > 3 else []
    diag_at = next((i for i, line in enumerate(footer) if line.startswith("Diagnostics: ")), len(footer))
    notes = _paragraphs(footer[:diag_at])
    return f"<div>{head}{coef}{notes}<p>Diagnostics:</p>{diagnostic_report(res.diagnostics)}</div>"


def audit_report(report: Any) -> str:
    """``AuditReport``: its heading, one row per candidate, then each verdict."""
    from ._audit import candidate_cells

    text = str(report).split("\n")
    rows = []
    for c in report.candidates:
        min_eig, rtxt = candidate_cells(c)
        rows.append([c.name, f"{c.rel_frobenius:.2e}", f"{c.max_scaled_error:.2e}", min_eig, rtxt, ", ".join(c.causes)])
    verdicts = [f"{c.name}: {c.verdict}" for c in report.candidates]
    return table(text[0], ["candidate", "rel. Frobenius", "max scaled", "min eig", "SE ratio", "cause"], rows, verdicts)
