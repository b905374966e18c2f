"""Pictures of autohess results (the ``plot`` extra: matplotlib).

Every function here is a pure function of a result object's public data: nothing is refitted
or recompiled (``random_effects`` given a fit evaluates its ``res.random``, one compiled call the
fit already has). Each draws into the ``ax=`` (or ``fig=``) it is given, or a new figure, and
returns the Axes (one panel) or the Figure (a grid of panels).

matplotlib is imported inside the functions: ``import autohess`` never imports it.

Example:
    >>> import autohess as ah
    >>> ax = ah.plot.profile(ah.profile(res, "sd"))
    >>> ax.figure.savefig("profile.png")
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["step_sweep", "audit", "eigenvalues", "bootstrap", "profile", "coverage", "random_effects"]

#: colours of the audit's heat map, by the cause an entry's error has
_CAUSE_COLOURS = {"ok": "#4daf4a", "rounding": "#377eb8", "truncation": "#ff7f00"}
#: any other cause (the candidate's main one: sign, not_a_hessian, unexplained, ...), one colour
#: each, in the order they first appear among the candidates drawn
_OTHER_COLOURS = ("#e41a1c", "#984ea3", "#a65628", "#f781bf", "#999999", "#ffff33")


def _pyplot(what: str):
    """``matplotlib.pyplot``, or an ImportError that says how to get it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            f"{what} draws with matplotlib, which is not installed: pip install 'autohess[plot]' "
            "(or pip install matplotlib); the numbers it draws are on the result object itself"
        ) from err
    return plt


def _norm_ppf(q: float) -> float:
    """Standard normal quantile in float64 (``jax.scipy`` is already imported by autohess)."""
    from jax.scipy.stats import norm

    return float(norm.ppf(q))


def _norm_pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x**2) / np.sqrt(2.0 * np.pi)


def _new_axes(plt, ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _grid(plt, n: int, fig, axes, ncols: int, panel=(3.6, 3.0)):
    """``(fig, list of n axes)``: the caller's ``axes`` (at least ``n``), the caller's ``fig``
    filled with a grid, or a new figure with ``ncols`` columns."""
    if axes is not None:
        flat = list(np.ravel(np.asarray(axes, dtype=object)))
        if len(flat) < n:
            raise ValueError(f"axes has {len(flat)} panels, {n} are needed (one per parameter)")
        return flat[0].figure, flat[:n]
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    if fig is None:
        fig = plt.figure(figsize=(panel[0] * ncols, panel[1] * nrows))
    return fig, [fig.add_subplot(nrows, ncols, k + 1) for k in range(n)]


def _select(labels: Sequence[str], params: Optional[Sequence]) -> list[int]:
    """Indices of the parameters to draw (labels or flat indices; all by default)."""
    labels = list(labels)
    if params is None:
        return list(range(len(labels)))
    if isinstance(params, (str, int, np.integer)):
        params = [params]
    out = []
    for p in params:
        if isinstance(p, (int, np.integer)):
            if not 0 <= int(p) < len(labels):
                raise ValueError(f"parameter index {p} is out of range: there are {len(labels)} parameters")
            out.append(int(p))
        elif p in labels:
            out.append(labels.index(p))
        else:
            raise ValueError(f"no parameter {p!r}; the labels are {labels[:8]}{' ...' if len(labels) > 8 else ''}")
    return out


# ------------------------------------------------------------------------------------------
# Hessians: the step sweep, the audit, the eigenvalues
# ------------------------------------------------------------------------------------------
def step_sweep(sweep: Any, ax: Any = None) -> Any:
    """Log-log V curve of a ``StepSweep``: the finite-difference error against the step.

    Args:
        sweep: ``ah.step_sweep(...)``'s result.
        ax: matplotlib Axes to draw into (default: a new figure).

    Returns:
        The Axes: one line (``sweep.steps``, ``sweep.errors``) and a dotted vertical at the best step.

    Example:
        >>> ah.plot.step_sweep(ah.step_sweep(f, x))  # or ah.step_sweep(f, x).plot()
    """
    plt = _pyplot("ah.plot.step_sweep")
    owner = ax is None
    ax = _new_axes(plt, ax, (5, 3.5))
    ax.loglog(sweep.steps, sweep.errors, "o-", label="max scaled error")
    ax.axvline(sweep.best_step, color="grey", linestyle=":", label=f"best step {sweep.best_step:.1e}")
    # relative steps are multiples of max(|x_i|, 1) (or |x_i|): say which, the unit of the axis
    ax.set_xlabel("step h" + {True: " (x max(|x_i|, 1))", False: " (parameter units)", "x": " (x |x_i|)"}[sweep.relative])
    ax.set_ylabel("max |C_ij - H_ij| / sqrt|H_ii H_jj|")
    ax.set_title(f"{sweep.method} finite differences against the exact Hessian")
    ax.legend(fontsize=8)
    if owner:  # a figure made here: fit its labels; a caller's figure is the caller's to lay out
        ax.figure.tight_layout()
    return ax


def _entry_causes(c: Any, ok_tol: float, err: np.ndarray) -> np.ndarray:
    if getattr(c, "entry_causes", None) is not None:
        return np.asarray(c.entry_causes, dtype=object)
    # an audit made before entry causes were recorded: the tolerance and the main cause
    return np.where(np.abs(err) <= ok_tol, "ok", c.cause).astype(object)


def audit(report: Any, candidates: Optional[Sequence[str]] = None, *, fig: Any = None) -> Any:
    """An audit in pictures: each candidate's scaled error entry by entry, and a heat map of
    the entries coloured by what explains their error.

    The left panel plots ``|C_ij - H_ij| / sqrt|H_ii H_jj|`` for every entry ``i <= j`` (one
    line per candidate, log scale; the ``ok`` tolerance dotted). Each further panel is one
    candidate's ``p x p`` matrix of ``CandidateAudit.entry_causes``: ``ok`` (within tolerance),
    ``rounding`` (step too small), ``truncation`` (step too large), or the candidate's main
    cause (``sign``, ``not_a_hessian``, ``unexplained``: the step does not explain it, ...).

    Args:
        report: ``ah.audit(...)``'s ``AuditReport``.
        candidates: names of the candidates to draw (default: all).
        fig: matplotlib Figure to draw into (default: a new one).

    Returns:
        The Figure (``fig.axes[0]`` the errors, then one heat map per candidate).

    Example:
        >>> fig = ah.plot.audit(ah.audit(f, x, {"mine": H_mine}))  # or rep.plot()
    """
    plt = _pyplot("ah.plot.audit")
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ._audit_steps import OK_TOL, _scaled_error

    chosen = [report[name] for name in candidates] if candidates is not None else list(report.candidates)
    if not chosen:
        raise ValueError("no candidates to draw: give candidate names from the report, or None for all")
    labels = list(report.labels)
    p = len(labels)
    n = len(chosen)
    if fig is None:
        fig = plt.figure(figsize=(5.5 + 3.2 * n, 4.0))
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1.6] + [1.0] * n)
    ax = fig.add_subplot(grid[0, 0])
    iu = np.triu_indices(p)
    entry_names = [f"[{labels[i]}, {labels[j]}]" for i, j in zip(*iu)]
    # an exact entry (error 0) still shows on a log axis: at eps, the floor of a scaled error
    tiny = np.finfo(np.float64).eps
    for c in chosen:
        err = np.abs(_scaled_error(c.hessian, report.exact))[iu]
        ax.semilogy(np.arange(len(err)), np.maximum(err, tiny), "o-", ms=3, lw=0.8, label=f"{c.name} ({c.cause})")
    ax.axhline(OK_TOL, color="grey", linestyle=":", label=f"ok below {OK_TOL:g}")
    if len(entry_names) <= 30:
        ax.set_xticks(np.arange(len(entry_names)), entry_names, rotation=90, fontsize=7)
    ax.set_xlabel("entry [i, j], i <= j" + ("" if len(entry_names) <= 30 else " (upper triangle, row by row)"))
    ax.set_ylabel("|C_ij - H_ij| / sqrt|H_ii H_jj| (unit-free)")
    ax.set_title("error per entry against the exact Hessian")
    ax.legend(fontsize=7)
    causes_of = [_entry_causes(c, OK_TOL, _scaled_error(c.hessian, report.exact)) for c in chosen]
    # one colour per cause across all panels (a shared colour map and legend)
    kinds = list(_CAUSE_COLOURS)
    for causes in causes_of:
        kinds += [str(v) for v in dict.fromkeys(causes.ravel()) if str(v) not in kinds]
    others = [kd for kd in kinds if kd not in _CAUSE_COLOURS]
    colours = [_CAUSE_COLOURS.get(kd) or _OTHER_COLOURS[others.index(kd) % len(_OTHER_COLOURS)] for kd in kinds]
    cmap = ListedColormap(colours)
    legend = {}
    for k, (c, causes) in enumerate(zip(chosen, causes_of)):
        hax = fig.add_subplot(grid[0, k + 1])
        code = np.vectorize(kinds.index, otypes=[float])(causes)
        hax.imshow(code, cmap=cmap, vmin=-0.5, vmax=len(kinds) - 0.5, interpolation="nearest")
        if p <= 6:  # small enough to print each entry's scaled error in its cell
            err = np.abs(_scaled_error(c.hessian, report.exact))
            for i in range(p):
                for j in range(p):
                    hax.text(j, i, f"{err[i, j]:.0e}", ha="center", va="center", fontsize=7, color="white")
        if p <= 12:
            hax.set_xticks(np.arange(p), labels, rotation=90, fontsize=7)
            hax.set_yticks(np.arange(p), labels, fontsize=7)
        hax.set_xlabel("parameter j")
        hax.set_ylabel("parameter i")
        hax.set_title(f"{c.name}: {', '.join(c.causes)}", fontsize=9)
        for kd, col in zip(kinds, colours):
            if np.any(causes == kd):
                legend[kd] = col
    fig.legend(handles=[Patch(color=col, label=kd) for kd, col in legend.items()], loc="lower right",
               fontsize=8, title="cause of the entry's error", title_fontsize=8, ncols=min(4, len(legend)))
    fig.suptitle(f"audit against the exact Hessian ({p} parameters, {report.scale} scale)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def eigenvalues(res_or_report: Any, ax: Any = None, *, scale: str = "log-abs", label: str = "problems") -> Any:
    """Scaled eigenvalues of a fit's Hessian, with the problem directions named.

    The eigenvalues are those of the unit-diagonal scaled Hessian (``DiagnosticReport.
    eigenvalues``; unit-free, 1 for independent parameters). ``scale="log-abs"`` plots
    ``|lambda|`` on a log axis, negative ones as red downward triangles; ``"symlog"`` plots
    ``lambda`` itself on a symmetric-log axis (linear within ``top / FLAT_CONDITION``). A dotted
    line marks ``top / FLAT_CONDITION``, below which a direction counts as flat. Each direction
    a problem names (saddle, flat, ill-conditioned) is labelled with its kind and the parameter
    combination, e.g. ``[flat] 0.71*a - 0.71*b``.

    Args:
        res_or_report: a ``FitResult`` or its ``diagnostics`` (``DiagnosticReport``).
        ax: matplotlib Axes (default: a new figure).
        scale: ``"log-abs"`` or ``"symlog"``.
        label: ``"problems"`` (default: the directions problems name) or ``"all"`` (every
            direction, for small models).

    Returns:
        The Axes.

    Example:
        >>> ax = ah.plot.eigenvalues(res)  # or res.plot(), res.diagnostics.plot()
    """
    if scale not in ("log-abs", "symlog"):
        raise ValueError(f"scale must be 'log-abs' or 'symlog', got {scale!r}")
    if label not in ("problems", "all"):
        raise ValueError(f"label must be 'problems' or 'all', got {label!r}")
    report = res_or_report.diagnostics if hasattr(res_or_report, "diagnostics_data") else res_or_report
    if not hasattr(report, "eigenvalues") or not hasattr(report, "problems"):
        raise TypeError(f"ah.plot.eigenvalues needs a FitResult or a DiagnosticReport, got {type(res_or_report).__name__}")
    plt = _pyplot("ah.plot.eigenvalues")
    from ._diagnostics import FLAT_CONDITION
    from ._report import format_direction

    lam = np.asarray(report.eigenvalues, dtype=np.float64)
    if lam.size == 0:
        raise ValueError("the report has no eigenvalues to draw (a model without parameters?)")
    if not np.all(np.isfinite(lam)):
        raise ValueError(
            f"{int(np.sum(~np.isfinite(lam)))} of the {lam.size} scaled eigenvalues are not finite (the Hessian "
            "has non-finite entries): there is no spectrum to draw; print the diagnostics (res.diagnostics) "
            "for the cause and ah.hessian(model, res.params) for the parameters involved"
        )
    k = np.arange(1, lam.size + 1)
    top = float(np.max(np.abs(lam)))
    flat_level = top / FLAT_CONDITION
    negative = lam < 0
    owner = ax is None
    ax = _new_axes(plt, ax, (6, 4))
    if scale == "log-abs":
        # an exact zero has no logarithm: drawn at a floor below the flat line, labelled so
        floor = flat_level * 1e-3 if top > 0 else 1e-300
        y = np.maximum(np.abs(lam), floor)
        ax.set_yscale("log")
        ax.set_ylabel("|scaled eigenvalue| (unit-free)")
    else:
        y = lam
        from matplotlib.ticker import SymmetricalLogLocator

        linthresh = max(flat_level, np.finfo(np.float64).tiny)
        ax.set_yscale("symlog", linthresh=linthresh)
        # a tick every 4 decades: every decade from 1e-12 to 1 on both sides is unreadable
        ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=1e4))
        ax.set_ylabel("scaled eigenvalue (unit-free, symlog)")
    ax.plot(k[~negative], y[~negative], "o", color="C0", label="positive curvature")
    if negative.any():
        ax.plot(k[negative], y[negative], "v", color="C3", ms=8, label="negative curvature")
    ax.axhline(flat_level if scale == "log-abs" else 0.0, color="grey", linestyle=":",
               label=f"flat below {1 / FLAT_CONDITION:.0e} of the largest" if scale == "log-abs" else "0")
    if scale == "symlog":
        ax.axhspan(-flat_level, flat_level, color="0.9", label=f"flat: |lambda| < {1 / FLAT_CONDITION:.0e} x largest")
    vec = getattr(report, "eigenvectors", None)
    labels = tuple(getattr(report, "labels", ()))
    named = {}
    if vec is not None and labels:
        vec = np.asarray(vec, dtype=np.float64)
        directions = [format_direction(vec[:, j], labels) for j in range(lam.size)]
        for prob in report.problems:
            if prob.direction is not None and prob.direction in directions:
                j = directions.index(prob.direction)
                named.setdefault(j, []).append(prob.kind)
        if label == "all":
            for j in range(lam.size):
                named.setdefault(j, [])
        for j, kinds in sorted(named.items()):
            text = (f"[{', '.join(dict.fromkeys(kinds))}] " if kinds else "") + directions[j]
            right = k[j] > (lam.size + 1) / 2.0  # labels of the right half run leftwards, inside the axes
            # neighbours' labels alternate above and below their points, so they do not overlap
            ax.annotate(text, (k[j], y[j]), xytext=(-6 if right else 6, 5 if j % 2 == 0 else -11),
                        textcoords="offset points", fontsize=7,
                        color="C3" if kinds else "0.3", ha="right" if right else "left")
    ax.set_xlabel("eigen-direction (ascending eigenvalue)")
    if lam.size <= 20:
        ax.set_xticks(k)
    ax.set_xlim(0.5, lam.size + 0.5)
    if scale == "log-abs" and top > 0:  # a decade of room above the largest for its label
        ax.set_ylim(top=10.0 * top)
    held = f"; held fixed: {', '.join(report.held_fixed)}" if getattr(report, "held_fixed", ()) else ""
    ax.set_title(f"scaled Hessian: condition number {report.condition_number:.3g}{held}", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    if owner:  # a figure made here: fit its labels; a caller's figure is the caller's to lay out
        ax.figure.tight_layout()
    return ax


# ------------------------------------------------------------------------------------------
# Many fits: bootstrap, profile, simulation study, random effects
# ------------------------------------------------------------------------------------------
def bootstrap(boot: Any, params: Optional[Sequence] = None, *, bins: int = 30, ncols: int = 3,
              fig: Any = None, axes: Any = None) -> Any:
    """A histogram of the bootstrap replicates per parameter, with the Wald normal over it.

    Each panel: the converged replicates (``boot.replicates[boot.ok]``) as a density
    histogram, the normal ``N(estimate, estimate_se^2)`` the Wald standard error implies (of
    the replicates' ``cov_type``), and the estimate (dashed). A histogram wider or off-centre
    from the curve is what ``boot.compare()`` / ``wald_check()`` report in numbers.

    Args:
        boot: ``ah.bootstrap(...)``'s ``BootstrapResult``.
        params: labels (or flat indices) of the parameters to draw (default: all).
        bins: histogram bins; ncols: panels per row of a new grid.
        fig, axes: a Figure to fill with a grid, or the Axes to draw into (one per parameter).

    Returns:
        The Figure.

    Example:
        >>> fig = ah.plot.bootstrap(ah.bootstrap(res, n=2000, key=0))  # or boot.plot()
    """
    plt = _pyplot("ah.plot.bootstrap")
    idx = _select(boot.labels, params)
    good = boot._good()  # the converged replicates (raises, naming the count, if fewer than 2)
    est = np.asarray(boot.estimate, dtype=np.float64)
    se = np.asarray(boot.estimate_se, dtype=np.float64)
    fig, panels = _grid(plt, len(idx), fig, axes, ncols)
    for ax, j in zip(panels, idx):
        lab = boot.labels[j]
        ax.hist(good[:, j], bins=bins, density=True, color="0.75", edgecolor="white", label="replicates")
        if np.isfinite(se[j]) and se[j] > 0:
            lo, hi = min(good[:, j].min(), est[j] - 4 * se[j]), max(good[:, j].max(), est[j] + 4 * se[j])
            x = np.linspace(lo, hi, 200)
            ax.plot(x, _norm_pdf((x - est[j]) / se[j]) / se[j], "C0-", label=f"Wald normal ({boot.fits.cov_type})")
        ax.axvline(est[j], color="k", linestyle="--", lw=0.8, label="estimate")
        ax.set_xlabel(f"{lab} (natural scale)")
        ax.set_ylabel("density (per unit)")
        ax.set_title(lab, fontsize=9)
    panels[0].legend(fontsize=7)
    fig.suptitle(f"{boot.kind} bootstrap ({good.shape[0]} of {boot.n} converged) against the Wald normal", fontsize=10)
    fig.tight_layout()
    return fig


def profile(prof: Any, ax: Any = None) -> Any:
    """The profile likelihood-ratio curve of one parameter against its Wald quadratic.

    Draws ``prof.lr = 2 (llf_hat - llf)`` at ``prof.values`` (converged refits joined by a
    line; failed ones as grey crosses), the Wald quadratic ``((v - estimate) / se)^2`` with
    ``se`` from ``prof.wald``, the chi-square cut-off ``chi2_1(1 - alpha)``, and the interval
    ends: the profile's (solid verticals, finite ends only) and Wald's (dashed).

    Args:
        prof: ``ah.profile(...)``'s ``ProfileResult``.
        ax: matplotlib Axes (default: a new figure).

    Returns:
        The Axes.

    Example:
        >>> ax = ah.plot.profile(ah.profile(res, "sigma"))  # or prof.plot()
    """
    plt = _pyplot("ah.plot.profile")
    from ._solver import Status

    z = _norm_ppf(1.0 - prof.alpha / 2.0)
    cut = z * z  # chi2_1(1 - alpha) is the square of the normal quantile
    values = np.asarray(prof.values, dtype=np.float64)
    lr = np.asarray(prof.lr, dtype=np.float64)
    ok = np.asarray(prof.status_code) == Status.CONVERGED
    wald = np.asarray(prof.wald, dtype=np.float64)
    se = (wald[1] - wald[0]) / (2.0 * z)
    owner = ax is None
    ax = _new_axes(plt, ax, (6, 4))
    ax.plot(values[ok], lr[ok], "k.-", lw=1.5, label="profile likelihood ratio")
    if (~ok).any():
        ax.plot(values[~ok], lr[~ok], "x", color="0.6", label="refit did not converge")
    if np.isfinite(se) and se > 0:
        span = np.concatenate([values[np.isfinite(values)], wald[np.isfinite(wald)]])
        grid = np.linspace(span.min(), span.max(), 300)
        ax.plot(grid, ((grid - prof.estimate) / se) ** 2, "C0--", label="Wald quadratic")
    ax.axhline(cut, color="C3", lw=0.8, label=f"chi2_1({1 - prof.alpha:.3g}) = {cut:.3g}")
    level = f"{1 - prof.alpha:.3g}"
    for k, v in enumerate(prof.interval):
        if np.isfinite(v):
            ax.axvline(v, color="k", lw=0.8, label=f"profile {level} interval" if k == 0 or not np.isfinite(prof.interval[0]) else None)
    for k, v in enumerate(wald):
        if np.isfinite(v):  # a NaN standard error (a flat direction) has no Wald interval
            ax.axvline(v, color="C0", lw=0.8, linestyle=":", label=f"Wald {level} interval" if k == 0 else None)
    top = np.nanmax(lr[ok]) if ok.any() else cut
    ax.set_ylim(-0.05 * max(top, cut), 1.3 * max(min(top, 4 * cut), cut))
    ax.set_xlabel(f"{prof.name} (natural scale)")
    ax.set_ylabel("2 (llf_hat - profile llf)")
    # an open end is the domain bound: "at the domain bound 0" for a variance, "unbounded" for inf
    sides = [f"{side} end " + (f"at the domain bound {float(end):g}" if np.isfinite(end) else "unbounded")
             for side, is_open, end in zip(("lower", "upper"), prof.open_ends, prof.interval) if is_open]
    open_txt = "; " + ", ".join(sides) if sides else ""
    ax.set_title(f"profile likelihood of {prof.name}{open_txt}" + ("" if prof.valid else " (NOT VALID: refit first)"), fontsize=10)
    ax.legend(fontsize=7)
    if owner:  # a figure made here: fit its labels; a caller's figure is the caller's to lay out
        ax.figure.tight_layout()
    return ax


def coverage(study: Any, ax: Any = None, *, band: float = 0.95) -> Any:
    """Wald coverage per parameter and covariance type, against the nominal level.

    Points are ``study.table().coverage[cov_type]`` with ``+/- 1.96`` Monte-Carlo standard
    errors; the grey band is where the coverage of ``R`` converged replicates falls with
    probability ``band`` if the true coverage is nominal (normal approximation to the binomial,
    ``level +/- z sqrt(level (1 - level) / R)``). A point outside the band is coverage that
    differs from nominal beyond Monte-Carlo error.

    Args:
        study: ``ah.simulation_study(...)``'s ``SimulationStudy`` (or its ``table()``).
        ax: matplotlib Axes (default: a new figure).
        band: probability of the Monte-Carlo band.

    Returns:
        The Axes.

    Example:
        >>> ax = ah.plot.coverage(ah.simulation_study(model, truth, n=1000, key=0))  # or study.plot()
    """
    if not 0.0 < band < 1.0:
        raise ValueError(f"band must be in (0, 1), got {band}")
    plt = _pyplot("ah.plot.coverage")
    t = study.table() if hasattr(study, "table") else study
    kinds = list(t.coverage)
    p = len(t.labels)
    R = t.n_ok
    zb = _norm_ppf(0.5 + band / 2.0)
    half = zb * np.sqrt(t.level * (1.0 - t.level) / R)
    owner = ax is None
    ax = _new_axes(plt, ax, (max(5.0, 0.6 * p + 2), 3.8))
    x = np.arange(p)
    ax.axhspan(t.level - half, t.level + half, color="0.88",
               label=f"{band:.0%} Monte-Carlo band at nominal (R = {R})")
    ax.axhline(t.level, color="0.4", lw=0.8, label=f"nominal {t.level:.3g}")
    width = 0.6 / max(len(kinds), 1)
    for k, c in enumerate(kinds):
        offset = (k - (len(kinds) - 1) / 2.0) * width
        ax.errorbar(x + offset, t.coverage[c], yerr=1.96 * np.asarray(t.coverage_mcse[c]), fmt="o", ms=5,
                    capsize=2, color=f"C{k}", label=f"cov_type={c!r}")
    ax.set_xticks(x, list(t.labels), rotation=45 if p > 6 else 0, ha="right" if p > 6 else "center")
    ax.set_xlabel("parameter")
    ax.set_ylabel(f"coverage of the {t.level:.3g} Wald interval (fraction)")
    ax.set_title(f"simulation study: {R} of {t.n} fits converged", fontsize=10)
    ax.legend(fontsize=7)
    if owner:  # a figure made here: fit its labels; a caller's figure is the caller's to lay out
        ax.figure.tight_layout()
    return ax


def random_effects(res: Any, name: Optional[str] = None, ax: Any = None, *, alpha: float = 0.05,
                   levels: Optional[Sequence] = None, sort: bool = True) -> Any:
    """Caterpillar plot of a random effect's conditional modes with two intervals each.

    ``mode -/+ z se`` (TMB ``sdreport``-style, with the parameters' uncertainty) and ``mode -/+
    z se_conditional`` (given the estimates), for every group, sorted by mode. Given a fit whose
    effect is ``ah.Normal(sd=...)``, the grey band is ``-/+ z sd``: where ``1 - alpha`` of the
    fitted normal's draws fall.

    Args:
        res: a ``FitResult`` of a model with random effects, or one ``RandomEffectEstimate``
            (``res.random[name]``).
        name: which random effect (default: the only one).
        ax: matplotlib Axes (default: a new figure); a ``q``-variate effect needs ``q`` of
            them (a sequence) or draws a new figure with one panel per coefficient.
        alpha: intervals at level ``1 - alpha``.
        levels: names of the groups in code order (default: the estimate's ``levels``, the
            zoo's level names, else ``0..G-1``).
        sort: order the groups by their mode.

    Returns:
        The Axes (one coefficient per group) or the Figure (``q`` coefficients).

    Example:
        >>> ax = ah.plot.random_effects(res, "b", levels=herd_names)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    plt = _pyplot("ah.plot.random_effects")
    sd_value = None
    if hasattr(res, "mode") and hasattr(res, "se_conditional"):
        est = res
    else:
        if getattr(getattr(res, "model", None), "laplace", None) is None:
            raise TypeError("ah.plot.random_effects needs a FitResult of a model with random effects "
                            f"(ah.Model(..., random=...)) or one of its res.random values; got {type(res).__name__}")
        effects = res.random
        if name is None:
            if len(effects) != 1:
                raise ValueError(f"the model has random effects {list(effects)}: name the one to draw (name=...)")
            name = next(iter(effects))
        if name not in effects:
            raise ValueError(f"no random effect {name!r}; the model has {list(effects)}")
        est = effects[name]
        block = next(b for b in res.model.laplace.structure.blocks if b.name == name)
        if block.kind == "normal":
            sd_value = float(np.asarray(res.model.spec.unflatten(res.params_flat)[block.parameters[0]]))
    mode = np.asarray(est.mode, dtype=np.float64)
    se = np.asarray(est.se, dtype=np.float64)
    se_c = np.asarray(est.se_conditional, dtype=np.float64)
    if mode.ndim == 1:
        mode, se, se_c = mode[:, None], se[:, None], se_c[:, None]
    G, q = mode.shape[0], int(np.prod(mode.shape[1:]))
    mode, se, se_c = (a.reshape(G, q) for a in (mode, se, se_c))
    if levels is None:
        levels = getattr(est, "levels", None)
    names = [str(v) for v in (levels if levels is not None else range(G))]
    coefficients = getattr(est, "coefficients", None)
    if coefficients is None or len(coefficients) != q:
        coefficients = [str(c) for c in range(q)]
    if len(names) != G:
        raise ValueError(f"levels has {len(names)} names, the random effect {est.name!r} has {G} groups")
    z = _norm_ppf(1.0 - alpha / 2.0)
    if q == 1:
        panels = [_new_axes(plt, ax, (6, max(3.0, 0.25 * G + 1.5)))]
        out = panels[0]
    else:
        if ax is not None:
            panels = list(np.ravel(np.asarray(ax, dtype=object)))
            if len(panels) < q:
                raise ValueError(f"the random effect {est.name!r} has {q} coefficients per group: give {q} axes")
            out = panels[0].figure
        else:
            out, grid = plt.subplots(1, q, figsize=(4.5 * q, max(3.0, 0.25 * G + 1.5)), squeeze=False)
            panels = list(grid[0])
    owner = ax is None
    pos = np.arange(G)
    for c, a in enumerate(panels[:q]):
        order = np.argsort(mode[:, c], kind="stable") if sort else np.arange(G)
        m = mode[order, c]
        if sd_value is not None:
            a.axvspan(-z * sd_value, z * sd_value, color="0.92", label=f"{1 - alpha:.0%} of N(0, sd^2), sd = {sd_value:.3g}")
        a.axvline(0.0, color="0.5", lw=0.8)
        a.errorbar(m, pos - 0.15, xerr=z * se[order, c], fmt="o", color="C0", ms=4, capsize=2,
                   label="with parameter uncertainty (sdreport)")
        a.errorbar(m, pos + 0.15, xerr=z * se_c[order, c], fmt="s", color="C1", ms=3, capsize=2,
                   label="conditional on the estimates")
        if G <= 60:
            a.set_yticks(pos, [names[i] for i in order], fontsize=7)
        a.set_xlabel(f"{est.name}" + (f"[:, {coefficients[c]}]" if q > 1 else "") + " (scale of the linear predictor)")
        a.set_ylabel("group" + (" (sorted by mode)" if sort else ""))
        a.set_title(f"{est.name}: conditional modes, {1 - alpha:.0%} intervals", fontsize=10)
    panels[0].legend(fontsize=7)
    if owner:
        panels[0].figure.tight_layout()
    return out
