"""Tests of hypotheses on fitted models: Wald (linear or nonlinear), t (one combination per
row), likelihood ratio (with the boundary case named) and score (Lagrange multiplier).

Everything here is a function of ``FitResult``s (and, for the score test, the full ``Model``);
``FitResult.wald_test`` / ``t_test`` are thin methods calling in, so imports flow one way
(this module imports ``_fit``; ``_fit`` imports this one only inside those methods).

Tail probabilities come from ``jax.scipy.special`` (``gammaincc`` for chi-square, ``betainc``
for F) in float64, so the core needs no scipy: ``P(chi2_k > x) = Q(k/2, x/2)`` and
``P(F_{d1,d2} > f) = I_{d2/(d2 + d1 f)}(d2/2, d1/2)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, gammaincc
from jax.scipy.stats import norm

from ._delta import delta_method
from ._fit import FitResult
from ._model import Model
from ._pandas import require_pandas
from ._format import format_table
from ._html import table as html_table
from ._report import InferenceWarning

__all__ = [
    "WaldTestResult", "TTestResult", "LRTestResult", "ScoreTestResult",
    "wald_test", "t_test", "lr_test", "score_test", "chi2_sf", "f_sf",
]


# ------------------------------------------------------------------------------------------
# Tail probabilities without scipy
# ------------------------------------------------------------------------------------------
def chi2_sf(x: float, df: float) -> float:
    """``P(chi2_df >= x)``; ``df = 0`` is the point mass at 0 (1 for ``x <= 0``, else 0), the
    first term of a chi-bar-square mixture."""
    x = float(x)
    if not np.isfinite(x):
        return float("nan") if np.isnan(x) else (0.0 if x > 0 else 1.0)
    if x <= 0.0:
        return 1.0
    if df == 0:
        return 0.0
    return float(gammaincc(jnp.float64(df) / 2.0, jnp.float64(x) / 2.0))


def f_sf(x: float, df_num: float, df_denom: float) -> float:
    """``P(F_{df_num, df_denom} >= x)`` by the regularised incomplete beta function."""
    x = float(x)
    if np.isnan(x):
        return float("nan")
    if x <= 0.0:
        return 1.0
    d1, d2 = jnp.float64(df_num), jnp.float64(df_denom)
    return float(betainc(d2 / 2.0, d1 / 2.0, d2 / (d2 + d1 * x)))


def chibar_sf(x: float, df: int, m: int) -> float:
    """Tail of the chi-bar-square mixture for ``m`` (independent) parameters on the boundary
    among ``df`` restrictions: ``sum_j C(m, j) 2^-m P(chi2_{df-m+j} >= x)``; ``m = 1`` is the
    50:50 mixture of ``chi2_{df-1}`` and ``chi2_df`` (Self and Liang 1987)."""
    return float(sum(math.comb(m, j) * 0.5**m * chi2_sf(x, df - m + j) for j in range(m + 1)))


# ------------------------------------------------------------------------------------------
# Restrictions: a matrix over the flat parameters, or a function of the parameter pytree
# ------------------------------------------------------------------------------------------
def _row_label(row: np.ndarray, labels) -> str:
    """``"beta[x1] - beta[x2]"`` from a restriction row."""
    text = ""
    for j in np.flatnonzero(row):
        c = float(row[j])
        sign = "-" if c < 0 else ("+" if text else "")
        mag = abs(c)
        coef = "" if mag == 1.0 else f"{mag:g}*"
        text += (f" {sign} " if text else sign) + coef + labels[j]
    return text


def _check_fit(result: Any, what: str) -> None:
    if isinstance(result, FitResult):
        return
    if type(result).__name__ == "BatchResult":
        raise TypeError(
            f"{what} needs a FitResult (one fit), got a BatchResult of {len(result)} members: "
            f"apply it to one member at a time, bres.member(i)"
        )
    raise TypeError(f"{what} needs a FitResult (from ah.fit), got {type(result).__name__}")


def _restrictions(result: FitResult, r: Any, value: Any, what: str):
    """``(estimate, null, cov, jacobian, labels)`` of the restrictions ``r(theta) = value``."""
    p = len(result.labels)
    if callable(r) and not isinstance(r, (np.ndarray, jax.Array)):
        d = delta_method(result, r)
        est = np.ravel(np.asarray(d.value, dtype=np.float64))
        J = np.atleast_2d(np.asarray(d.jacobian, dtype=np.float64)).reshape(est.size, -1)
        cov = np.atleast_2d(np.asarray(d.cov, dtype=np.float64)).reshape(est.size, est.size)
        if d.labels is not None:
            labels = tuple(d.labels)
        elif est.size == 1:
            labels = ("r(params)",)
        else:
            labels = tuple(f"r(params)[{i}]" for i in range(est.size))
    else:
        try:
            R = np.asarray(r, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{what}: r must be a (k, p) matrix over the flat parameters (res.labels order), one row of "
                f"length p, or a function fn(params); got {type(r).__name__} ({err})"
            ) from None
        if R.ndim == 1:
            R = R[None, :]
        if R.ndim != 2 or R.shape[1] != p or R.shape[0] == 0:
            raise ValueError(
                f"{what}: r has shape {np.shape(r)}; it needs {p} columns, one per parameter in res.labels order "
                f"{list(result.labels)} (a (k, {p}) matrix or a single row of length {p})"
            )
        if not np.all(np.isfinite(R)):
            raise ValueError(f"{what}: r has non-finite entries (rows {sorted(set(np.nonzero(~np.isfinite(R))[0].tolist()))})")
        zero = np.flatnonzero(~np.any(R != 0, axis=1))
        if zero.size:
            raise ValueError(f"{what}: row(s) {zero.tolist()} of r are all zero: they restrict nothing; drop them")
        J = R
        x = np.asarray(result.params_flat, dtype=np.float64)
        V = np.asarray(result.cov_params(), dtype=np.float64)
        est = R @ x
        # NaN read as 0 and put back where a restriction uses a parameter with a NaN variance
        # (so an unused NaN parameter does not spoil the others, as ``delta_method`` does)
        cov = R @ np.where(np.isnan(V), 0.0, V) @ R.T
        reach = np.abs(R) @ np.isnan(V).astype(float) @ np.abs(R).T
        cov = np.where(reach > 0, np.nan, cov)
        labels = tuple(_row_label(row, result.labels) for row in R)
    k = est.size
    if value is None:
        null = np.zeros(k)
    else:
        null = np.asarray(value, dtype=np.float64)
        if null.ndim == 0:
            null = np.full(k, float(null))
        null = np.ravel(null) if null.size == k else null
        if null.shape != (k,):
            raise ValueError(f"{what}: value has shape {np.shape(value)}; it needs one entry per restriction, shape ({k},)")
        if not np.all(np.isfinite(null)):
            raise ValueError(f"{what}: value has non-finite entries: {null.tolist()}")
    bad = ~np.isfinite(np.diag(cov))
    if bad.any():
        nan_se = [lab for lab, s in zip(result.labels, np.asarray(result.bse_flat)) if not np.isfinite(s)]
        raise ValueError(
            f"{what}: restriction(s) {[labels[i] for i in np.flatnonzero(bad)]} use parameters whose standard errors "
            f"are NaN ({nan_se}): the covariance cannot test them. See res.diagnostics for why; test other "
            "parameters, or refit the model without the problem"
        )
    return est, null, cov, J, labels


def _check_rank(J: np.ndarray, labels, what: str) -> None:
    """Refuse restrictions whose rows are linearly dependent (the joint test would count a
    restriction twice): rank from the singular values of the row-normalised Jacobian."""
    norms = np.linalg.norm(J, axis=1)
    zero = np.flatnonzero(~(norms > 0))
    if zero.size:
        raise ValueError(
            f"{what}: restriction(s) {[labels[i] for i in zero]} do not move with any parameter at the estimate "
            "(zero gradient): the Wald test cannot see them; write them another way or use lr_test"
        )
    if J.shape[0] == 1:
        return
    s = np.linalg.svd(J / norms[:, None], compute_uv=False)
    tol = max(J.shape) * np.finfo(J.dtype).eps ** 0.5 * s[0]  # sqrt(eps): rows equal to rounding
    rank = int(np.sum(s > tol))
    if rank < J.shape[0]:
        raise ValueError(
            f"{what}: the {J.shape[0]} restrictions have rank {rank}: some are linear combinations of the others "
            f"({list(labels)}); drop the redundant ones"
        )


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
def _p_text(p: float) -> str:
    return f"{p:.4g}" if p >= 1e-4 else f"{p:.3e}"


@dataclasses.dataclass(frozen=True)
class WaldTestResult:
    """Joint Wald test of ``r(params) = value`` (``str()`` is a table, as statsmodels'
    ``ContrastResults``).

    ``statistic``: the chi-square statistic ``(r - value)' (J V J')^-1 (r - value)``, or with
    ``distribution == "F"`` that divided by ``df``. ``df``: the number of restrictions;
    ``df_denom``: the residual degrees of freedom of the F form (``None`` for chi-square).
    ``estimate``, ``value``, ``cov``, ``labels``: the restrictions at the estimate, their null
    values, their covariance, their names.
    """

    statistic: float
    pvalue: float
    df: int
    df_denom: Optional[float]
    distribution: str
    estimate: np.ndarray
    value: np.ndarray
    cov: np.ndarray
    labels: tuple
    cov_type: str

    @property
    def fvalue(self) -> float:
        """``statistic`` of the F form (statsmodels' name); ``statistic / df`` otherwise."""
        return self.statistic if self.distribution == "F" else self.statistic / self.df

    def _parts(self):
        if self.distribution == "F":
            dist = f"F({self.df}, {self.df_denom:g})"
        else:
            dist = f"chi2({self.df})"
        title = f"Wald test ({self.cov_type} covariance): {dist} = {self.statistic:.6g}, p = {_p_text(self.pvalue)}"
        se = np.sqrt(np.diag(self.cov))
        rows = [[lab, self.estimate[i], self.value[i], se[i]] for i, lab in enumerate(self.labels)]
        return title, ["restriction", "estimate", "null", "std err"], rows, []

    def __str__(self) -> str:
        title, headers, rows, notes = self._parts()
        return format_table(headers, rows, title)

    def _repr_html_(self) -> str:
        return html_table(*self._parts())


@dataclasses.dataclass(frozen=True)
class TTestResult:
    """One test per restriction row: ``effect``, ``se``, ``statistic`` (z), ``pvalue`` and
    ``conf_int(alpha)`` (normal reference, as statsmodels' ``t_test`` for likelihood models).
    ``to_frame()`` / ``summary_frame()`` (statsmodels' name) give the table as a DataFrame."""

    labels: tuple
    effect: np.ndarray
    se: np.ndarray
    value: np.ndarray
    cov_type: str

    @property
    def statistic(self) -> np.ndarray:
        return (self.effect - self.value) / self.se

    tvalue = statistic  # statsmodels' name

    @property
    def pvalue(self) -> np.ndarray:
        return np.asarray(2.0 * norm.sf(jnp.abs(jnp.asarray(self.statistic))), dtype=np.float64)

    def conf_int(self, alpha: float = 0.05) -> np.ndarray:
        """``(k, 2)`` Wald intervals of the effects."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        z = float(norm.ppf(1.0 - alpha / 2.0))
        return np.stack([self.effect - z * self.se, self.effect + z * self.se], axis=-1)

    def _parts(self, alpha: float = 0.05):
        ci = self.conf_int(alpha)
        headers = ["test", "effect", "std err", "z", "P>|z|", f"[{alpha / 2:g}", f"{1 - alpha / 2:g}]"]
        rows = [
            [lab, self.effect[i], self.se[i], self.statistic[i], self.pvalue[i], ci[i, 0], ci[i, 1]]
            for i, lab in enumerate(self.labels)
        ]
        notes = []
        if np.any(self.value != 0):
            notes.append("null values: " + ", ".join(f"{lab} = {v:g}" for lab, v in zip(self.labels, self.value)))
        return f"Tests of single restrictions ({self.cov_type} covariance, normal reference)", headers, rows, notes

    def __str__(self) -> str:
        title, headers, rows, notes = self._parts()
        return format_table(headers, rows, title) + "".join("\n" + n for n in notes)

    def _repr_html_(self) -> str:
        return html_table(*self._parts())

    def to_frame(self, alpha: float = 0.05) -> Any:
        """The table as a pandas DataFrame indexed by restriction: ``coef``, ``std err``, ``z``,
        ``P>|z|``, ``[alpha/2`` / ``1-alpha/2]`` (the columns of ``FitResult.summary_frame``)."""
        pd = require_pandas("TTestResult.to_frame()", "str(result) or effect / se / pvalue")
        ci = self.conf_int(alpha)
        return pd.DataFrame(
            {"coef": self.effect, "std err": self.se, "z": self.statistic, "P>|z|": self.pvalue,
             f"[{alpha / 2:g}": ci[:, 0], f"{1 - alpha / 2:g}]": ci[:, 1]},
            index=list(self.labels),
        )

    summary_frame = to_frame


@dataclasses.dataclass(frozen=True)
class LRTestResult:
    """Likelihood-ratio test ``2 (llf_full - llf_restricted)`` against ``chi2(df)``.

    ``boundary``: how many tested parameters sit on the boundary of their domain under the
    null (see ``lr_test``); where it is positive the chi-square ``pvalue`` is conservative and
    ``pvalue_mixture`` is the chi-bar-square one (50:50 ``chi2(df-1)``/``chi2(df)`` for one
    such parameter), ``boundary_parameters`` names them.
    """

    statistic: float
    df: int
    pvalue: float
    llf_restricted: float
    llf_full: float
    boundary: int = 0
    pvalue_mixture: Optional[float] = None
    boundary_parameters: tuple = ()

    def _parts(self):
        title = f"Likelihood-ratio test: 2 (llf_full - llf_restricted) = {self.statistic:.6g}, df = {self.df}"
        rows = [["chi2", self.statistic, self.pvalue]]
        notes = []
        if self.pvalue_mixture is not None:
            mix = "50:50 chi2(%d)/chi2(%d)" % (self.df - 1, self.df) if self.boundary == 1 else f"chi-bar-square ({self.boundary} boundary parameters)"
            rows.append([mix, self.statistic, self.pvalue_mixture])
            notes.append(
                f"on the boundary under the null: {', '.join(self.boundary_parameters)}; the chi2 p-value is "
                "conservative there, report the mixture's"
            )
        notes.append(f"llf restricted {self.llf_restricted:.8g}, full {self.llf_full:.8g}")
        return title, ["reference", "statistic", "p-value"], rows, notes

    def __str__(self) -> str:
        title, headers, rows, notes = self._parts()
        return format_table(headers, rows, title) + "".join("\n" + n for n in notes)

    def _repr_html_(self) -> str:
        return html_table(*self._parts())


@dataclasses.dataclass(frozen=True)
class ScoreTestResult:
    """Score (Lagrange-multiplier) test ``LM = g' I^-1 g`` at the null, against ``chi2(df)``.

    ``gradient``: the full model's score (log-likelihood gradient) at the null, in ``labels``
    order; ``information``: ``"hessian"`` (observed, the negative exact Hessian) or ``"opg"``
    (outer product of per-observation scores).
    """

    statistic: float
    df: int
    pvalue: float
    information: str
    gradient: np.ndarray
    labels: tuple

    def _parts(self):
        title = f"Score (LM) test ({self.information} information): chi2({self.df}) = {self.statistic:.6g}, p = {_p_text(self.pvalue)}"
        rows = [[lab, self.gradient[i]] for i, lab in enumerate(self.labels)]
        return title, ["parameter", "score at the null"], rows, []

    def __str__(self) -> str:
        title, headers, rows, _ = self._parts()
        return format_table(headers, rows, title)

    def _repr_html_(self) -> str:
        return html_table(*self._parts())


# ------------------------------------------------------------------------------------------
# Wald and t
# ------------------------------------------------------------------------------------------
def wald_test(result: FitResult, r: Any, value: Any = None, *, use_f: bool = False) -> WaldTestResult:
    """Joint Wald test of ``r(params) = value`` with the fit's covariance (its ``cov_type``).

    Args:
        result: a ``FitResult``.
        r: ``(k, p)`` matrix over the flat parameters (``res.labels`` order), a single row of
            length ``p``, or a function ``fn(params)`` of the parameter pytree returning a scalar,
            an array or a pytree (nonlinear restrictions: delta method with the exact Jacobian,
            ``jax.jacfwd``, as ``ah.delta_method``).
        value: the null values, one per restriction (default 0; a scalar is broadcast).
        use_f: F form ``statistic / k`` against ``F(k, n_obs - p)`` (statsmodels'
            ``use_f=True``) instead of chi-square ``chi2(k)``.

    Returns:
        ``WaldTestResult`` (``statistic``, ``pvalue``, ``df``, ``df_denom``, ``distribution``).

    Example:
        >>> res.wald_test(np.array([[0, 1, -1, 0]]))            # beta[1] == beta[2]
        >>> res.wald_test(lambda p: p["beta"][1] * p["beta"][2], 0.5)
    """
    _check_fit(result, "wald_test")
    est, null, cov, J, labels = _restrictions(result, r, value, "wald_test")
    _check_rank(J, labels, "wald_test")
    d = est - null
    stat = float(d @ np.linalg.solve(cov, d))
    k = est.size
    if use_f:
        df_denom = float(result.df_resid)
        stat_f = stat / k
        return WaldTestResult(stat_f, f_sf(stat_f, k, df_denom), k, df_denom, "F", est, null, cov, labels, result.cov_type)
    return WaldTestResult(stat, chi2_sf(stat, k), k, None, "chi2", est, null, cov, labels, result.cov_type)


def t_test(result: FitResult, r: Any, value: Any = None) -> TTestResult:
    """One z test per restriction: ``(r_i(params) - value_i) / se_i`` (normal reference).

    ``r`` and ``value`` as in ``wald_test``: each row of a matrix (or each output of a function,
    by the delta method) is its own test of one combination.

    Example:
        >>> res.t_test(np.eye(4)[1:])                  # the slopes, one by one
        >>> res.t_test(lambda p: p["beta"][1] / p["beta"][2]).conf_int()
    """
    _check_fit(result, "t_test")
    est, null, cov, J, labels = _restrictions(result, r, value, "t_test")
    return TTestResult(tuple(labels), est, np.sqrt(np.diag(cov)), null, result.cov_type)


# ------------------------------------------------------------------------------------------
# Likelihood ratio
# ------------------------------------------------------------------------------------------
def _data_leaves(model: Model) -> dict:
    """``{path: numpy array}`` of a model's data."""
    leaves = jax.tree_util.tree_flatten_with_path(model.data)[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def check_same_data(restricted: Model, full: Model, what: str, weights=(None, None)) -> None:
    """Refuse fits of different data (see ``lr_test``)."""
    n_r, n_f = restricted.n_observations, full.n_observations
    if n_r is not None and n_f is not None and n_r != n_f:
        raise ValueError(
            f"{what}: the fits are of different data: the restricted model ({restricted.name}) has {n_r} "
            f"observations, the full ({full.name}) {n_f}. Both must be fitted to the same observations"
        )
    a, b = _data_leaves(restricted), _data_leaves(full)
    differ = [
        f"data{path} (shape {a[path].shape})" for path in sorted(set(a) & set(b))
        if a[path].shape == b[path].shape and a[path].dtype == b[path].dtype and not np.array_equal(a[path], b[path])
    ]
    if differ:
        raise ValueError(
            f"{what}: {', '.join(differ)} differ{'s' if len(differ) == 1 else ''} between the restricted "
            f"({restricted.name}) and the full ({full.name}) model (same name and shape, different values): the "
            "fits are of different data. Fit both models to the same data set"
        )
    shared = any(x.shape == y.shape and np.array_equal(x, y) for x in a.values() for y in b.values())
    if not shared:
        raise ValueError(
            f"{what}: the restricted ({restricted.name}) and the full ({full.name}) model share no data array "
            f"(restricted: {sorted(a)}, full: {sorted(b)}): they cannot be fits of the same data (the response "
            "at least must be the same array)"
        )
    wr, wf = weights
    if (wr is None) != (wf is None) or (wr is not None and not np.array_equal(np.asarray(wr), np.asarray(wf))):
        raise ValueError(f"{what}: the two fits have different frequency weights; fit both with the same weights")


def _dropped_random_effects(restricted: Model, full: Model) -> list:
    """Parameters of the full model's random effects whose block the restricted model lacks
    (every parameter of the block absent from the restricted model): their null value is a
    variance of 0, on the boundary."""
    if full.laplace is None:
        return []
    have = set(restricted.spec.names)
    out = []
    for b in full.laplace.structure.blocks:
        params = tuple(b.parameters)
        if params and not (set(params) & have):
            out.append(params[0])  # the sd: the variance component the test puts at 0
    return out


def lr_test(restricted: FitResult, full: FitResult, *, boundary: Union[None, int, str] = None) -> LRTestResult:
    """Likelihood-ratio test of a restricted model nested in a full one.

    The statistic ``2 (llf_full - llf_restricted)`` is referred to ``chi2(df)``, ``df`` the
    difference in the number of estimated parameters.

    Refuses (``ValueError``) fits of different data: different observation counts or
    frequency weights, a data array of the same name and shape with different values, or no
    data array in common (the response at least must be one array); and a restricted model
    with as many parameters as the full (not nested by count).

    Boundary (chi-bar-square). When the null puts a parameter on the boundary of its domain
    (a variance of 0) the chi-square reference is wrong. Counted automatically:
    each random effect of the full model none of whose parameters the restricted model has
    (e.g. ``linear`` vs ``mixed_linear``: the random-intercept sd is 0 under the null), and
    each parameter of the restricted fit at a bound of its domain (its diagnostics). Other
    cases (Poisson vs negative binomial: ``alpha = 0``) cannot be told from the models;
    say so with ``boundary=1`` (or ``"variance"``; an integer ``m`` for ``m`` independent
    variance parameters; ``0`` to switch the rule off). Then an ``InferenceWarning`` says so
    and ``pvalue_mixture`` is the chi-bar-square p-value: for one parameter
    ``0.5 P(chi2_{df-1} > s) + 0.5 P(chi2_df > s)`` (``chi2_0``: a point mass at 0).

    Example:
        >>> ah.lr_test(ah.fit(ah.models.linear(X, y)), ah.fit(ah.models.mixed_linear(X, y, g)))
    """
    _check_fit(restricted, "lr_test (restricted)")
    _check_fit(full, "lr_test (full)")
    check_same_data(restricted.model, full.model, "lr_test", (restricted.weights, full.weights))
    k_r, k_f = restricted.df_modelwc, full.df_modelwc
    df = k_f - k_r
    if df <= 0:
        raise ValueError(
            f"lr_test: the restricted fit has {k_r} parameters and the full {k_f}: a restricted model has fewer "
            "(is the order swapped? lr_test(restricted, full))"
        )
    llf_r, llf_f = float(np.asarray(restricted.llf)), float(np.asarray(full.llf))
    stat = 2.0 * (llf_f - llf_r)
    for which, res in (("restricted", restricted), ("full", full)):
        if not res.converged:
            warnings.warn(
                f"lr_test: the {which} fit did not converge ({res.status}); the statistic is not a likelihood ratio "
                "of maxima. Refit it (see its diagnostics) and test again",
                InferenceWarning, stacklevel=2,
            )
    # rounding of two maximised log-likelihoods: a few ulps of |llf| each, times the data's size
    slack = 1e3 * np.finfo(np.float64).eps * (1.0 + abs(llf_r) + abs(llf_f))
    if stat < -slack:
        warnings.warn(
            f"lr_test: the full fit's log-likelihood ({llf_f:.10g}) is below the restricted fit's ({llf_r:.10g}): "
            "the models are not nested, or the full fit stopped short of its maximum. Refit the full model "
            "starting from the restricted estimate (with the extra parameters at their null values)",
            InferenceWarning, stacklevel=2,
        )
    names: list = []
    if boundary is None:
        names = list(_dropped_random_effects(restricted.model, full.model))
        at = np.asarray(restricted.diagnostics_data.at_boundary)
        names += [lab for lab, b in zip(restricted.labels, at) if b]
        m = len(names)
    elif boundary == "variance":
        m, names = 1, ["(given: boundary='variance')"]
    elif isinstance(boundary, (int, np.integer)) and not isinstance(boundary, bool) and boundary >= 0:
        m = int(boundary)
        names = [f"(given: boundary={m})"] if m else []
    else:
        raise ValueError(f"lr_test: boundary must be None (the rule), 'variance', or a count >= 0; got {boundary!r}")
    m = min(m, df)
    pval = chi2_sf(stat, df)
    if m == 0:
        return LRTestResult(stat, df, pval, llf_r, llf_f)
    mix = chibar_sf(stat, df, m)
    what = "a 50:50 mixture of chi2(%d) and chi2(%d)" % (df - 1, df) if m == 1 else f"a chi-bar-square mixture ({m} parameters)"
    warnings.warn(
        f"lr_test: under the null {', '.join(names)} {'is' if len(names) == 1 else 'are'} on the boundary of the "
        "parameter space (a variance of 0), "
        f"so the statistic is not chi2({df}): for one such variance it is {what}. Chi-square p = {_p_text(pval)} "
        f"is conservative; the mixture p = {_p_text(mix)} (result.pvalue_mixture). With correlated random effects "
        "or several variances the mixture is only approximate: a parametric bootstrap of the statistic under the "
        "restricted fit is exact",
        InferenceWarning, stacklevel=2,
    )
    return LRTestResult(stat, df, pval, llf_r, llf_f, m, mix, tuple(names))


# ------------------------------------------------------------------------------------------
# Score (Lagrange multiplier)
# ------------------------------------------------------------------------------------------
def _null_params(restricted: FitResult, full_model: Model, null: Optional[dict]) -> Any:
    """The full model's parameter pytree at the null: each parameter from ``null`` if given
    there, else the restricted estimate of the parameter of the same name and shape."""
    spec_f, spec_r = full_model.spec, restricted.model.spec
    null = {} if null is None else dict(null)
    unknown = sorted(set(null) - set(spec_f.names))
    if unknown:
        raise ValueError(f"score_test: null names {unknown}, which are not parameters of the full model {list(spec_f.names)}")
    rleaves = dict(zip(spec_r.names, spec_r.treedef.flatten_up_to(restricted.params)))
    leaves, missing = [], []
    for name, shape in zip(spec_f.names, spec_f.shapes):
        if name in null:
            v = np.asarray(null[name], dtype=np.float64)
            if v.shape != shape:
                if v.size == 1 and shape != ():
                    v = np.full(shape, float(v))
                else:
                    raise ValueError(f"score_test: null[{name!r}] has shape {v.shape}; the full model's {name!r} has shape {shape}")
            leaves.append(jnp.asarray(v))
        elif name in rleaves and np.shape(rleaves[name]) == shape:
            leaves.append(jnp.asarray(rleaves[name]))
        else:
            got = f" (the restricted fit's has shape {np.shape(rleaves[name])})" if name in rleaves else ""
            missing.append(f"{name!r}, shape {shape}{got}")
    if missing:
        raise ValueError(
            "score_test: no null value for the full model's parameter(s) " + "; ".join(missing)
            + ": give them as null={name: value} (the restricted estimate with the tested entries at their null "
            "values, e.g. null={'beta': jnp.append(r.params['beta'], 0.0)})"
        )
    return spec_f.treedef.unflatten(leaves)


def score_test(restricted: FitResult, full_model: Model, *, null: Optional[dict] = None,
               information: str = "hessian") -> ScoreTestResult:
    """Score (Lagrange-multiplier) test of the restricted fit against a full model, without
    fitting the full model.

    The full model's parameters at the null are the restricted estimates (matched by
    parameter name and shape) with the others from ``null`` (their null values). At that
    point ``LM = g' I^-1 g``, ``g`` the full model's exact gradient and ``I`` the observed
    information (the negative exact Hessian, ``information="hessian"``) or the outer product
    of the per-observation scores (``"opg"``), referred to ``chi2(df)``, ``df`` the
    difference in the number of parameters.

    The null must lie inside the full model's domain: a variance of 0 (a dropped random
    effect) is on its boundary, where the score is not defined; use ``lr_test`` there.

    Example:
        >>> r = ah.fit(ah.models.poisson(X[:, :2], y))
        >>> ah.score_test(r, ah.models.poisson(X, y), null={"beta": jnp.append(r.params["beta"], 0.0)})
    """
    from ._derivatives import gradient, hessian, scores

    _check_fit(restricted, "score_test (restricted)")
    if not isinstance(full_model, Model):
        raise TypeError(f"score_test: full_model must be the full ah.Model (not fitted), got {type(full_model).__name__}")
    if information not in ("hessian", "opg"):
        raise ValueError(f"score_test: information must be 'hessian' or 'opg', got {information!r}")
    check_same_data(restricted.model, full_model, "score_test", (None, None))
    df = full_model.spec.size - restricted.model.spec.size
    if df <= 0:
        raise ValueError(
            f"score_test: the restricted fit has {restricted.model.spec.size} parameters and the full model "
            f"{full_model.spec.size}: the full model must have more"
        )
    params0 = _null_params(restricted, full_model, null)
    try:
        full_model.spec.check_domain(params0, "null")
    except ValueError as err:
        raise ValueError(
            f"score_test: {err}. The score is not defined on the boundary of the domain (a variance of 0): "
            "use lr_test, which gives the chi-bar-square p-value there"
        ) from None
    w = restricted.weights
    g = -np.asarray(gradient(full_model, params0, weights=w), dtype=np.float64)  # score of the log-likelihood
    if information == "hessian":
        info = np.asarray(hessian(full_model, params0, weights=w).matrix, dtype=np.float64)
    else:
        S = np.asarray(scores(full_model, params0), dtype=np.float64)
        info = (S * (1.0 if w is None else np.asarray(w)[:, None])).T @ S
    if not np.all(np.isfinite(g)) or not np.all(np.isfinite(info)):
        raise ValueError("score_test: the full model's gradient or information is not finite at the null")
    try:
        np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        warnings.warn(
            f"score_test: the {information} information of the full model is not positive definite at the null; "
            "the LM statistic is not a valid chi-square there. Use lr_test (fit the full model)",
            InferenceWarning, stacklevel=2,
        )
    stat = float(g @ np.linalg.solve(info, g))
    return ScoreTestResult(stat, df, chi2_sf(stat, df), information, g, tuple(full_model.labels))
