"""HTML for notebooks: the ``_repr_html_`` of every result, from the same pieces as ``str()``.

Each result's text form is built from ``(title, headers, rows, notes)`` (or, for the fit
summary, key/value pairs and a coefficient table); this module renders those as HTML
tables, numbers formatted by the text tables' own ``_format.fmt`` so both show the same
digits, every piece of text escaped (labels such as ``beta[x<1]`` are the user's).
"""

from __future__ import annotations

import html
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ._format import fmt

__all__ = ["table", "cell", "paragraphs", "diagnostic_report"]

_STYLE = "border-collapse:collapse;font-family:monospace"


def cell(value: Any) -> str:
    """One value as escaped text: numbers as the text tables print them."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value)))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        return html.escape(fmt(float(value)).strip())
    except (TypeError, ValueError):
        return html.escape(str(value))


def paragraphs(notes: Iterable[str]) -> str:
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
    out.append(paragraphs(notes))
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
    return f"<div><p>{html.escape(head)}</p>" + (f"<ul>{items}</ul>" if items else "") + paragraphs(tail) + "</div>"
