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
from ._batch import BatchResult, check_cov_types, check_maxiter, member_fit, result_from_outputs, run_members
from ._fit import FitResult, _inference_program, evaluate
from ._model import Model
from ._solver import Status
from ._validation import _display_name

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
# PRNG keys and resampling (shared with the simulation study)
# ------------------------------------------------------------------------------------------
def key_data(key: Any, n: int, minimum: int = 1, why: str = "") -> jax.Array:
    """``n`` independent keys as raw ``uint32`` data (rows pad and slice like any array)."""
    if key is None:
        raise ValueError("a PRNG key is needed: pass key=jax.random.key(seed) (or an int seed)")
    if isinstance(key, (bool, np.bool_, str, bytes)):
        raise TypeError(f"key must be a PRNG key (jax.random.key(seed)) or an integer seed, got {key!r}")
    if isinstance(key, (int, np.integer)):
        try:
            key = jax.random.key(int(key))
        except OverflowError:
            raise ValueError(f"key: the integer seed {key} does not fit in 64 bits; use a smaller seed") from None
    elif not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raw = jnp.asarray(key)
        # raw key data are unsigned 32-bit words (jax.random.PRNGKey's old style); a float such
        # as 0.5 would be cast to the word 0 silently, a seed the user never chose
        if not (jnp.issubdtype(raw.dtype, jnp.unsignedinteger) and raw.ndim >= 1):
            raise TypeError(
                f"key must be a PRNG key (jax.random.key(seed)), raw key data (uint32) or an integer "
                f"seed, got {type(key).__name__} with dtype {raw.dtype} and shape {raw.shape}"
            )
        try:
            key = jax.random.wrap_key_data(raw.astype(jnp.uint32))
        except (TypeError, ValueError) as e:
            raise TypeError(f"key: {raw.shape} uint32 words are not the data of one PRNG key ({e})") from None
    if key.shape != ():
        raise ValueError(f"key must be a single PRNG key, got an array of keys with shape {key.shape}")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"n must be a positive integer number of replicates >= {minimum}{why}, got {n!r}")
    return jax.random.key_data(jax.random.split(key, int(n)))


def wrap(raw: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(raw)


def check_simulate(model: Model, params: Any) -> None:
    """The model's ``simulate`` must return data shaped exactly like the model's data."""
    if model.simulate_fn is None:
        raise ValueError(
            f"model {model.name!r} has no simulate function: pass simulate=... to ah.Model "
            "(parametric bootstrap and simulation studies draw data from it)"
        )
    out = jax.eval_shape(model.simulate_fn, jax.random.key(0), params, model.data)
    want = jax.eval_shape(lambda d: d, model.data)
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(want):
        raise ValueError(
            f"simulate returned data with structure {jax.tree_util.tree_structure(out)}; the "
            f"model's data has {jax.tree_util.tree_structure(want)}"
        )
    narrowed = []
    for (path, got), ref in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree_util.tree_leaves(want)):
        if got.shape != ref.shape:
            raise ValueError(f"simulate returned an array of shape {got.shape} where the model's data has {ref.shape}")
        if not jnp.issubdtype(ref.dtype, jnp.floating) and jnp.issubdtype(got.dtype, jnp.floating):
            narrowed.append(path)
    if narrowed:
        # integer data (codes, counts) stay integer, so simulated floats are cast back to them:
        # one draw, on the host, shows whether that cast would truncate
        draw = dict(jax.tree_util.tree_flatten_with_path(model.simulate_fn(jax.random.key(0), params, model.data))[0])
        for path in narrowed:
            v = np.asarray(draw[path])
            if not np.all(np.isfinite(v) & (v == np.round(v))):
                raise ValueError(
                    f"simulate returns non-integer values for {_display_name('data', path)}, which the "
                    "model holds as integers (integer data keep their dtype): return whole numbers "
                    "there, or give that data array as floats"
                )
    _check_simulate_uses_key(model, params)


#: keys drawn from before a run to see that ``simulate`` depends on its key: with 8, even a
#: single fair coin flip as the whole data set is refused wrongly with probability 2^-7
KEY_PROBES = 8


def _check_simulate_uses_key(model: Model, params: Any) -> None:
    """Refuse a ``simulate`` whose output does not depend on the key it is given.

    The draws are made as the run makes them, compiled and vmapped over keys: numpy's or
    Python's RNG inside ``simulate`` then runs once, when JAX traces it, and every replicate
    would be the same data set (a bootstrap SE of 1e-15, a coverage of 1.0). Called outside a
    trace such a ``simulate`` would vary, which is why the check must compile it."""
    raw = jax.random.key_data(jax.random.split(jax.random.key(20261201), KEY_PROBES))
    draws = jax.jit(jax.vmap(lambda k: simulated(model, k, params, model.data)))(raw)
    if all(np.all(np.asarray(a) == np.asarray(a)[:1]) for a in jax.tree_util.tree_leaves(draws)):
        raise ValueError(
            f"model {model.name!r}: simulate returned identical data for {KEY_PROBES} different keys, "
            "so every replicate would be the same data set and the spread of the refits (a bootstrap "
            "SE, a coverage) would be meaningless. The likely cause is numpy's or Python's random "
            "number generator inside simulate (np.random..., random...): it runs once, when JAX "
            "traces simulate, and its draws become constants; a fixed jax.random.key(...) inside "
            "simulate does the same. Draw with jax.random from the key simulate receives (split it "
            "for several draws)."
        )


def no_spread_message(replicates: np.ndarray, what: str) -> Optional[str]:
    """A message when all usable replicates are the same numbers (``None`` otherwise)."""
    if replicates.shape[0] < 2 or not np.all(replicates == replicates[:1]):
        return None
    head = (
        f"all {replicates.shape[0]} usable {what} refits returned exactly the same estimates, so "
        "their spread (a standard error of 0) says nothing about uncertainty: "
    )
    if what.startswith(("parametric", "simulation")):
        return head + (
            "the simulated data sets did not move the estimates. Check that simulate draws with "
            "jax.random from the key it receives (numpy's or Python's random number generator, or "
            "a fixed key, inside simulate gives the same data every time) and that it redraws the "
            "data the log-likelihood reads"
        )
    return head + (
        "the resampled data sets did not move the estimates (the estimates do not depend on which "
        "observations are drawn). Use the fit's Wald standard errors, or a bootstrap kind that "
        "resamples what the estimates depend on"
    )


def simulated(model: Model, raw_key: jax.Array, params: Any, data: Any) -> Any:
    out = model.simulate_fn(wrap(raw_key), params, data)
    return jax.tree_util.tree_map(lambda a, r: jnp.asarray(a, r.dtype), out, data)


def _multinomial_weights(raw_key: jax.Array, n: int, dtype) -> jax.Array:
    draws = jax.random.randint(wrap(raw_key), (n,), 0, n)
    return jnp.zeros((n,), dtype).at[draws].add(1.0)


def _weighted_multinomial_weights(raw_key: jax.Array, w: jax.Array, total: int) -> jax.Array:
    """Counts of ``total`` draws from the rows with probabilities ``w / sum(w)``: resampling
    the data a frequency-weighted fit stands for (row ``i`` repeated ``w_i`` times)."""
    # conditional binomials over the N rows (row i gets Binomial(left, p_i / sum_{j>=i} p_j)),
    # exactly multinomial: time and memory follow N, never the number of draws sum(w) (drawing
    # each of the sum(w) units took 23 GiB for weights of 1e4 on 300 rows)
    return jax.random.multinomial(wrap(raw_key), jnp.asarray(total, w.dtype), w / jnp.sum(w), dtype=w.dtype)


def _block_resample(raw_key: jax.Array, data: Any, n: int, block_length: Any) -> Any:
    # position t lies in block t // L at offset t % L; n starts (enough for L = 1) are drawn so
    # that L may be a traced value: one compiled program serves every block length a user tries
    starts = jax.random.randint(wrap(raw_key), (n,), 0, n)
    t = jnp.arange(n)
    idx = (starts[t // block_length] + t % block_length) % n
    return jax.tree_util.tree_map(lambda a: a[idx] if a.ndim and a.shape[0] == n else a, data)


# ------------------------------------------------------------------------------------------
# Does resampling observations respect the model? (nonparametric bootstrap)
# ------------------------------------------------------------------------------------------
def _resample_data(data: Any, idx: np.ndarray, n: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx] if a.ndim and a.shape[0] == n else a, data)


def _check_points(model: Model, params: Any) -> list[tuple[str, Any]]:
    """The estimate, and a point a step away from it on the unconstrained scale.

    The estimate is where the bootstrap's refits live; the second point is there because a
    model's dependence can vanish at particular values (an AR coefficient of 0 makes a
    recursion look separable), and an estimate may sit on one."""
    spec = model.spec
    flat = spec.flatten(params, model.dtype)
    u = np.asarray(spec.to_unconstrained(flat), dtype=np.float64)
    sign = np.where(np.arange(u.size) % 2 == 0, 1.0, -1.0)
    # 0.1 (1 + |u|): a tenth of a unit on the scale the optimiser works on, far beyond rounding
    # yet close enough that the log-likelihood stays finite for ordinary models
    moved = np.where(np.isfinite(u), u + 0.1 * (1.0 + np.abs(u)) * sign, u)
    other = spec.unflatten(spec.to_natural(jnp.asarray(moved, model.dtype)))
    return [("the estimate", params), ("a perturbed point", other)]


def resampling_problem(model: Model, params: Any) -> Optional[str]:
    """``None`` if contribution ``i`` depends on observation ``i`` alone, else what was found.

    The nonparametric bootstrap reweights the contributions of the original data, which stands
    for refitting a resampled data set only when each contribution is a function of its own
    observation (and the parameters). This is tested directly: a fixed random half of the
    observations keeps its data while every other observation's data are replaced by those of
    an observation from the kept half; the kept half's contributions must not change. A
    recursion over time (a filter in ``lax.scan``, a lag made by shifting arrays: some kept
    observation's predecessor is replaced, whatever the lag) or a statistic pooled over
    observations (a mean of ``y``) changes them. Positions themselves may matter (a trend
    ``jnp.arange(N)`` inside the likelihood stays with its row, as under weights). Checked at
    the estimate and at a perturbed point (``_check_points``); one compiled program, reused.
    """
    n = model.nobs
    if n is None or n < 2:
        return None
    # fixed draws, so the check is reproducible; observation 0 is replaced and 1 kept, so that
    # some kept observation follows a replaced one whatever N
    rng = np.random.default_rng(0)
    kept = rng.random(n) < 0.5
    kept[:2] = [False, True]
    idx = np.arange(n)
    idx[~kept] = rng.choice(np.flatnonzero(kept), size=int((~kept).sum()))
    moved = _resample_data(model.data, idx, n)
    program = model.contributions_program()
    # a separable model repeats the same arithmetic on the same numbers for a kept
    # observation (equal up to a different blocking of reductions inside one contribution):
    # sqrt(eps) relative leaves room for that rounding, and a real dependence (a lag
    # coefficient above ~1e-8 times the data) is far larger
    tol = float(np.sqrt(np.finfo(model.dtype).eps))
    for where, point in _check_points(model, params):
        full = np.asarray(program(point, model.data), dtype=np.float64)
        if not np.all(np.isfinite(full)):
            continue  # outside the likelihood's domain (only the perturbed point can be): no test
        again = np.asarray(program(point, moved), dtype=np.float64)
        bad = kept & ~(np.abs(again - full) <= tol * (np.abs(full) + np.max(np.abs(full))))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            flat = np.asarray(model.spec.flatten(point, model.dtype))
            return (
                f"at {where} ({model.spec.describe(flat)}), replacing the data of {int((~kept).sum())} "
                f"of {n} observations by copies of others changed the contributions of "
                f"{int(bad.sum())} of the {int(kept.sum())} observations left as they were (the "
                f"first, observation {first}: {again[first]:.6g} instead of {full[first]:.6g})"
            )
    return None


# ------------------------------------------------------------------------------------------
# Block length: Politis and White (2004), corrected by Patton, Politis and White (2009)
# ------------------------------------------------------------------------------------------
#: the rule's constants, as the papers recommend: the band c sqrt(log10 N / N) within which an
#: autocorrelation counts as negligible, and K_N = max(5, sqrt(log10 N)) such lags in a row
PW_C = 2.0


def _pw_kn(n: int) -> int:
    return max(5, int(np.ceil(np.sqrt(np.log10(n)))))


def _autocovariances(x: np.ndarray, max_lag: int) -> np.ndarray:
    """``R(k) = N^-1 sum_t (x_t - xbar)(x_{t+k} - xbar)``, ``k = 0..max_lag``, per column.

    By FFT with zero padding to at least ``2N`` (no wrap-around): ``O(N log N)`` per column
    where the direct sums cost ``O(N sqrt(N))``; at N = 10^6 that is 50 ms against seconds."""
    n = x.shape[0]
    xc = x - x.mean(axis=0)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(xc, n=nfft, axis=0)
    return np.fft.irfft(f.real**2 + f.imag**2, n=nfft, axis=0)[: max_lag + 1] / n


def pw_bandwidth(rho: np.ndarray, n: int) -> int:
    """``M = 2 m_hat`` (at most ``m_max``) from autocorrelations ``rho[k]``, ``k = 0..m_max``.

    ``m_hat`` is the smallest positive integer after which ``K_N`` autocorrelations in a row
    lie inside ``+-c sqrt(log10 N / N)`` (Politis and White, 2004, section 3.2). When no such
    run exists within ``m_max = ceil(sqrt N) + K_N``, the correlogram is not negligible
    anywhere in range and the widest window, ``m_max``, is used."""
    kn = _pw_kn(n)
    m_max = rho.shape[0] - 1
    small = np.abs(rho) < PW_C * np.sqrt(np.log10(n) / n)
    for m in range(1, m_max - kn + 1):
        if small[m + 1: m + kn + 1].all():
            return min(2 * m, m_max)
    return m_max


def pw_circular_block_length(R: np.ndarray, n: int, M: int) -> float:
    """``b_opt = (2 G^2 / D_CB)^(1/3) N^(1/3)`` for the circular block bootstrap, at most
    ``b_max = ceil(min(3 sqrt N, N / 3))``, from autocovariances ``R[k]`` and bandwidth ``M``.

    With the flat-top lag window ``lam(t) = min(1, 2 (1 - |t|))`` on ``|t| <= 1``:
    ``G = sum_{|k|<=M} lam(k/M) |k| R(k)``, ``g(0) = sum_{|k|<=M} lam(k/M) R(k)`` (the long-run
    variance) and ``D_CB = (4/3) g(0)^2`` (the corrected constant of Patton, Politis and White,
    2009)."""
    b_max = float(np.ceil(min(3.0 * np.sqrt(n), n / 3.0)))
    k = np.arange(1, M + 1)
    lam = np.minimum(1.0, 2.0 * (1.0 - k / M)) if M else np.zeros(0)
    g = R[0] + 2.0 * np.sum(lam * R[1: M + 1])
    G = 2.0 * np.sum(lam * k * R[1: M + 1])
    if not g > 0.0:
        # the flat-top window is not positive definite: a long-run variance estimate <= 0 means
        # strong negative dependence at the window's lags, where b_opt is unbounded: cap it
        return b_max
    return float(min((2.0 * G**2 / (4.0 / 3.0 * g**2)) ** (1.0 / 3.0) * n ** (1.0 / 3.0), b_max))


def pw_block_lengths(x: np.ndarray) -> np.ndarray:
    """Politis-White optimal circular-block lengths (real numbers) of each column of ``x``
    (``(N, c)``); NaN for a constant column, which has no dependence to keep."""
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n = x.shape[0]
    m_max = min(int(np.ceil(np.sqrt(n))) + _pw_kn(n), n - 1)
    out = np.full(x.shape[1], np.nan)
    step = max(1, 2**22 // max(n, 1))  # columns per FFT: about 64 MiB of complex work space
    for j0 in range(0, x.shape[1], step):
        R = _autocovariances(x[:, j0: j0 + step], m_max)
        for j in range(R.shape[1]):
            r = R[:, j]
            if not r[0] > 0.0 or not np.all(np.isfinite(r)):
                continue
            out[j0 + j] = pw_circular_block_length(r, n, pw_bandwidth(r / r[0], n))
    return out


def default_block_length(model: Model, S: np.ndarray) -> tuple[int, str]:
    """The block length ``kind="block"`` uses when none is given, and what set it.

    The Politis-White length is computed for every series whose dependence the resampled data
    must keep, and the longest is used: each data column that is resampled (a lag or a filter
    inside the likelihood conditions on it, so a join between blocks breaks it; the scores of a
    correctly specified recursive model are uncorrelated and would miss that), the square of
    each (volatility clustering, on which a GARCH filter conditions, shows in squares, not in
    levels), and each parameter's score series (the sum whose variance the bootstrap
    estimates). Longer blocks than needed cost Monte-Carlo precision; shorter ones bias the
    standard errors, so the maximum errs on the safe side, and it is rounded up."""
    n = model.nobs
    names, cols = [], []
    leaves = jax.tree_util.tree_flatten_with_path(model.data)[0]
    for path, leaf in leaves:
        a = np.asarray(leaf, dtype=np.float64)
        if a.ndim and a.shape[0] == n:
            a = a.reshape(n, -1)
            name = _display_name("data", path)
            for j in range(a.shape[1]):
                label = name if a.shape[1] == 1 else f"{name}[:, {j}]"
                centred = a[:, j] - a[:, j].mean()
                names += [label, f"{label}^2"]
                cols += [a[:, j], centred**2]
    for j, lab in enumerate(model.labels):
        names.append(f"score of {lab}")
        cols.append(S[:, j])
    b = pw_block_lengths(np.stack(cols, axis=1))
    if not np.any(np.isfinite(b)):
        return 1, "Politis-White: no series varies"
    j = int(np.nanargmax(b))
    length = int(min(max(1, np.ceil(b[j])), max(1, n - 1)))  # a block of all N only rotates the data
    return length, f"Politis-White, set by {names[j]}"


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
        from ._report import bootstrap_comparison_table

        return bootstrap_comparison_table(self)

    def _repr_html_(self) -> str:
        from ._html import table
        from ._report import bootstrap_comparison_parts

        return table(*bootstrap_comparison_parts(self))

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

        from ._html import table

        head = f"<p>{_h.escape(repr(self))}</p>"
        if int(np.sum(self.ok)) < 2:
            return head
        ci = self.conf_int(flat=True)
        rows = [[lab, float(np.asarray(self.estimate)[i]), self.se_flat[i], self.bias_flat[i], ci[i, 0], ci[i, 1]]
                for i, lab in enumerate(self.labels)]
        return head + table(None, ["parameter", "estimate", "boot SE", "boot bias", "[0.025", "0.975]"], rows)

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
    if out is None:  # gather="process0", and this is another process
        return NotGathered("bootstrap", jax.process_index(), jax.process_count())
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
