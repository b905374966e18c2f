"""``bootstrap``: thousands of refits with exact Hessians as one compiled, batched program.

Three ways to draw a bootstrap data set, each generated *inside* the compiled program from one
PRNG key per replicate (nothing of size ``B x N`` is built on the host):

* ``"nonparametric"``: multinomial frequency weights on the observations (``w_i`` = how often
  observation ``i`` was drawn), so no data are copied. Needs independent observations: a model
  declared ``independent=False`` is refused, and so is one left at the default whose
  contributions are found to link observations (``resampling_problem``: replacing other
  observations' data must leave an observation's contribution unchanged, at the estimate and
  at a perturbed point). A random-effects model with one grouping factor resamples its groups
  (its contributions are the groups' Laplace marginals): the cluster bootstrap.
* ``"parametric"``: a new data set from the model's ``simulate`` at the estimate.
* ``"block"``: the circular moving-block bootstrap for time series (Politis and Romano, 1992):
  blocks of ``block_length`` consecutive observations, started uniformly at random and wrapped
  around the end, are laid end to end. Every data leaf whose leading axis has length ``N`` is
  resampled with the same indices. The default length is chosen from the data by the
  Politis-White rule (``default_block_length``); the length is an input of the compiled
  program, so trying another costs no compilation.

After the refits, the replicates' spread and centre are compared with the Wald standard error
at the estimate (``wald_check``); a disagreement beyond Monte-Carlo error is a
``BootstrapWarning`` that says what to do for that kind of bootstrap.

Intervals: percentile, basic, normal, studentized (bootstrap-t, from each replicate's own exact
standard error) and BCa (Efron, 1987). BCa's acceleration is computed from the empirical
influence of each observation, ``U_i = H^-1 s_i`` (``s_i`` its exact score, ``H`` the observed
information): this is the infinitesimal jackknife, which needs no ``N`` extra refits, and for
the MLE it equals the jackknife's ``(N-1)(theta_bar - theta_(i))`` to first order. For
recursive models (``independent=False``) the per-period score contributions stand in for
observations, an approximation. Where the fit has no Wald standard error for a parameter (at
a bound, on a flat direction) this linearisation does not hold, and BCa gives NaN for it.

The studentized interval scales the pivot back by the estimate's standard error of the same
``cov_type`` as the replicates' (evaluated at the estimate when the fit used another).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from ._distributed import NotGathered, check_gather
from ._block_length import default_block_length
from ._resampling import (
    _block_resample, _multinomial_weights, _weighted_multinomial_weights, check_simulate, key_data,
    no_spread_message, resampling_problem, simulated,
)
from ._batch import BatchResult, check_cov_types, check_maxiter, member_fit, result_from_outputs, run_members
from ._fit import FitResult, evaluate
from ._format import format_table
from ._html import table as html_table
from ._inference import _inference_program
from ._solver import Status

__all__ = ["BootstrapWarning", "BootstrapResult", "BootstrapComparison", "bootstrap", "KINDS", "INTERVALS"]

KINDS = ("nonparametric", "parametric", "block")
INTERVALS = ("percentile", "basic", "normal", "studentized", "bca")


class BootstrapWarning(UserWarning):
    """Some bootstrap replicates failed and were left out (see ``fits.status``), or the
    bootstrap and Wald standard errors disagree by more than Monte-Carlo error allows."""


#: ``bootstrap`` warns when its replicates and the Wald approximation disagree by more than
#: Monte-Carlo error allows (``wald_check``), in spread or in centre:
#:
#: * spread: ``|log(boot SE / Wald SE)| > log(1 + SE_TOLERANCE) + MC_SDS * mcse``, with
#:   ``mcse = sqrt((kurtosis - 1) / (4 n))`` the relative Monte-Carlo standard error of a
#:   standard deviation from ``n`` replicates (delta method; 1/sqrt(2n) for normal ones).
#:   25%: a correctly specified model's bootstrap and Wald SEs estimate the same sampling SD
#:   only to first order; their higher-order difference, O(1/sqrt(N)), was under 10% for a
#:   logistic model at N = 1500 and 18% for the coefficient of an AR(1) with phi = 0.88 at
#:   N = 123 (parametric bootstrap, 1000 replicates, whose Monte-Carlo band adds ~10%), while
#:   the failures the check exists for are factors (blocks too short for a persistent series:
#:   1.8-2.2x for its innovation SD, 0.55x for its mean; resampling a recursive model's
#:   observations: 2.5x).
#: * centre: ``|mean replicate - estimate| > BIAS_SES * Wald SE + MC_SDS * boot SE / sqrt(n)``.
#:   An MLE's bias is O(1/N), a fraction O(1/sqrt(N)) of its SE, so a correct bootstrap's
#:   centre stays well within one SE (an AR(1) coefficient of 0.88 at N = 123: its bias
#:   -(1 + 3 phi) / N (Kendall, 1954) is ~0.7 SE, and the parametric bootstrap's centre was
#:   -0.72 SE);
#:   blocks that break a persistent series' dependence pull it 2-5 SEs towards 0, and the
#:   percentile interval then misses the estimate.
#:
#: 4 Monte-Carlo SDs: noise alone crosses either bound for ~6e-5 of parameters.
SE_TOLERANCE = 0.25
BIAS_SES = 1.0
MC_SDS = 4.0
#: fewer usable replicates than this say too little about a standard deviation (or about its
#: Monte-Carlo error, which needs their kurtosis) to judge it: no check
MIN_REPLICATES = 20


@dataclasses.dataclass(frozen=True)
class WaldCheck:
    """Bootstrap replicates against the Wald approximation at the estimate, per parameter.

    ``se_ratio``: bootstrap SE / Wald SE; ``se_limit``: the allowed ``|log se_ratio|``;
    ``bias_in_se``: (mean replicate - estimate) / Wald SE; ``bias_limit``: its allowed
    magnitude. ``flagged`` marks parameters outside either bound (see ``SE_TOLERANCE``).
    Parameters without a finite positive Wald SE, or whose replicates do not vary, are never
    flagged (NaN ratios): there is nothing to compare.
    """

    labels: tuple
    cov_type: str
    n_ok: int
    se_ratio: np.ndarray
    se_limit: np.ndarray
    bias_in_se: np.ndarray
    bias_limit: np.ndarray

    @property
    def se_flagged(self) -> np.ndarray:
        return np.logical_and(self.n_ok >= MIN_REPLICATES, np.abs(np.log(np.nan_to_num(self.se_ratio, nan=1.0))) > self.se_limit)

    @property
    def bias_flagged(self) -> np.ndarray:
        return np.logical_and(self.n_ok >= MIN_REPLICATES, np.abs(np.nan_to_num(self.bias_in_se)) > self.bias_limit)

    @property
    def flagged(self) -> np.ndarray:
        return np.asarray(self.se_flagged) | np.asarray(self.bias_flagged)


def wald_check(good: np.ndarray, theta: np.ndarray, wald_se: np.ndarray, labels, cov_type: str) -> WaldCheck:
    """``WaldCheck`` of replicates ``good`` (``(n, p)``) against ``theta`` and ``wald_se``."""
    n = good.shape[0]
    centred = good - good.mean(axis=0)
    m2 = np.mean(centred**2, axis=0)
    usable = (m2 > 0.0) & np.isfinite(wald_se) & (wald_se > 0.0)
    m2_safe = np.where(usable, m2, 1.0)
    se_safe = np.where(usable, wald_se, 1.0)
    kurt = np.mean(centred**4, axis=0) / m2_safe**2
    mcse = np.sqrt(np.maximum(kurt - 1.0, 0.0) / (4.0 * n))
    boot = np.sqrt(m2_safe * n / max(n - 1, 1))
    nan = np.full(good.shape[1], np.nan)
    return WaldCheck(
        labels=tuple(labels), cov_type=cov_type, n_ok=int(n),
        se_ratio=np.where(usable, boot / se_safe, nan),
        se_limit=np.log1p(SE_TOLERANCE) + MC_SDS * mcse,
        bias_in_se=np.where(usable, (good.mean(axis=0) - theta) / se_safe, nan),
        bias_limit=BIAS_SES + MC_SDS * boot / se_safe / np.sqrt(n),
    )


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BootstrapComparison:
    """Bootstrap standard errors next to the Wald ones, per parameter (``str()`` is a table)."""

    labels: tuple
    estimate: np.ndarray
    bootstrap_se: np.ndarray
    wald_se: dict  # cov_type -> (p,) standard errors at the estimate
    bias: np.ndarray
    n_ok: int
    kind: str
    #: circular-block length (``kind="block"``) and how it was chosen ("given", or the series
    #: that set the Politis-White length)
    block_length: Optional[int] = None
    block_length_rule: Optional[str] = None
    #: labels whose bootstrap SE or centre disagrees with the replicates' ``cov_type`` Wald SE
    #: by more than Monte-Carlo error allows (``BootstrapResult.wald_check``)
    disagree: tuple = ()
    disagree_cov_type: str = "hessian"

    def to_dict(self) -> dict:
        return {
            "labels": list(self.labels), "estimate": self.estimate.tolist(),
            "bootstrap_se": self.bootstrap_se.tolist(), "bias": self.bias.tolist(),
            "wald_se": {k: v.tolist() for k, v in self.wald_se.items()}, "n_ok": self.n_ok, "kind": self.kind,
            "block_length": self.block_length, "block_length_rule": self.block_length_rule,
            "disagree": list(self.disagree), "disagree_cov_type": self.disagree_cov_type,
        }

    def __str__(self) -> str:
        title, headers, rows, notes = _comparison_parts(self)
        return format_table(headers, rows, title) + "".join("\n" + n for n in notes)

    def _repr_html_(self) -> str:
        return html_table(*_comparison_parts(self))

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame indexed by label: ``estimate``, ``boot SE``, one
        ``<cov_type> SE`` column per Wald kind, ``boot bias`` (needs pandas)."""
        from ._pandas import require_pandas

        pd = require_pandas("BootstrapComparison.to_frame()", "to_dict() or str()")
        cols = {"estimate": self.estimate, "boot SE": self.bootstrap_se}
        cols.update({f"{k} SE": v for k, v in self.wald_se.items()})
        cols["boot bias"] = self.bias
        return pd.DataFrame(cols, index=list(self.labels))


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap replicates of an MLE and what they say about its uncertainty.

    ``replicates`` is ``(B, p)`` (natural scale, ``labels`` order); ``fits`` the full
    ``BatchResult`` (per-replicate status, standard errors, diagnostics). Summaries use the
    replicates whose fit converged (``ok``); ``n_failed`` counts the others.
    """

    estimate: jax.Array  # (p,) the original MLE
    estimate_se: jax.Array  # (p,) its standard errors, of the replicates' cov_type
    influence: Optional[jax.Array]  # (N, p) empirical influence H^-1 s_i (for BCa)
    fits: BatchResult
    reference: FitResult
    kind: str
    block_length: Optional[int] = None  # kind="block": the circular-block length used
    block_length_rule: Optional[str] = None  # "given", or the series that set Politis-White's
    #: (N,) frequency weights of a weighted fit: row i's influence stands for w_i observations
    influence_weights: Optional[jax.Array] = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.fits.labels

    @property
    def replicates(self) -> jax.Array:
        return self.fits.params_flat

    @property
    def ok(self) -> np.ndarray:
        return self.fits.usable

    @property
    def n(self) -> int:
        return len(self.fits)

    @property
    def n_failed(self) -> int:
        return self.fits.n_failed

    def _good(self) -> np.ndarray:
        good = np.asarray(self.replicates, dtype=np.float64)[self.ok]
        if good.shape[0] < 2:
            raise ValueError(f"only {good.shape[0]} of {self.n} bootstrap fits converged: nothing to summarise")
        return good

    @property
    def se_flat(self) -> np.ndarray:
        """Bootstrap standard deviation of each parameter (``ddof=1``), ``labels`` order."""
        return np.std(self._good(), axis=0, ddof=1)

    @property
    def se(self) -> Any:
        return self.fits.model.spec.unflatten(jnp.asarray(self.se_flat))

    @property
    def bias_flat(self) -> np.ndarray:
        return np.mean(self._good(), axis=0) - np.asarray(self.estimate, dtype=np.float64)

    def conf_int(self, alpha: float = 0.05, method: str = "percentile", *, flat: bool = False) -> Any:
        """Bootstrap confidence intervals at level ``1 - alpha``.

        ``method``: ``"percentile"``, ``"basic"`` (``2 theta - quantiles``), ``"normal"``
        (bias-corrected, bootstrap SE), ``"studentized"`` (bootstrap-t: quantiles of
        ``(theta*_b - theta) / se*_b`` with each replicate's own exact standard error) or
        ``"bca"`` (bias-corrected and accelerated). Returns ``(p, 2)`` if ``flat``, else a
        pytree whose leaves have a trailing axis of 2 (lower, upper).
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if method not in INTERVALS:
            raise ValueError(f"method must be one of {INTERVALS}, got {method!r}")
        good = self._good()
        theta = np.asarray(self.estimate, dtype=np.float64)
        lo_q, hi_q = alpha / 2.0, 1.0 - alpha / 2.0
        if method == "percentile":
            lo, hi = np.quantile(good, lo_q, axis=0), np.quantile(good, hi_q, axis=0)
        elif method == "basic":
            lo, hi = 2 * theta - np.quantile(good, hi_q, axis=0), 2 * theta - np.quantile(good, lo_q, axis=0)
        elif method == "normal":
            z = float(norm.ppf(hi_q))
            centre = theta - self.bias_flat
            lo, hi = centre - z * self.se_flat, centre + z * self.se_flat
        elif method == "studentized":
            se_b = np.asarray(self.fits.bse_flat, dtype=np.float64)[self.ok]
            t = (good - theta) / se_b
            se = np.asarray(self.estimate_se, dtype=np.float64)
            lo = theta - np.nanquantile(t, hi_q, axis=0) * se
            hi = theta - np.nanquantile(t, lo_q, axis=0) * se
        else:
            lo, hi = self._bca(good, theta, lo_q, hi_q)
        if flat:
            return np.stack([lo, hi], axis=-1)
        spec = self.fits.model.spec
        return jax.tree_util.tree_map(
            lambda a, b: jnp.stack([a, b], axis=-1), spec.unflatten(jnp.asarray(lo)), spec.unflatten(jnp.asarray(hi))
        )

    def acceleration(self) -> np.ndarray:
        """BCa acceleration per parameter, ``sum U^3 / (6 (sum U^2)^1.5)`` (see module doc)."""
        if self.influence is None:
            raise ValueError("BCa needs per-observation scores: the model has per_observation=False")
        U = np.asarray(self.influence, dtype=np.float64)
        c = np.ones(U.shape[0]) if self.influence_weights is None else np.asarray(self.influence_weights, np.float64)
        c = c[:, None]
        U = U - np.sum(c * U, axis=0) / np.sum(c)
        return np.sum(c * U**3, axis=0) / (6.0 * np.sum(c * U**2, axis=0) ** 1.5)

    def _bca(self, good, theta, lo_q, hi_q):
        below = np.mean(good < theta, axis=0) + 0.5 * np.mean(good == theta, axis=0)
        z0 = np.asarray(norm.ppf(below))
        a = self.acceleration()
        out = []
        for q in (lo_q, hi_q):
            zq = float(norm.ppf(q))
            adj = np.asarray(norm.cdf(z0 + (z0 + zq) / (1.0 - a * (z0 + zq))))
            out.append(np.array([np.quantile(good[:, j], adj[j]) if np.isfinite(adj[j]) else np.nan for j in range(good.shape[1])]))
        return out[0], out[1]

    def wald_check(self) -> WaldCheck:
        """The replicates' spread and centre against the estimate's Wald SE of the replicates'
        ``cov_type``, with the Monte-Carlo error allowed for (``WaldCheck``; what ``bootstrap``
        warns about)."""
        return wald_check(
            self._good(), np.asarray(self.estimate, dtype=np.float64), np.asarray(self.estimate_se, dtype=np.float64),
            self.labels, self.fits.cov_type,
        )

    def compare(self) -> BootstrapComparison:
        """Bootstrap SEs next to the Hessian (and, with per-observation scores, robust) SEs."""
        model = self.reference.model
        params = self.reference.params
        wald = {}
        cov_types = ("hessian", "robust") if model.per_observation else ("hessian",)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference fit has already warned about its problems
            for c in cov_types:
                ref = evaluate(model, params, cov_type=c, weights=self.reference.weights, warn=False)
                wald[c] = np.asarray(ref.bse_flat, dtype=np.float64)
        flagged = self.wald_check().flagged
        return BootstrapComparison(
            labels=tuple(self.labels), estimate=np.asarray(self.estimate, dtype=np.float64),
            bootstrap_se=self.se_flat, wald_se=wald, bias=self.bias_flat, n_ok=int(self.ok.sum()), kind=self.kind,
            block_length=self.block_length, block_length_rule=self.block_length_rule,
            disagree=tuple(lab for lab, f in zip(self.labels, flagged) if f), disagree_cov_type=self.fits.cov_type,
        )

    def __repr__(self) -> str:
        block = f", block_length={self.block_length} ({self.block_length_rule})" if self.kind == "block" else ""
        return f"BootstrapResult({self.kind}, n={self.n}, failed={self.n_failed}{block})"

    def plot(self, params=None, **kwargs):
        """Histogram per parameter with the Wald normal: ``ah.plot.bootstrap`` (needs matplotlib)."""
        from .plot import bootstrap as draw

        return draw(self, params, **kwargs)

    def _repr_html_(self) -> str:
        """``repr()`` and, with two or more converged replicates, the estimate, bootstrap SE,
        bias and percentile interval per parameter (``compare()`` adds the Wald SEs)."""
        import html as _h

        head = f"<p>{_h.escape(repr(self))}</p>"
        if int(np.sum(self.ok)) < 2:
            return head
        ci = self.conf_int(flat=True)
        rows = [[lab, float(np.asarray(self.estimate)[i]), self.se_flat[i], self.bias_flat[i], ci[i, 0], ci[i, 1]]
                for i, lab in enumerate(self.labels)]
        return head + html_table(None, ["parameter", "estimate", "boot SE", "boot bias", "[0.025", "0.975]"], rows)

    def to_frame(self) -> Any:
        """The replicates as a pandas DataFrame: one row per bootstrap member, one column per
        label, then ``ok`` (converged with finite estimates: what the summaries use) and
        ``status`` (the member's readable status) (needs pandas)."""
        from ._pandas import require_pandas

        pd = require_pandas("BootstrapResult.to_frame()", "replicates (a (B, p) array in labels order) and ok")
        frame = pd.DataFrame(np.asarray(self.replicates, dtype=np.float64), columns=list(self.labels))
        frame["ok"] = np.asarray(self.ok, dtype=bool)
        frame["status"] = self.fits.status
        frame.index.name = "replicate"
        return frame

    replicates_frame = to_frame


# ------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------
def bootstrap(
    res: FitResult,
    n: int = 1000,
    key: Any = None,
    *,
    kind: str = "nonparametric",
    block_length: Optional[int] = None,
    cov_type: Optional[str] = None,
    maxiter: int = 200,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    shard: bool = True,
    gather: str = "all",
) -> BootstrapResult:
    """Bootstrap a fit: ``n`` refits, each with its exact Hessian and standard errors.

    Args:
        res: a ``FitResult`` from ``ah.fit``.
        n: number of bootstrap replicates.
        key: a JAX PRNG key (``jax.random.key(seed)``) or an integer seed.
        kind: ``"nonparametric"`` (frequency weights; independent observations),
            ``"parametric"`` (the model's ``simulate`` at the estimate) or ``"block"``
            (circular moving blocks, for time series).
        block_length: block length for ``kind="block"``. Default: chosen from the data by
            the Politis-White (2004) rule with the Patton-Politis-White (2009) correction for
            the circular block bootstrap: the longest over the resampled data columns, their
            squares and the score series at the estimate (see ``default_block_length``);
            ``boot.block_length`` and ``boot.block_length_rule`` say what was used and why.
        cov_type: covariance of each replicate (default: ``res.cov_type`` when batchable,
            else ``"hessian"``); used by the studentized interval.
        maxiter: iteration limit per refit. Each refit starts at ``res``'s estimate.
        batch_size, progress, shard, gather: as for ``fit_batch`` (``gather="process0"``: with
            several processes, the result on process 0 and an ``ah.NotGathered`` elsewhere).

    Returns:
        ``BootstrapResult``: ``se``, ``conf_int(method=...)``, ``compare()``, ``fits``.

    Example:
        >>> res = ah.fit(ah.models.logistic(X, y))
        >>> boot = ah.bootstrap(res, n=2000, key=jax.random.key(0))
        >>> boot.se, boot.conf_int(method="bca"), print(boot.compare())
    """
    if not isinstance(res, FitResult):
        raise TypeError(f"bootstrap needs a FitResult from ah.fit, got {type(res).__name__}")
    model = res.model
    gather = check_gather(gather)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    maxiter = check_maxiter(maxiter)
    if cov_type is None:
        cov_type = res.cov_type if res.cov_type in ("hessian", "opg", "robust") else "hessian"
    cov_types = check_cov_types(model, cov_type)
    # one replicate has no spread: a standard error or interval needs at least two
    raw = key_data(key, n, 2, " (a bootstrap standard error needs at least two replicates)")
    nobs = model.nobs
    if kind in ("nonparametric", "block") and not model.per_observation:
        raise ValueError(f"kind={kind!r} resamples observations; this model has per_observation=False")
    # a random-effects model integrated group by group: its contributions are the groups,
    # independent by construction, so resampling them is the cluster (group) bootstrap
    by_group = model.laplace is not None and model.per_observation
    if kind == "nonparametric" and not model.independent and not by_group:
        raise ValueError(
            "kind='nonparametric' draws observations independently, which breaks the dependence "
            f"of model {model.name!r} (declared independent=False, e.g. a recursion over time): "
            "use kind='block' or kind='parametric'"
        )
    if kind == "nonparametric" and model.independent and not by_group:
        # independent=True is the default, so a user's recursive model usually arrives here
        # undeclared; resampling its observations would silently break its dependence
        problem = resampling_problem(model, res.params)
        if problem is not None:
            raise ValueError(
                f"kind='nonparametric' resamples observations independently, but model "
                f"{model.name!r} is not separable by observation: {problem}. Its likelihood "
                "links observations (a recursion over time such as an AR/ARMA/GARCH filter, a "
                "lag made by shifting arrays, or a statistic pooled over observations), so "
                "resampled observations would not stand for a resampled data set. Declare "
                "ah.Model(..., independent=False) and use kind='block' (a time series) or "
                "kind='parametric' (needs simulate=)"
            )
    block_rule = None
    if kind == "block":
        if block_length is not None:
            # a circular block of all N observations is the data set rotated: every replicate
            # of an independent model would be the original fit (a bootstrap SE of exactly 0)
            if isinstance(block_length, bool) or not isinstance(block_length, (int, np.integer)) or not 1 <= block_length < nobs:
                raise ValueError(
                    f"block_length must be an integer in [1, {nobs - 1}] (shorter than the {nobs} "
                    f"observations: one block of all of them only rotates the data), got {block_length!r}"
                )
            block_length, block_rule = int(block_length), "given"
    elif block_length is not None:
        raise ValueError(f"block_length is only used with kind='block', not {kind!r}")
    if kind == "parametric":
        check_simulate(model, res.params)
    total = None
    if res.weights is not None:
        w = np.asarray(res.weights, dtype=np.float64)
        if kind != "nonparametric":
            raise ValueError(
                f"kind={kind!r} cannot honour the fit's frequency weights (a row with weight w_i "
                "stands for w_i independent observations, which a simulated or block-resampled "
                "row does not): use kind='nonparametric', or fit the repeated rows"
            )
        if not np.all(w == np.round(w)):
            raise ValueError(
                "the fit has non-integer weights; the nonparametric bootstrap resamples the "
                "observations frequency weights stand for, so they must be whole numbers"
            )
        total = int(w.sum())
        if total > 2**53:
            # beyond 2^53 float64 counts are no longer whole numbers, and the replicates' relative
            # spread (~1/sqrt(sum w) < 1e-8) is below what a refit resolves: weights of 1e300
            # gave a bootstrap SE of exactly 0
            raise ValueError(
                f"the fit's frequency weights sum to {w.sum():.3g} observations, beyond 2^53 (9.0e15): "
                "resampling counts that large cannot be held exactly in float64 and the bootstrap "
                "spread would be below rounding. The Wald standard errors of the fit are the "
                "asymptotic answer at that size; rescale the weights if they are not counts"
            )
    S = None
    if model.per_observation:
        # per-observation scores at the estimate: the default block length's score series and
        # BCa's empirical influence
        program = model._jitted(("inference", "scores"), lambda: _inference_program(model, "scores"))
        S = np.asarray(program(res.params_flat, model.data, None), dtype=np.float64)
    if kind == "block" and block_length is None:
        block_length, block_rule = default_block_length(model, S)
    one = member_fit(model, cov_types, maxiter)
    dtype = model.dtype

    def member(k, s):
        if kind == "nonparametric" and total is not None:
            return one(s["params"], s["data"], _weighted_multinomial_weights(k, s["weights"], total))
        if kind == "nonparametric":
            return one(s["params"], s["data"], _multinomial_weights(k, nobs, dtype))
        if kind == "parametric":
            return one(s["params"], simulated(model, k, s["params"], s["data"]), None)
        return one(s["params"], _block_resample(k, s["data"], nobs, s["block_length"]), None)

    shared = {"params": res.params, "data": model.data, "weights": res.weights}
    if kind == "block":
        shared["block_length"] = jnp.asarray(block_length, jnp.int32)
    out = run_members(
        member, raw, shared, int(n), model=model, key=("bootstrap", kind, cov_types, maxiter, total),
        batch_size=batch_size, progress=progress, label="bootstrap", shard=shard, gather=gather,
    )
    if isinstance(out, NotGathered):  # gather="process0", and this is another process
        return out
    fits = result_from_outputs(model, cov_types, out)

    def replicate(k):
        # replicate k's data set, redrawn from its key as ``member`` drew it (``fits.member``)
        if kind == "nonparametric" and total is not None:
            return None, _weighted_multinomial_weights(k, jnp.asarray(res.weights), total)
        if kind == "nonparametric":
            return None, _multinomial_weights(k, nobs, dtype)
        if kind == "parametric":
            return simulated(model, k, res.params, model.data), None
        return _block_resample(k, model.data, nobs, jnp.asarray(block_length, jnp.int32)), None

    fits = dataclasses.replace(fits, replicate_keys=raw, replicate=jax.jit(replicate))
    message = no_spread_message(np.asarray(fits.params_flat, dtype=np.float64)[np.asarray(fits.usable)], f"{kind} bootstrap")
    if message is not None:
        raise ValueError(message)
    influence = None
    if S is not None:
        H = np.asarray(res.hessian_matrix, dtype=np.float64)
        try:
            U = np.linalg.solve(H, S.T).T
        except np.linalg.LinAlgError:
            U = np.full_like(S, np.nan)  # a singular Hessian: no acceleration (BCa is NaN)
        # BCa's acceleration linearises the estimator by H^-1 s_i; where the fit has no Wald
        # standard error (a bound, a flat direction) that linearisation does not hold: NaN
        influence = jnp.asarray(np.where(np.isfinite(np.asarray(res.bse_flat))[None, :], U, np.nan))
    # the studentized pivot divides by each replicate's SE of cov_type and scales back by the
    # estimate's: both must be of the same kind (a Hessian SE against robust replicates gave
    # 75% coverage at a nominal 95% in the review's simulation)
    estimate_se = res.bse_flat
    if fits.cov_type != res.cov_type:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fit has already warned about its problems
            estimate_se = evaluate(model, res.params, cov_type=fits.cov_type, weights=res.weights, warn=False).bse_flat
    result = BootstrapResult(
        estimate=res.params_flat, estimate_se=estimate_se, influence=influence, fits=fits, reference=res, kind=kind,
        block_length=block_length, block_length_rule=block_rule,
        # each row's influence counts w_i times (the observations it stands for), weighed in
        # rather than repeated, so memory does not grow with the weights
        influence_weights=None if total is None or influence is None else jnp.asarray(w),
    )
    if result.n_failed:
        codes, counts = np.unique(np.asarray(fits.status_code)[~result.ok], return_counts=True)
        what = ", ".join(f"{c} x {Status(int(k)).name}" for k, c in zip(codes, counts))
        warnings.warn(
            f"{result.n_failed} of {result.n} bootstrap fits failed ({what}) and are left out of "
            "the summaries; see boot.fits.status",
            BootstrapWarning, stacklevel=2,
        )
    check = result.wald_check() if int(result.ok.sum()) >= 2 else None
    if check is not None and check.flagged.any():
        warnings.warn(_disagreement_message(result, check), BootstrapWarning, stacklevel=2)
    return result


def _disagreement_message(result: BootstrapResult, check: WaldCheck) -> str:
    cov = check.cov_type
    found = []
    if np.any(check.se_flagged):
        parts = ", ".join(
            f"{lab} {r:.3g}x (allowed {np.exp(-m):.2g}-{np.exp(m):.2g}x)"
            for lab, r, m, f in zip(check.labels, check.se_ratio, check.se_limit, check.se_flagged) if f
        )
        found.append(f"bootstrap SE / {cov} SE: {parts}")
    if np.any(check.bias_flagged):
        parts = ", ".join(
            f"{lab} {b:+.3g} SE (allowed +-{m:.2g})"
            for lab, b, m, f in zip(check.labels, check.bias_in_se, check.bias_limit, check.bias_flagged) if f
        )
        found.append(f"replicates centred away from the estimate, in {cov} SEs: {parts}")
    head = (
        f"{result.kind} bootstrap and Wald disagree beyond the Monte-Carlo error of "
        f"{check.n_ok} replicates: " + "; ".join(found) + ". One of the two is wrong. "
    )
    if result.kind == "block":
        return head + (
            f"Either the blocks of {result.block_length} observations "
            f"({result.block_length_rule}) are short for the series' dependence, which they "
            "break at every join (persistence pulled towards 0, innovation variance "
            "inflated): rerun with a longer block_length (e.g. "
            f"{min(2 * result.block_length, result.reference.model.nobs)}) or, for a short "
            "persistent series, kind='parametric' (needs simulate=). Or, if longer blocks "
            "agree with these, the Wald SE is wrong: the model leaves dependence or "
            "distributional features out (misspecified)."
        )
    if result.kind == "nonparametric":
        return head + (
            "Either the observations are not independent (clustered data: cov_type='cluster'; "
            "a time series: declare ah.Model(..., independent=False) and use kind='block'), the "
            "model is misspecified (compare the robust SEs in boot.compare()), or N is too "
            "small for Wald intervals (prefer boot.conf_int(method='bca') or ah.profile)."
        )
    return head + (
        "The replicates are fits to data from the model's simulate at the estimate: either "
        "simulate does not draw from the distribution the likelihood describes (check it), or "
        "N is too small for Wald intervals (prefer the bootstrap's own intervals or ah.profile)."
    )


def _comparison_parts(cmp) -> tuple:
    """``(title, headers, rows, notes)`` of ``BootstrapComparison`` (its text and HTML)."""
    kinds = list(cmp.wald_se)
    headers = ["parameter", "estimate", "boot SE"] + [f"{k} SE" for k in kinds] + [f"boot/{kinds[0]}", "boot bias"]
    rows = []
    for i, lab in enumerate(cmp.labels):
        ratio = cmp.bootstrap_se[i] / cmp.wald_se[kinds[0]][i]
        rows.append([lab, cmp.estimate[i], cmp.bootstrap_se[i]] + [cmp.wald_se[k][i] for k in kinds] + [ratio, cmp.bias[i]])
    title = f"{cmp.kind} bootstrap, {cmp.n_ok} converged replicates"
    if cmp.block_length is not None:
        title += f", block length {cmp.block_length} ({cmp.block_length_rule})"
    notes = []
    if cmp.disagree:
        notes.append(
            f"bootstrap and {cmp.disagree_cov_type} Wald disagree (spread or centre) beyond "
            f"Monte-Carlo error for: {', '.join(cmp.disagree)} (see the BootstrapWarning for what to do)"
        )
    return title, headers, rows, notes
