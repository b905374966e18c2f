"""Numbers and plain-text tables as every result prints them (text and HTML alike).

A leaf module: numpy only, so any result module can use it without an import cycle.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["fmt", "format_table"]


def fmt(v: float, width: int = 10, decimals: int = 4, small_sci: bool = True) -> str:
    """``v`` right-aligned in exactly ``width`` characters, at least one of them a leading
    space (columns are joined without separators): fixed-point with ``decimals`` where that
    fits and reads well, otherwise the longest scientific form that fits (``-1.2e-300``).
    ``small_sci=False``: small values stay fixed-point (z and p columns: ``0.000``)."""
    v = float(v)
    if not np.isfinite(v):
        return f"{'nan' if np.isnan(v) else ('inf' if v > 0 else '-inf'):>{width}}"
    if v != 0 and (abs(v) >= 1e5 or (small_sci and abs(v) < 1e-3)):
        candidates = [f"{v:.{k}e}" for k in (3, 2, 1, 0)]
    else:
        candidates = [f"{v:.{decimals}f}"] + [f"{v:.{k}e}" for k in (3, 2, 1, 0)]
    for text in candidates:
        if len(text) < width:
            return text.rjust(width)
    return text.rjust(width)  # "-1e+300" (7 characters) fits every width used here


def format_table(headers, rows, title: Optional[str] = None) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c).strip() for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    rule = "-" * len(line(cells[0]))
    out = ([title] if title else []) + [line(cells[0]), rule] + [line(r) for r in cells[1:]]
    return "\n".join(out)
