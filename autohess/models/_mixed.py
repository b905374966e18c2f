"""Mixed models (GLMMs): the zoo's families with random effects integrated out by Laplace.

Each constructor builds an ``ah.Model(loglik, data, params, random=...)`` whose ``loglik`` is
the family's conditional log-likelihood given the random effects, so fits, SEs, modes
(``res.random``) and batches come from the core (``_laplace``). The linear predictor is

    eta = X @ beta + offset + (random part),

with the random part ``b[g]`` (a random intercept per level of ``groups``), ``sum_k Z[:, k] *
b[g, k]`` (random coefficients on the columns of ``Z``, correlated) or ``sum_f b_f[g_f]`` (one
random intercept per grouping factor of a dict ``groups``).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from .._model import Model
from .._pandas import host_array, is_pandas
from .._random import MultivariateNormal, Normal
from .._transforms import Interval, Positive
from ._checks import _float, beta_names, design, support, vector
from ._glm import LOG_Y_FACTORIAL_ULPS, _is_count, _lgamma_ratio, _poisson_support, softplus

__all__ = [
    "mixed_linear",
    "mixed_logistic",
    "mixed_poisson",
    "mixed_negative_binomial",
    "mixed_zip",
]

#: data keys the constructors use themselves: a grouping factor may not be named like them
_DATA_KEYS = ("X", "y", "Z", "X_zero", "offset", "trials", "log_binom", "log_y_factorial")
#: parameter names the constructors use themselves (a factor's random effect is named after it)
_PARAM_KEYS = ("beta", "beta_zero", "sigma", "alpha", "sd", "rho")


# -- grouping factors ------------------------------------------------------------------------
class _Factor:
    """One grouping factor: its random effect's name, data key, codes and level names."""

    def __init__(self, name: str, key: str, codes: np.ndarray, levels: Optional[tuple]):
        self.name, self.key, self.codes, self.levels = name, key, codes, levels


def _codes(value: Any, n: int, model: str, what: str) -> tuple[np.ndarray, Optional[tuple]]:
    """Integer codes ``0..G-1`` (int64) for ``value`` and its level names where it has them
    (a pandas categorical's categories, the sorted distinct labels of text or booleans)."""
    pd = sys.modules.get("pandas")
    levels = None
    if pd is not None and isinstance(value, pd.Categorical):
        value = pd.Series(value)
    if is_pandas(value) and str(getattr(value, "dtype", "")) == "category":
        codes = np.asarray(value.cat.codes, dtype=np.int64)
        if (codes < 0).any():
            first = int(np.argmax(codes < 0))
            raise ValueError(
                f"{model}: {what} has {int((codes < 0).sum())} missing values (first at observation "
                f"{first}); drop those observations or give them a level"
            )
        levels = tuple(str(c) for c in value.cat.categories)
        arr = codes
    elif is_pandas(value):
        if isinstance(value, pd.DataFrame):
            raise TypeError(
                f"{model}: {what} is a DataFrame; give one column (a Series), or a dict "
                "{name: codes} for several grouping factors"
            )
        if value.isna().any():
            miss = np.asarray(value.isna())
            raise ValueError(
                f"{model}: {what} has {int(miss.sum())} missing values (first at observation "
                f"{int(np.argmax(miss))}); drop those observations or give them a level"
            )
        arr = value.to_numpy()
    else:
        arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{model}: {what} must be one code per observation, shape ({n},); got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(
            f"{model}: {what} has {arr.shape[0]} entries but X has {n} rows; "
            "give one group code per observation"
        )
    if levels is not None:
        # the core gives b one level per code up to the largest used (an unused trailing
        # category adds nothing to the likelihood): the names follow b's length
        return arr, levels[: int(arr.max()) + 1 if arr.size else 0]
    kind = arr.dtype.kind
    if kind in "iu":
        if arr.size and arr.min() < 0:
            first = int(np.argmax(arr < 0))
            raise ValueError(
                f"{model}: {what} has negative codes (first {int(arr[first])} at observation {first}); "
                "group codes must be 0..G-1"
            )
        return arr.astype(np.int64), None
    if kind == "f":
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if whole.all():
            hint = f"they are whole numbers stored as floats: pass {what}.astype(int)"
        else:
            i = int(np.argmax(~whole))
            hint = f"entry {i} is {arr[i].item()!r}"
        raise TypeError(f"{model}: {what} must hold integer group codes 0..G-1, got dtype {arr.dtype} ({hint})")
    if kind in "bUSO":
        if kind == "O":
            bad = [i for i, v in enumerate(arr) if v is None or (isinstance(v, float) and v != v)]
            if bad:
                raise ValueError(
                    f"{model}: {what} has {len(bad)} missing labels (None / NaN; first at observation "
                    f"{bad[0]}); drop those observations or give them a level"
                )
        try:
            uniq, inverse = np.unique(arr, return_inverse=True)
        except TypeError as err:
            raise TypeError(
                f"{model}: {what} mixes labels of types that cannot be sorted ({err}); give integer "
                "codes 0..G-1 or labels of one type"
            ) from None
        return inverse.reshape(-1).astype(np.int64), tuple(str(u) for u in uniq)
    raise TypeError(f"{model}: {what} must hold integer group codes 0..G-1 or labels, got dtype {arr.dtype}")


def _factors(groups: Any, n: int, model: str) -> list[_Factor]:
    if isinstance(groups, dict):
        if not groups:
            raise ValueError(f"{model}: groups is an empty dict; give at least one grouping factor")
        out = []
        for key, value in groups.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise TypeError(
                    f"{model}: the keys of groups name the random effects and must be identifiers "
                    f"such as 'herd'; got {key!r}"
                )
            if key in _DATA_KEYS or key in _PARAM_KEYS or key.startswith("sd_"):
                raise ValueError(
                    f"{model}: grouping factor {key!r} clashes with a name the model uses itself "
                    f"({', '.join(_DATA_KEYS + _PARAM_KEYS)}, sd_*); rename it"
                )
            codes, levels = _codes(value, n, model, f"groups[{key!r}]")
            out.append(_Factor(key, key, codes, levels))
        return out
    codes, levels = _codes(groups, n, model, "groups")
    return [_Factor("b", "groups", codes, levels)]


def _z_matrix(Z: Any, n: int, model: str) -> tuple[np.ndarray, Optional[tuple]]:
    cols = tuple(str(c) for c in Z.columns) if is_pandas(Z) and hasattr(Z, "columns") else None
    Z = _float(Z, f"{model}: Z")
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2:
        raise ValueError(f"{model}: Z must be 2-D (observations x random coefficients), got shape {Z.shape}")
    if Z.shape[0] != n:
        raise ValueError(
            f"{model}: Z has {Z.shape[0]} rows but X has {n}; they must describe the same observations"
        )
    if Z.shape[1] == 0:
        raise ValueError(f"{model}: Z has no columns; leave Z=None for a random intercept")
    return Z, cols


class _Random:
    """The random-effect declarations, their parameters, names and the random part of eta."""

    def __init__(self, groups: Any, Z: Any, n: int, model: str, sd_init: float):
        self.factors = _factors(groups, n, model)
        self.q = 0
        self.data: dict = {f.key: f.codes for f in self.factors}
        self.params: dict = {}
        self.names: dict = {}
        self.random: dict = {}
        self.random_names: dict = {}
        if Z is not None:
            if len(self.factors) > 1:
                raise ValueError(
                    f"{model}: Z= (random coefficients) takes one grouping factor, got "
                    f"{len(self.factors)}; several factors each get a random intercept (Z=None)"
                )
            Zm, zcols = _z_matrix(Z, n, model)
            self.q = q = Zm.shape[1]
            self.data["Z"] = Zm
            (f,) = self.factors
            self.random_names["b"] = (f.levels, zcols) if q >= 2 else f.levels
            if q == 1:
                self.params["sd"] = Positive(sd_init)
                self.random["b"] = Normal(sd="sd", groups=f.key)
            else:
                self.params["sd"] = Positive(np.full(q, sd_init))
                if q == 2:
                    self.params["rho"] = Interval(-1.0, 1.0, 0.0)
                else:
                    self.params["rho"] = Interval(-1.0, 1.0, np.zeros(q * (q - 1) // 2))
                    labels = zcols if zcols is not None else tuple(str(k) for k in range(q))
                    self.names["rho"] = tuple(f"{labels[i]},{labels[j]}" for i in range(q) for j in range(i))
                if zcols is not None:
                    self.names["sd"] = zcols
                self.random["b"] = MultivariateNormal(sd="sd", corr="rho", groups=f.key)
        elif len(self.factors) == 1 and not isinstance(groups, dict):
            (f,) = self.factors
            self.params["sd"] = Positive(sd_init)
            self.random["b"] = Normal(sd="sd", groups=f.key)
            self.random_names["b"] = f.levels
        else:
            for f in self.factors:
                self.params[f"sd_{f.name}"] = Positive(sd_init)
                self.random[f.name] = Normal(sd=f"sd_{f.name}", groups=f.key)
                self.random_names[f.name] = f.levels
        self.part = _random_part(tuple((f.name, f.key) for f in self.factors), self.q)

    def finish(self, model: Model) -> Model:
        #: level (and, with Z, coefficient) names of each random effect, for labelling
        #: ``res.random[name].mode``: ``None`` where the groups were plain integer codes
        model.random_names = self.random_names
        return model


def _random_part(factors: tuple, q: int):
    """``(params, data) -> (N,)`` the random effects' contribution to the linear predictor."""
    if q == 1:
        def part(params, data):
            return params["b"][data["groups"]] * data["Z"][:, 0]
    elif q >= 2:
        def part(params, data):
            return jnp.sum(data["Z"] * params["b"][data["groups"]], axis=1)
    else:
        def part(params, data):
            total = 0.0
            for name, key in factors:
                total = total + params[name][data[key]]
            return total
    return part


def _names(X: Any, extra: dict, X_zero: Any = None) -> Optional[dict]:
    names = dict(beta_names(X) or {})
    if X_zero is not None:
        zero = beta_names(X_zero)
        if zero is not None:
            names["beta_zero"] = zero["beta"]
    names.update(extra)
    return names or None


def _offset(offset: Optional[Any], n: int, model: str) -> np.ndarray:
    if offset is not None:
        offset = host_array(offset, f"{model}: offset")[0]
    return vector(offset, n, model, "offset", "one per observation")


def _check_counts(y: np.ndarray, model: str) -> None:
    support(y, (y >= 0) & (y == np.round(y)), model, "y", "non-negative integer counts")


# -- Gaussian ----------------------------------------------------------------------------------
def mixed_linear(X: Any, y: Any, groups: Any, *, Z: Optional[Any] = None) -> Model:
    """Linear mixed model ``y = X beta + (random part) + e``, ``e ~ N(0, sigma^2)``, fitted by
    maximum likelihood (not REML: statsmodels ``MixedLM.fit(reml=False)``, lme4 ``REML=FALSE``).

    Args:
        X: ``(N, p)`` fixed-effects design (pandas columns name ``beta``).
        y: ``(N,)`` outcome.
        groups: integer codes ``0..G-1`` per observation (numpy, a pandas Series; a
            categorical's codes or text labels are coded here, the level names kept in
            ``model.random_names``), or a dict ``{name: codes}`` of several grouping factors,
            each with a random intercept named after its key (sd parameter ``sd_<name>``).
        Z: ``None`` for a random intercept ``b`` with sd ``sd``; an ``(N, q)`` array for random
            coefficients on its columns (include a column of ones for a random intercept):
            ``b`` is ``(G, q)`` with sds ``sd`` ``(q,)`` and, for ``q >= 2``, correlation
            ``rho`` (a scalar for ``q = 2``; for ``q > 2`` the ``q(q-1)/2`` canonical partial
            correlations of ``ah.MultivariateNormal``).

    Returns:
        an ``ah.Model`` with parameters ``{"beta", "sigma", "sd"[, "rho"]}`` (starting at the
        OLS ``beta`` and residual SD), random effects as above, ``simulate`` (draws the random
        effects, then ``y``) and ``model.random_names``.
    The Laplace approximation is exact for this model, so ``res.llf`` is the ML log-likelihood.

    Example:
        >>> model = ah.models.mixed_linear(X, y, subject, Z=X[:, :2])   # intercept and slope
        >>> res = ah.fit(model); res.params["rho"], res.random["b"].mode
    """
    name = "mixed_linear"
    X_in = X
    X, y = design(X, y, name)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid_sd = float(np.std(y - X @ coef))
    scale = resid_sd if resid_sd > 0 else 1.0
    re = _Random(groups, Z, len(y), name, 0.5 * scale)
    part = re.part

    def loglik(params, data):
        z = (data["y"] - data["X"] @ params["beta"] - part(params, data)) / params["sigma"]
        return -0.5 * jnp.log(2.0 * jnp.pi) - jnp.log(params["sigma"]) - 0.5 * z * z

    def simulate(key, params, data):
        mean = data["X"] @ params["beta"] + part(params, data)
        return {**data, "y": mean + params["sigma"] * jax.random.normal(key, mean.shape, mean.dtype)}

    params = {"beta": coef, "sigma": Positive(scale), **re.params}
    return re.finish(Model(
        loglik, {"X": X, "y": y, **re.data}, params, simulate=simulate, name=name,
        names=_names(X_in, re.names), random=re.random,
    ))


# -- binomial ----------------------------------------------------------------------------------
# The support hooks are given as Model(support=), not attached afterwards with
# _checks.with_support as the GLMs do: with random effects the core wraps the hook with the
# check that group codes lie in 0..G-1, and attaching ours afterwards would drop that check.
def _binomial_support(data):
    y, n, lb = data["y"], data["trials"], data["log_binom"]
    counts = _is_count(y) & _is_count(n) & (n >= 1) & (y <= n)
    yc, nc = jnp.where(counts, y, 0.0), jnp.where(counts, n, 1.0)
    exact = gammaln(nc + 1.0) - gammaln(yc + 1.0) - gammaln(nc - yc + 1.0)
    tol = LOG_Y_FACTORIAL_ULPS * jnp.finfo(lb.dtype).eps * (1.0 + gammaln(nc + 1.0))
    return {
        "y must be integer successes 0..trials out of integer trials >= 1": counts,
        "log_binom must equal log C(trials, y)": ~counts | (jnp.abs(lb - exact) <= tol),
    }


def mixed_logistic(
    X: Any, y: Any, groups: Any, *, Z: Optional[Any] = None, trials: Optional[Any] = None,
    offset: Optional[Any] = None,
) -> Model:
    """Binomial GLMM with logit link: ``y ~ Binomial(trials, sigmoid(eta))``.

    ``trials=None``: Bernoulli (``y`` in {0, 1}); else ``y`` successes out of ``trials`` (both
    ``(N,)`` integers). The log-likelihood carries ``log C(trials, y)`` (data entry
    ``log_binom``), so ``res.llf`` matches lme4's ``logLik`` for ``cbind(y, trials - y)``.
    ``groups``, ``Z`` as in ``mixed_linear``; parameters ``{"beta", "sd"[, "rho"]}``.

    Example:
        >>> model = ah.models.mixed_logistic(X, incidence, herd, trials=size)
        >>> res = ah.fit(model)
    """
    name = "mixed_logistic"
    X_in = X
    X, y = design(X, y, name)
    n = len(y)
    if trials is None:
        support(y, (y == 0) | (y == 1), name, "y", "0 or 1 (or give trials= for successes out of trials)")
        trials_arr = np.ones(n)
    else:
        trials_arr = _float(host_array(trials, f"{name}: trials")[0], f"{name}: trials")
        if trials_arr.shape != (n,):
            raise ValueError(f"{name}: trials has shape {trials_arr.shape}, expected ({n},): one per observation")
        support(trials_arr, (trials_arr >= 1) & (trials_arr == np.round(trials_arr)), name, "trials",
                "positive integers")
        _check_counts(y, name)
        support(y, y <= trials_arr, name, "y", "at most trials (successes out of trials)")
    log_binom = gammaln(trials_arr + 1.0) - gammaln(y + 1.0) - gammaln(trials_arr - y + 1.0)
    re = _Random(groups, Z, n, name, 1.0)
    part = re.part

    def loglik(params, data):
        eta = data["X"] @ params["beta"] + data["offset"] + part(params, data)
        return data["log_binom"] + data["y"] * eta - data["trials"] * softplus(eta)

    def simulate(key, params, data):
        eta = data["X"] @ params["beta"] + data["offset"] + part(params, data)
        y = jax.random.binomial(key, data["trials"], jax.nn.sigmoid(eta)).astype(eta.dtype)
        n = data["trials"]
        return {**data, "y": y, "log_binom": gammaln(n + 1.0) - gammaln(y + 1.0) - gammaln(n - y + 1.0)}

    data = {"X": X, "y": y, "trials": trials_arr, "offset": _offset(offset, n, name),
            "log_binom": np.asarray(log_binom), **re.data}
    return re.finish(Model(
        loglik, data, {"beta": np.zeros(X.shape[1]), **re.params}, simulate=simulate, name=name,
        names=_names(X_in, re.names), random=re.random,
        support=_binomial_support,
    ))


# -- Poisson and NB2 ----------------------------------------------------------------------------
# counts and their log_y_factorial leaf: the GLMs' check (``_glm._poisson_support``)
_count_support = _poisson_support


def _count_data(X: Any, y: Any, offset: Optional[Any], name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    X, y = design(X, y, name)
    _check_counts(y, name)
    # log(y!) does not depend on the parameters: computed once here, not in every call
    data = {"X": X, "y": y, "offset": _offset(offset, len(y), name),
            "log_y_factorial": np.asarray(gammaln(y + 1.0))}
    return X, y, data


def mixed_poisson(X: Any, y: Any, groups: Any, *, Z: Optional[Any] = None, offset: Optional[Any] = None) -> Model:
    """Poisson GLMM with log link, ``offset`` = log exposure; parameters ``{"beta", "sd"[, "rho"]}``.

    ``groups``, ``Z`` as in ``mixed_linear``. The log-likelihood includes ``-log(y!)``.

    Example:
        >>> model = ah.models.mixed_poisson(X, counts, site, offset=np.log(hours))
    """
    name = "mixed_poisson"
    X_in = X
    X, y, data = _count_data(X, y, offset, name)
    re = _Random(groups, Z, len(y), name, 1.0)
    part = re.part

    def loglik(params, data):
        eta = data["X"] @ params["beta"] + data["offset"] + part(params, data)
        return data["y"] * eta - jnp.exp(eta) - data["log_y_factorial"]

    def simulate(key, params, data):
        mu = jnp.exp(data["X"] @ params["beta"] + data["offset"] + part(params, data))
        y = jax.random.poisson(key, mu).astype(mu.dtype)
        return {**data, "y": y, "log_y_factorial": gammaln(y + 1.0)}

    return re.finish(Model(
        loglik, {**data, **re.data}, {"beta": np.zeros(X.shape[1]), **re.params}, simulate=simulate,
        name=name, names=_names(X_in, re.names), random=re.random,
        support=_count_support,
    ))


def mixed_negative_binomial(
    X: Any, y: Any, groups: Any, *, Z: Optional[Any] = None, offset: Optional[Any] = None
) -> Model:
    """NB2 GLMM: ``Var(y | b) = mu + alpha mu^2``, ``mu = exp(eta)`` (``alpha`` as in the zoo's
    ``negative_binomial``; glmmTMB's ``nbinom2`` dispersion is ``1 / alpha``).

    Parameters ``{"alpha": Positive, "beta", "sd"[, "rho"]}``; ``groups``, ``Z`` as in
    ``mixed_linear``.
    """
    name = "mixed_negative_binomial"
    X_in = X
    X, y, data = _count_data(X, y, offset, name)
    re = _Random(groups, Z, len(y), name, 1.0)
    part = re.part

    def loglik(params, data):
        # the zoo's NB2 form (see negative_binomial_loglik): log(mu) and log1p, never 1 + alpha mu
        y, alpha = data["y"], params["alpha"]
        eta = data["X"] @ params["beta"] + data["offset"] + part(params, data)
        inv = 1.0 / alpha
        log_alpha_mu = jnp.log(alpha) + eta
        log1p_alpha_mu = softplus(log_alpha_mu)
        return (
            _lgamma_ratio(y, inv) - data["log_y_factorial"]
            - inv * log1p_alpha_mu + y * (log_alpha_mu - log1p_alpha_mu)
        )

    def simulate(key, params, data):
        mu = jnp.exp(data["X"] @ params["beta"] + data["offset"] + part(params, data))
        alpha = params["alpha"]
        k_gamma, k_pois = jax.random.split(key)
        # Gamma-Poisson mixture: rate ~ Gamma(shape 1/alpha, scale alpha*mu) has mean mu
        rate = jax.random.gamma(k_gamma, 1.0 / alpha, mu.shape, dtype=mu.dtype) * alpha * mu
        y = jax.random.poisson(k_pois, rate).astype(mu.dtype)
        return {**data, "y": y, "log_y_factorial": gammaln(y + 1.0)}

    params = {"beta": np.zeros(X.shape[1]), "alpha": Positive(1.0), **re.params}
    return re.finish(Model(
        loglik, {**data, **re.data}, params, simulate=simulate, name=name,
        names=_names(X_in, re.names), random=re.random,
        support=_count_support,
    ))


# -- zero-inflated Poisson -----------------------------------------------------------------------
def mixed_zip(
    X: Any, y: Any, groups: Any, *, Z: Optional[Any] = None, offset: Optional[Any] = None,
    X_zero: Optional[Any] = None,
) -> Model:
    """Zero-inflated Poisson GLMM: ``y = 0`` with probability ``pi``, else ``Poisson(mu)``;
    ``logit(pi) = X_zero @ beta_zero`` (default ``X_zero``: an intercept column, one constant
    ``pi``), ``log(mu) = X @ beta + offset + (random part)`` (the random effects act on the count
    part, as glmmTMB's ``ziformula`` without random terms).

    Parameters ``{"beta", "beta_zero", "sd"[, "rho"]}``; ``groups``, ``Z`` as in
    ``mixed_linear``.
    """
    name = "mixed_zip"
    X_in, Xz_in = X, X_zero
    X, y, data = _count_data(X, y, offset, name)
    n = len(y)
    if X_zero is None:
        Xz = np.ones((n, 1))
    else:
        Xz = _float(X_zero, f"{name}: X_zero")
        Xz = Xz[:, None] if Xz.ndim == 1 else Xz
        if Xz.ndim != 2 or Xz.shape[0] != n:
            raise ValueError(
                f"{name}: X_zero has shape {Xz.shape}, expected ({n}, k): one row per observation "
                "(the zero-inflation design)"
            )
    re = _Random(groups, Z, n, name, 1.0)
    part = re.part

    def loglik(params, data):
        eta = data["X"] @ params["beta"] + data["offset"] + part(params, data)
        eta_zero = data["X_zero"] @ params["beta_zero"]
        log_pi, log_1m_pi = -softplus(-eta_zero), -softplus(eta_zero)
        mu = jnp.exp(eta)
        positive = log_1m_pi + data["y"] * eta - mu - data["log_y_factorial"]
        zero = jnp.logaddexp(log_pi, log_1m_pi - mu)
        return jnp.where(data["y"] > 0, positive, zero)

    def simulate(key, params, data):
        mu = jnp.exp(data["X"] @ params["beta"] + data["offset"] + part(params, data))
        pi = jax.nn.sigmoid(data["X_zero"] @ params["beta_zero"])
        k_zero, k_pois = jax.random.split(key)
        counts = jax.random.poisson(k_pois, mu).astype(mu.dtype)
        y = jnp.where(jax.random.bernoulli(k_zero, pi), 0.0, counts)
        return {**data, "y": y, "log_y_factorial": gammaln(y + 1.0)}

    params = {"beta": np.zeros(X.shape[1]), "beta_zero": np.zeros(Xz.shape[1]), **re.params}
    return re.finish(Model(
        loglik, {**data, "X_zero": Xz, **re.data}, params, simulate=simulate, name=name,
        names=_names(X_in, re.names, Xz_in), random=re.random,
        support=_count_support,
    ))
