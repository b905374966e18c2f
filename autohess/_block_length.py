"""The circular block bootstrap's default block length, chosen from the data.

Politis and White (2004), "Automatic block-length selection for the dependent bootstrap", with
the correction of Patton, Politis and White (2009): per series, a flat-top lag window picks a
bandwidth from the autocorrelations (``pw_bandwidth``) and the circular block length follows
from the spectral density and its derivative at frequency zero (``pw_circular_block_length``).
``default_block_length`` takes the longest over a model's resampled data columns, their squares
and the score series at the estimate.
"""

from __future__ import annotations

import jax
import numpy as np

from ._model import Model
from ._validation import _display_name

__all__ = ["default_block_length", "pw_bandwidth", "pw_block_lengths", "pw_circular_block_length"]

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
