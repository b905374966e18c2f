"""Covariance matrices of the estimate: observed information, OPG, sandwich, cluster-robust.

All on the natural scale. At a stationary point the inverse natural-scale Hessian equals the
delta-method covariance ``J H_u^-1 J'`` of the unconstrained fit (``J = dx/du``), so
transformed parameters get delta-method standard errors without a second inversion.

Small-sample corrections (statsmodels-compatible):
* ``"hessian"`` and ``"opg"``: none (maximum likelihood).
* ``"robust"``: none by default (statsmodels' ``HC0`` for likelihood models); with
  ``df_correction=True`` the factor ``N / (N - p)`` (``HC1``).
* ``"cluster"``: ``G / (G - 1) * (N - 1) / (N - p)`` with ``G`` clusters (statsmodels'
  default ``use_correction=True``); ``df_correction=False`` drops it.
* ``"gauss-newton"`` (least-squares models only): ``s^2 (J'J)^-1`` with ``s^2 = RSS/(n-p)``;
  see ``_least_squares.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["COV_TYPES", "meat", "opg_null_directions", "opg_unidentified", "restricted_inverse", "scaled_eigenvectors", "face_pseudo_inverse", "covariance"]

COV_TYPES = ("hessian", "opg", "robust", "cluster", "gauss-newton")


def meat(
    scores: jax.Array,
    weights: jax.Array | None = None,
    groups: jax.Array | None = None,
    n_groups: int | None = None,
) -> jax.Array:
    """``sum_i w_i s_i s_i'`` or, with cluster ids ``0..G-1``, ``sum_g S_g S_g'`` with
    ``S_g = sum_{i in g} w_i s_i`` (frequency weights count an observation ``w_i`` times)."""
    if groups is not None:
        if weights is not None:
            scores = scores * weights[:, None]
        summed = jax.ops.segment_sum(scores, groups, num_segments=n_groups)
        return summed.T @ summed
    if weights is None:
        return scores.T @ scores
    return (scores * weights[:, None]).T @ scores


#: scaled condition of the outer product of scores beyond which its small directions are
#: rounding, not information (as ``_diagnostics.FLAT_CONDITION`` for the Hessian)
OPG_FLAT_CONDITION = 1e12

#: loading (unit-diagonal scale) above which a parameter takes part in a null direction of the
#: outer product (as ``_diagnostics.AFFECTED_LOADING``)
OPG_AFFECTED_LOADING = 1e-3


def opg_null_directions(B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(null, vectors)``: which eigenvectors of the unit-diagonal scaled outer product of
    scores ``B`` are null (eigenvalue below ``1 / OPG_FLAT_CONDITION`` of the largest, or a
    parameter whose scores are all 0), and the eigenvectors (scaled coordinates, columns).

    ``B = sum_i w_i s_i s_i'`` has rank at most the number of observations with positive
    weight, and less where the scores are confined to a subspace (a score identically 0, two
    parameters whose scores are proportional): its inverse is then rounding noise (SEs of
    1e7 and NaN measured with N < p)."""
    diag = jnp.diag(B)
    d = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    lam, V = jnp.linalg.eigh(B / jnp.outer(d, d))
    top = jnp.maximum(jnp.max(lam), jnp.finfo(B.dtype).tiny)
    null = (lam <= top / OPG_FLAT_CONDITION) | ~jnp.isfinite(lam)
    return null, V


def opg_unidentified(B: jax.Array) -> jax.Array:
    """``(p,)`` bool: parameters loading on a null direction of ``B`` (``opg_null_directions``),
    or whose own scores are all 0; their OPG variances are not defined."""
    null, V = opg_null_directions(B)
    on_null = jnp.any((jnp.abs(V) > OPG_AFFECTED_LOADING) & null[None, :], axis=1)
    return on_null | ~(jnp.diag(B) > 0)


def restricted_inverse(matrix: jax.Array, keep: jax.Array) -> jax.Array:
    """Inverse of the ``keep`` block of a symmetric matrix; NaN in removed rows and columns.

    Removed rows/columns are replaced by the identity, which leaves the kept block's inverse
    unchanged and keeps the shape static (so this works under ``vmap``). Non-positive variances
    on the diagonal of the result are never returned: those rows and columns become NaN too.
    """
    p = matrix.shape[0]
    both = keep[:, None] & keep[None, :]
    eye = jnp.eye(p, dtype=matrix.dtype)
    block = jnp.where(both, matrix, eye)
    # ``jnp.linalg.inv`` without its wrapping: it solves against the identity through
    # ``custom_linear_solve`` vmapped over the columns (for derivatives, which nothing here
    # takes), whose tracing and lowering cost ~15 ms in every fresh process's first fit. The
    # same LU factorisation and triangular solves, the same numbers to the last bit
    # (tests/test_first_call.py compares them).
    lu, _, perm = lax.linalg.lu(block)
    inv = lax.linalg.triangular_solve(lu, eye[perm], left_side=True, lower=True, unit_diagonal=True)
    inv = lax.linalg.triangular_solve(lu, inv, left_side=True, lower=False)
    inv = 0.5 * (inv + inv.T)
    good = keep & (jnp.diag(inv) > 0) & jnp.isfinite(jnp.diag(inv))
    return jnp.where(good[:, None] & good[None, :], inv, jnp.nan)


def scaled_eigenvectors(hess: jax.Array, eigenvectors: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(d, v)``: the diagonal scale ``sqrt|H_ii|`` (1 where 0) of ``_diagnostics``' unit-diagonal
    scaled Hessian, and its unit eigenvectors ``v``, recovered from the eigenvectors that
    ``compute_diagnostics`` maps back to parameter units."""
    diag = jnp.abs(jnp.diag(hess))
    d = jnp.sqrt(jnp.where(diag > 0, diag, 1.0))
    v = eigenvectors * d[:, None]
    return d, v / jnp.maximum(jnp.linalg.norm(v, axis=0, keepdims=True), jnp.finfo(hess.dtype).tiny)


def face_pseudo_inverse(
    hess: jax.Array, keep: jax.Array, eigenvalues: jax.Array, eigenvectors: jax.Array, bad: jax.Array
) -> jax.Array:
    """Pseudo-inverse of the Hessian without its flat or negative directions; NaN outside ``keep``.

    ``eigenvalues`` and ``eigenvectors`` are those of ``_diagnostics.compute_diagnostics`` (of
    the unit-diagonal scaled Hessian on the face, eigenvectors mapped back to parameter units)
    and ``bad`` its flat or negative directions. Parameters off those directions are estimable,
    and this gives their unconditional variance, as a model without the unidentified
    combination would (statsmodels' pinv does the same). Inverting the kept block instead
    holds the unidentified parameters fixed and gives conditional variances, too small
    wherever a kept parameter is correlated with them (6.5% measured for slopes next to an
    intercept split as ``a + b``).
    """
    d, v = scaled_eigenvectors(hess, eigenvectors)
    inv_lam = jnp.where(bad, 0.0, 1.0 / jnp.where(bad, 1.0, eigenvalues))
    pinv = (v * inv_lam[None, :]) @ v.T / jnp.outer(d, d)
    pinv = 0.5 * (pinv + pinv.T)
    good = keep & (jnp.diag(pinv) > 0) & jnp.isfinite(jnp.diag(pinv))
    return jnp.where(good[:, None] & good[None, :], pinv, jnp.nan)


def covariance(
    hess: jax.Array,
    keep: jax.Array,
    cov_type: str,
    scores: jax.Array | None = None,
    weights: jax.Array | None = None,
    groups: jax.Array | None = None,
    n_groups: int | None = None,
    df_correction: bool | None = None,
    hess_inverse: jax.Array | None = None,
) -> jax.Array:
    """Covariance of the estimate for ``cov_type`` (see the module docstring).

    ``hess_inverse``: the (masked) inverse Hessian to use instead of ``restricted_inverse(hess,
    keep)``, e.g. ``face_pseudo_inverse`` where the Hessian has flat directions.
    """
    p = hess.shape[0]
    if cov_type == "hessian":
        return restricted_inverse(hess, keep) if hess_inverse is None else hess_inverse
    if cov_type == "gauss-newton":  # computed by the least-squares model; here only masked
        gn = scores
        return jnp.where(keep[:, None] & keep[None, :], gn, jnp.nan)
    if scores is None:
        raise ValueError(f"cov_type={cov_type!r} needs per-observation scores")
    n = scores.shape[0] if weights is None else jnp.sum(weights)
    B = meat(scores, weights, groups if cov_type == "cluster" else None, n_groups)
    if cov_type == "opg":
        return restricted_inverse(B, keep & ~opg_unidentified(B))
    Hinv = restricted_inverse(hess, keep) if hess_inverse is None else hess_inverse
    Hinv0 = jnp.where(jnp.isfinite(Hinv), Hinv, 0.0)
    V = Hinv0 @ B @ Hinv0
    V = jnp.where(jnp.isfinite(Hinv), 0.5 * (V + V.T), jnp.nan)
    if cov_type == "robust":
        factor = n / (n - p) if df_correction else 1.0
    elif cov_type == "cluster":
        use = True if df_correction is None else df_correction
        G = n_groups
        if weights is not None:  # clusters whose weights are all 0 are not in the sample
            G = jnp.sum(jax.ops.segment_sum(weights, groups, num_segments=n_groups) > 0)
        factor = (G / (G - 1.0)) * ((n - 1.0) / (n - p)) if use else 1.0
    else:
        raise ValueError(f"cov_type must be one of {COV_TYPES}, got {cov_type!r}")
    return V * factor
